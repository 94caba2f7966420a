// Runs the native C test programs: as built, under AddressSanitizer + UndefinedBehaviorSanitizer
// (every report fatal), and the merge runtime's under ThreadSanitizer.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './helpers.js';

// Two sanitizer builds of everything native, then every program three ways: more than tap's default per file.
t.setTimeout(300_000);

const native = join(ROOT, 'native');
const GOLDEN = join(ROOT, 'proto', 'golden.txt');

/** Every C test program, by name: one missing from a build, or one not listed here, fails. */
const PROGRAMS: Record<string, string[]> = {
  test_inject: [],
  test_inject_safety: [],
  test_merge: [],
  test_merge_safety: [],
  test_ipc: [GOLDEN],
  test_func_config: [],
};

const SANITIZER_ENV = {
  ASAN_OPTIONS: 'halt_on_error=1:abort_on_error=0:detect_leaks=1:allocator_may_return_null=1',
  UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
  TSAN_OPTIONS: 'halt_on_error=1:allocator_may_return_null=1',
};

function run(t: Test, dir: string, label: string, name: string, args: string[], env: Record<string, string> = {}): void {
  const r = spawnSync(join(dir, name), args, { cwd: ROOT, encoding: 'utf8', timeout: 120000, env: { ...process.env, ...SANITIZER_ENV, ...env } });
  const summary = /(\d+) passed, (\d+) failed/.exec(r.stdout ?? '');
  const failed = (r.stdout ?? '').split('\n').filter((l) => l.startsWith('not ok') || l.startsWith('#'));
  t.equal(r.status, 0, `${label} ${name} ${args.filter((a) => a !== GOLDEN).join(' ')} exits 0`, { failed, signal: r.signal, stderr: (r.stderr ?? '').slice(-3000) });
  t.ok(summary && Number(summary[1]) > 0 && summary[2] === '0', `${label} ${name}: ${summary?.[0] ?? 'no summary'}`);
  // each failed C check by its own text, so a CI log names it, not only the count
  for (const line of failed.filter((l) => l.startsWith('not ok'))) t.fail(`${label} ${name}: ${line.slice(0, 300)}`);
}

function programsPresent(t: Test, dir: string, label: string, want: string[]): void {
  const have = readdirSync(dir).filter((f) => f.startsWith('test_'));
  t.same(have.filter((f) => !(f in PROGRAMS)), [], `${label}: no test program that this file does not run`);
  for (const name of want) t.ok(have.includes(name), `${label}: ${name} built`);
}

t.test('C tests', async (t) => {
  execFileSync('make', ['-s', '-C', native], { stdio: 'inherit' });
  const dir = join(native, 'build', 'test');
  programsPresent(t, dir, 'native', Object.keys(PROGRAMS));
  for (const [name, args] of Object.entries(PROGRAMS)) run(t, dir, 'native', name, args);
  const canary = spawnSync(join(dir, 'canary_ubsan'), { encoding: 'utf8' });
  t.equal(canary.status, 0, 'the UBSan canary itself runs when not sanitized');
});

t.test('C tests under AddressSanitizer + UndefinedBehaviorSanitizer', async (t) => {
  const r = spawnSync('make', ['-s', '-j2', '-C', native, 'asan'], { encoding: 'utf8' });
  t.equal(r.status, 0, 'make asan', { stderr: r.stderr.slice(-2000) });
  if (r.status !== 0) return;
  const dir = join(native, 'build-asan', 'test');
  programsPresent(t, dir, 'asan', Object.keys(PROGRAMS));
  // Reports must fail the run: a deliberate signed overflow has to kill it.
  const canary = spawnSync(join(dir, 'canary_ubsan'), { encoding: 'utf8', env: { ...process.env, ...SANITIZER_ENV } });
  t.not(canary.status, 0, 'a UBSan report is fatal (the canary dies)');
  t.match(canary.stderr, /signed integer overflow/, 'with the report');
  t.notMatch(canary.stdout, /survived/, 'and nothing after it runs');
  for (const [name, args] of Object.entries(PROGRAMS)) run(t, dir, 'asan', name, args);
});

t.test('merge runtime under ThreadSanitizer', async (t) => {
  const r = spawnSync('make', ['-s', '-j2', '-C', native, 'tsan'], { encoding: 'utf8' });
  t.equal(r.status, 0, 'make tsan', { stderr: r.stderr.slice(-2000) });
  if (r.status !== 0) return;
  const dir = join(native, 'build-tsan', 'test');
  programsPresent(t, dir, 'tsan', ['test_merge', 'test_merge_safety']);
  run(t, dir, 'tsan', 'test_merge', []);
  // Everything but the SIGURG start (TSan cannot follow a thread created in a signal handler; the plain
  // and ASan runs cover it), with fewer leak cycles (TSan is ~10x slower; leaks are counted without it).
  run(t, dir, 'tsan', 'test_merge_safety', [join(native, 'build-tsan'), 'long,bigout,faults,hostfault,lockfault,slots,handoffs,cycles'],
    { NF_START_BY_ENTRY: '1', NF_CYCLES: '100' });
});
