/**
 * Builds the console (console/ -> dist/console) with esbuild: one minified
 * bundle of the page's TypeScript with cytoscape and the ELK layout, one
 * stylesheet, and index.html pointing at them by content-hashed names (so the
 * gateway can serve them as immutable; see gateway/console-server.ts).
 * Everything the page needs is in dist/console: no CDN, works offline.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { build } from 'esbuild';
import { PACKAGE_ROOT } from '../common/paths.js';

const SRC = join(PACKAGE_ROOT, 'console');
const OUT = join(PACKAGE_ROOT, 'dist', 'console');
const ASSETS = join(OUT, 'assets');

export async function buildConsole(): Promise<string[]> {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(ASSETS, { recursive: true });
  const r = await build({
    entryPoints: { app: join(SRC, 'main.ts') },
    bundle: true,
    minify: true,
    sourcemap: 'linked',
    format: 'iife',
    target: ['chrome109', 'firefox115', 'safari16'],
    outdir: ASSETS,
    entryNames: '[name]-[hash]',
    legalComments: 'linked',
    metafile: true,
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  const outputs = Object.keys(r.metafile.outputs).map((p) => join(PACKAGE_ROOT, p));
  const find = (ext: string) => {
    const f = outputs.find((p) => p.endsWith(ext));
    if (!f) throw new Error(`esbuild produced no ${ext} file for the console`);
    return `assets/${basename(f)}`;
  };
  const icon = readFileSync(join(SRC, 'favicon.svg'));
  const iconName = `favicon-${createHash('sha256').update(icon).digest('hex').slice(0, 8).toUpperCase()}.svg`;
  copyFileSync(join(SRC, 'favicon.svg'), join(ASSETS, iconName));
  const html = readFileSync(join(SRC, 'index.html'), 'utf8')
    .replace('%APP_JS%', find('.js'))
    .replace('%APP_CSS%', find('.css'))
    .replace('%FAVICON%', `assets/${iconName}`);
  if (html.includes('%')) throw new Error('console/index.html has a placeholder the build does not fill');
  writeFileSync(join(OUT, 'index.html'), html);
  return [...outputs, join(ASSETS, iconName), join(OUT, 'index.html')].map((p) => relative(PACKAGE_ROOT, p));
}

const files = await buildConsole();
process.stdout.write(`console built: ${files.filter((f) => !f.endsWith('.map')).join(', ')}\n`);
