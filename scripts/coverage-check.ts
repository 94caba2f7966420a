/**
 * Coverage figures and their floors (run by .ci/run after `npm test`):
 *
 * - TypeScript lines and branches: tap's coverage of the last `npm test`
 *   (.tap/report/coverage-summary.json; the gateway, launcher and CLI child
 *   processes the tests start count too: they inherit NODE_V8_COVERAGE).
 * - C lines (gcov) of native/: `make -C native coverage` (an instrumented
 *   build in native/build-cov and the C test programs), then the whole-stack
 *   test against that build's worker host, so worker_host.c counts too.
 *
 * Prints both and exits 1 when one is below its floor. `--no-c` skips the C part.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.js';

/** What this suite reached (issue 10), rounded down; raise them when coverage grows. */
export const FLOORS = { tsLines: 96, tsBranches: 88.5, cLines: 85.5 };

const NATIVE = join(PACKAGE_ROOT, 'native');
const COV_BUILD = join(NATIVE, 'build-cov');

/** The TypeScript the suite must cover: every module but the benchmarks. */
const TS_DIRS = ['cli', 'common', 'gateway', 'launcher', 'proto'];

function tsCoverage(): { lines: number; branches: number; files: number; unloaded: string[] } {
  const path = join(PACKAGE_ROOT, '.tap', 'report', 'coverage-summary.json');
  if (!existsSync(path)) throw new Error(`${path} is missing: run npm test first (its coverage report writes it)`);
  const s = JSON.parse(readFileSync(path, 'utf8'));
  // tap reports only files some process loaded: a module no test loads would not lower the figure, so name it.
  const seen = new Set(Object.keys(s).map((f) => relative(PACKAGE_ROOT, f)));
  const unloaded = TS_DIRS.flatMap((d) => readdirSync(join(PACKAGE_ROOT, d)).filter((f) => f.endsWith('.ts')).map((f) => `${d}/${f}`)).filter((f) => !seen.has(f));
  return { lines: s.total.lines.pct, branches: s.total.branches.pct, files: seen.size - 1, unloaded };
}

/** Line coverage of native/'s own sources (not the tests, targets or system headers), united over every binary built from them. */
function gcovSummary(): { lines: number; total: number; files: { file: string; pct: number; lines: number }[] } {
  const gcda: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith('.gcda')) gcda.push(join(d, e.name));
    }
  };
  walk(COV_BUILD);
  if (gcda.length === 0) throw new Error(`no .gcda files under ${COV_BUILD}`);
  // One JSON document per object file; a source built into several binaries is counted once, line by line.
  const out = execFileSync('gcov', ['--json-format', '--stdout', ...gcda], { cwd: NATIVE, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
  const perFile = new Map<string, { all: Set<number>; hit: Set<number> }>();
  for (const doc of out.split('\n').filter(Boolean)) {
    for (const f of (JSON.parse(doc) as { files: { file: string; lines: { line_number: number; count: number }[] }[] }).files) {
      const file = f.file.startsWith('/') ? relative(NATIVE, f.file) : f.file;
      if (file.startsWith('..') || file.startsWith('test/') || file.startsWith('cov/')) continue;
      const e = perFile.get(file) ?? { all: new Set<number>(), hit: new Set<number>() };
      perFile.set(file, e);
      for (const l of f.lines) {
        e.all.add(l.line_number);
        if (l.count > 0) e.hit.add(l.line_number);
      }
    }
  }
  let hit = 0;
  let total = 0;
  const files = [...perFile.entries()].map(([file, e]) => {
    hit += e.hit.size;
    total += e.all.size;
    return { file, pct: (100 * e.hit.size) / e.all.size, lines: e.all.size };
  }).sort((a, b) => a.file.localeCompare(b.file));
  return { lines: total ? (100 * hit) / total : 0, total, files };
}

function cCoverage() {
  const make = spawnSync('make', ['-s', '-C', NATIVE, 'coverage'], { stdio: 'inherit' });
  if (make.status !== 0) throw new Error('make -C native coverage failed');
  // The whole stack once more, its workers run by the instrumented worker host.
  const e2e = spawnSync('npx', ['tap', '--disable-coverage', '--allow-empty-coverage', '--reporter=tap', 'test/stack.test.ts'], {
    cwd: PACKAGE_ROOT, encoding: 'utf8', env: { ...process.env, NIGHTFUSE_TEST_WORKER_HOST: join(COV_BUILD, 'nightfuse-worker') },
  });
  if (e2e.status !== 0) throw new Error(`test/stack.test.ts failed against the coverage build:\n${(e2e.stdout + e2e.stderr).slice(-4000)}`);
  return gcovSummary();
}

function main(): number {
  const ts = tsCoverage();
  const checks: [string, number, number][] = [
    ['TypeScript lines', ts.lines, FLOORS.tsLines],
    ['TypeScript branches', ts.branches, FLOORS.tsBranches],
  ];
  if (!process.argv.includes('--no-c')) {
    const c = cCoverage();
    for (const f of c.files) process.stdout.write(`  ${f.file.padEnd(32)} ${f.pct.toFixed(1).padStart(5)}% of ${f.lines} lines\n`);
    checks.push(['C lines (gcov)', c.lines, FLOORS.cLines]);
  }
  let ok = ts.unloaded.length === 0;
  if (!ok) process.stdout.write(`no test loads ${ts.unloaded.join(', ')}: its coverage is not measured\n`);
  process.stdout.write(`coverage (TypeScript: ${ts.files} files):\n`);
  for (const [what, got, floor] of checks) {
    const pass = got >= floor;
    ok &&= pass;
    process.stdout.write(`  ${what.padEnd(20)} ${got.toFixed(2).padStart(6)}%  (floor ${floor}%)${pass ? '' : '  BELOW THE FLOOR'}\n`);
  }
  return ok ? 0 : 1;
}

try {
  process.exitCode = main();
} catch (err) {
  process.stderr.write(`coverage check: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
