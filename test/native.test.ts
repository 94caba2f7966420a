// Runs the native C test programs (plain and AddressSanitizer builds).
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './helpers.js';

const native = join(ROOT, 'native');

function runDir(t: Test, dir: string, label: string): void {
  const tests = readdirSync(dir).filter((f) => f.startsWith('test_'));
  t.ok(tests.length >= 2, `${label}: C test programs present`);
  for (const name of tests) {
    const r = spawnSync(join(dir, name), [join(ROOT, 'proto', 'golden.txt')], { cwd: ROOT, encoding: 'utf8', timeout: 120000 });
    const summary = /(\d+) passed, (\d+) failed/.exec(r.stdout);
    const failed = r.stdout.split('\n').filter((l) => l.startsWith('not ok') || l.startsWith('#'));
    t.equal(r.status, 0, `${label} ${name} exits 0`, { failed, stderr: r.stderr.slice(-2000) });
    t.ok(summary && Number(summary[1]) > 0 && summary[2] === '0', `${label} ${name}: ${summary?.[0]}`);
  }
}

t.test('C tests', async (t) => {
  execFileSync('make', ['-s', '-C', native], { stdio: 'inherit' });
  runDir(t, join(native, 'build', 'test'), 'native');
});

t.test('C tests under AddressSanitizer', async (t) => {
  const r = spawnSync('make', ['-s', '-C', native, 'asan'], { encoding: 'utf8' });
  if (r.status !== 0 && /sanitizer|asan/i.test(r.stderr) && !existsSync(join(native, 'build-asan'))) {
    t.fail(`cannot build with -fsanitize=address: ${r.stderr.slice(-1000)}`);
    return;
  }
  t.equal(r.status, 0, 'make asan', { stderr: r.stderr.slice(-2000) });
  runDir(t, join(native, 'build-asan', 'test'), 'asan');
});

