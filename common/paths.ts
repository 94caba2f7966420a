/** Locations inside the installed package, valid from source (tests) and from dist/. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'nightfuse') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the nightfuse package root');
    dir = up;
  }
}

export const PACKAGE_ROOT = findRoot();
export const NATIVE_BUILD = join(PACKAGE_ROOT, 'native', 'build');
export const WORKER_HOST = join(NATIVE_BUILD, 'nightfuse-worker');
export const EXAMPLE_CONFIG = join(PACKAGE_ROOT, 'examples', 'func_config.json');
export const EXAMPLE_POLICY = join(PACKAGE_ROOT, 'examples', 'merge-policy.yaml');
