/**
 * Issue 12's benchmark: today's stack (commit 6b09007, when the issue was
 * filed) and this checkout's, each started with `nightfuse up` on the same
 * machine, measured alternately row by row with wrk (median of BENCH_REPS runs
 * each), with CPU µs per request per process from /proc/<pid>/stat before and
 * after every run, and RSS after load.
 *
 * Env: BENCH_BASELINE (a built checkout of the baseline; default: built once
 * into ~/.cache/nightfuse-bench/), BENCH_SECONDS (5), BENCH_REPS (3).
 */
import { execSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, hostname } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.js';
import { freePort, median, started, table } from './bench-lib.js';
import { rssMiB, sampleCpu, stackPids, type CpuSample } from './bench-proc.js';
import { runWrk, type WrkResult } from './wrk.js';

export const BASELINE_COMMIT = '6b09007';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const REPS = Math.max(1, Number(process.env.BENCH_REPS ?? 3));
const TOKEN = 'bench';

/** A built checkout of the baseline commit: BENCH_BASELINE, or one built once into a cache folder. */
export function prepareBaseline(): string {
  if (process.env.BENCH_BASELINE) return process.env.BENCH_BASELINE;
  const dir = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'nightfuse-bench', `baseline-${BASELINE_COMMIT}`);
  const ready = join(dir, '.bench-ready');
  if (existsSync(ready)) return dir;
  process.stderr.write(`bench: building the baseline ${BASELINE_COMMIT} into ${dir} (once; npm ci)\n`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    execSync(`git -C ${JSON.stringify(PACKAGE_ROOT)} archive ${BASELINE_COMMIT} | tar -x -C ${JSON.stringify(dir)}`, { stdio: ['ignore', 'ignore', 'inherit'] });
  } catch (err) {
    throw new Error(`cannot extract ${BASELINE_COMMIT} from ${PACKAGE_ROOT} (not a git clone with that commit?); build it yourself and give BENCH_BASELINE: ${(err as Error).message}`);
  }
  execSync('npm ci --no-audit --no-fund', { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
  writeFileSync(ready, `${new Date().toISOString()}\n`);
  return dir;
}

interface Stack {
  label: string;
  child: ChildProcess;
  http: number;
  admin(method: string, path: string, body?: string): Promise<any>;
}

async function startUp(label: string, root: string, config: string, policy: string): Promise<Stack> {
  const [http, engine, control] = await Promise.all([freePort(), freePort(), freePort()]);
  // run as a user runs it: the bin script, with whatever node flags its #! line gives
  const args = ['up', '--quiet', `--http_port=${http}`, '--grpc_port=0', `--engine_conn_port=${engine}`,
    `--control_port=${control}`, `--root_path_for_ipc=/dev/shm/nightfuse-bench-cmp-${process.pid}-${http}`,
    `--func_config_file=${config}`, `--merge_policy_file=${policy}`, `--admin_token=${TOKEN}`, '--merge_tick_ms=250'];
  const child = spawn(join(root, 'bin', 'nightfuse.js'), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NIGHTFUSE_LOG_LEVEL: 'warn' } });
  started.push(child);
  let err = '';
  child.stderr!.on('data', (d) => (err = (err + d).slice(-4000)));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`${label}: nightfuse up not ready; stderr: ${err}`)), 60000);
    child.stdout!.on('data', (d) => {
      out += d;
      if (/nightfuse up: http=/.test(out)) {
        clearTimeout(t);
        resolve();
      }
    });
    child.once('exit', (c) => reject(new Error(`${label}: nightfuse up exited ${c}; stderr: ${err}`)));
  });
  const admin = async (method: string, path: string, body?: string) => {
    const r = await fetch(`http://127.0.0.1:${http}/admin/v1${path}`, { method, body, headers: { Authorization: `Bearer ${TOKEN}` } });
    const data = await r.json();
    if (r.status !== 200) throw new Error(`${label}: ${method} ${path}: ${JSON.stringify(data)}`);
    return data;
  };
  return { label, child, http, admin };
}

async function stopStack(s: Stack): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  await new Promise<void>((r) => {
    s.child.once('exit', () => r());
    s.child.kill('SIGTERM');
    setTimeout(() => s.child.kill('SIGKILL'), 5000).unref();
  });
}

interface Body {
  text?: string;
  repeat?: [string, number];
}

interface Run extends WrkResult {
  /** CPU µs per request: gateway, node agent (0 when it is the gateway's process), workers, up's supervisor */
  cpu: CpuSample;
}

async function measure(s: Stack, path: string, conns: number, body: Body): Promise<Run> {
  const pids = stackPids(s.child.pid!);
  const a = sampleCpu(pids);
  const r = await runWrk(`http://127.0.0.1:${s.http}${path}`, conns, SECONDS, body);
  const b = sampleCpu(pids);
  const per = (x: number, y: number) => ((y - x) / Math.max(1, r.requests)) * 1e6;
  return { ...r, cpu: { gateway: per(a.gateway, b.gateway), agent: per(a.agent, b.agent), workers: per(a.workers, b.workers), up: per(a.up, b.up) } };
}

/** The full answer (status, Nightcore's header block without the date, body) must be the same on both stacks. */
async function answer(s: Stack, path: string, body: Body): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${s.http}${path}`, { method: 'POST', body: body.repeat ? body.repeat[0].repeat(body.repeat[1]) : body.text });
  const headers = [...r.headers.entries()].filter(([k]) => k !== 'date').map(([k, v]) => `${k}: ${v}`).join('\n');
  const buf = Buffer.from(await r.arrayBuffer());
  return `${r.status}\n${headers}\n${buf.length}:${buf.subarray(0, 64).toString('hex')}:${buf.subarray(-64).toString('hex')}`;
}

function medianRun(runs: Run[]): Run {
  const m = (f: (r: Run) => number) => median(runs.map(f));
  return {
    requests: m((r) => r.requests), rps: m((r) => r.rps), p50_us: m((r) => r.p50_us), p99_us: m((r) => r.p99_us),
    errors: runs.reduce((a, r) => a + r.errors, 0), wrkCpuUs: m((r) => r.wrkCpuUs),
    cpu: { gateway: m((r) => r.cpu.gateway), agent: m((r) => r.cpu.agent), workers: m((r) => r.cpu.workers), up: m((r) => r.cpu.up) },
  };
}

interface RowSpec {
  name: string;
  path: string;
  conns: number;
  body: Body;
  /** what done means for this row, checked on the medians */
  aim?: { text: string; met: (today: Run, now: Run) => boolean };
}

interface RowResult {
  spec: RowSpec;
  today: Run;
  now: Run;
}

async function rowsOn(pair: [Stack, Stack], specs: RowSpec[]): Promise<RowResult[]> {
  const out: RowResult[] = [];
  for (const spec of specs) {
    const [a, b] = await Promise.all(pair.map((s) => answer(s, spec.path, spec.body)));
    if (a !== b) throw new Error(`${spec.name}: the answers differ between the stacks:\n--- ${pair[0].label}\n${a}\n--- ${pair[1].label}\n${b}`);
    const runs: [Run[], Run[]] = [[], []];
    // warm-up, then alternate: today, new, today, new, …
    for (const s of pair) await runWrk(`http://127.0.0.1:${s.http}${spec.path}`, spec.conns, 1, spec.body);
    for (let i = 0; i < REPS; i++) {
      for (let k = 0; k < 2; k++) runs[k].push(await measure(pair[k], spec.path, spec.conns, spec.body));
    }
    out.push({ spec, today: medianRun(runs[0]), now: medianRun(runs[1]) });
  }
  return out;
}

function rss(s: Stack): { gateway: number; agent: number; up: number; oneProcess: boolean } {
  const p = stackPids(s.child.pid!);
  const one = p.gateway === p.up;
  return { gateway: rssMiB(p.gateway), agent: one ? NaN : rssMiB(p.agent), up: one ? NaN : rssMiB(p.up), oneProcess: one };
}

async function settleSocialnet(s: Stack, body: Body): Promise<number> {
  const t0 = Date.now();
  await s.admin('PUT', '/policy', readFileSync(join(PACKAGE_ROOT, 'examples', 'socialnet', 'merge-policy.yaml'), 'utf8'));
  const warm = runWrk(`http://127.0.0.1:${s.http}/function/ComposePost`, 2, 12, body);
  let settled = NaN;
  for (let i = 0; i < 200 && Number.isNaN(settled); i++) {
    const m = (await s.admin('GET', '/merges')) as { state: string; workersMerged: number; workersTotal: number }[];
    if (m.filter((x) => x.state === 'merged' && x.workersMerged === x.workersTotal).length >= 4) settled = Date.now() - t0;
    else await new Promise((r) => setTimeout(r, 100));
  }
  await warm;
  if (Number.isNaN(settled)) throw new Error(`${s.label}: socialnet's policy did not settle (4 pairs merged) within 20 s`);
  return settled;
}

const us = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
const cpuText = (c: CpuSample, one: boolean) => one
  ? `${us(c.gateway)} (gw+agent) / ${us(c.workers)} / –`
  : `${us(c.gateway)} / ${us(c.agent)} / ${us(c.workers)} / ${us(c.up)}`;

export async function benchCompare(): Promise<string> {
  const baseline = prepareBaseline();
  const manual = (root: string) => join(root, 'scripts', 'bench_policy_manual.yaml');
  const lines: string[] = [];
  const results: RowResult[] = [];
  let rssRows: (string | number)[][] = [];
  let oneProcessNow = false;

  const ex = (root: string) => join(root, 'examples', 'func_config.json');
  const pair: [Stack, Stack] = [
    await startUp(`today (${BASELINE_COMMIT})`, baseline, ex(baseline), manual(baseline)),
    await startUp('new', PACKAGE_ROOT, ex(PACKAGE_ROOT), manual(PACKAGE_ROOT)),
  ];
  try {
    const hello = { text: 'Hello' };
    const big = { repeat: ['x', 64 * 1024] as [string, number] };
    results.push(...await rowsOn(pair, [
      { name: 'Bar (one hop)', path: '/function/Bar', conns: 1, body: hello, aim: { text: 'p50 ≥ 30 µs lower', met: (t, n) => t.p50_us - n.p50_us >= 30 } },
      { name: 'Bar (one hop)', path: '/function/Bar', conns: 16, body: hello, aim: { text: '≥ 1.8× req/s', met: (t, n) => n.rps >= 1.8 * t.rps } },
      { name: 'Foo→Bar not merged', path: '/function/Foo', conns: 1, body: hello },
      { name: 'Foo→Bar not merged', path: '/function/Foo', conns: 16, body: hello, aim: { text: '≥ 2× req/s', met: (t, n) => n.rps >= 2 * t.rps } },
      { name: 'Bar, 64 KiB body', path: '/function/Bar', conns: 16, body: big, aim: { text: '≥ 2× req/s', met: (t, n) => n.rps >= 2 * t.rps } },
    ]));
    const r = pair.map(rss);
    oneProcessNow = r[1].oneProcess;
    rssRows = pair.map((s, i) => [s.label, r[i].oneProcess ? `${us(r[i].gateway)} (gateway + node agent)` : us(r[i].gateway),
      r[i].oneProcess ? '(same process)' : us(r[i].agent), r[i].oneProcess ? 'none (up is that process)' : us(r[i].up)]);
  } finally {
    await Promise.all(pair.map(stopStack));
  }

  const sn = (root: string) => join(root, 'examples', 'socialnet', 'func_config.json');
  const snPair: [Stack, Stack] = [
    await startUp(`today (${BASELINE_COMMIT})`, baseline, sn(baseline), manual(baseline)),
    await startUp('new', PACKAGE_ROOT, sn(PACKAGE_ROOT), manual(PACKAGE_ROOT)),
  ];
  const settled: number[] = [];
  try {
    const body = { text: 'hello @alice see https://example.com/x and @bob' };
    for (const s of snPair) settled.push(await settleSocialnet(s, body));
    results.push(...await rowsOn(snPair, [
      { name: 'socialnet ComposePost, settled', path: '/function/ComposePost', conns: 1, body, aim: { text: 'p50 ≥ 1.3× lower', met: (t, n) => t.p50_us >= 1.3 * n.p50_us } },
      { name: 'socialnet ComposePost, settled', path: '/function/ComposePost', conns: 16, body },
    ]));
  } finally {
    await Promise.all(snPair.map(stopStack));
  }

  const cpuHead = oneProcessNow ? 'new CPU µs/req: gw+agent / workers / up' : 'new CPU µs/req: gw / agent / workers / up';
  lines.push(
    `### Today (${BASELINE_COMMIT}) vs now, \`nightfuse up\` on one machine (wrk 1 thread, keep-alive POST; ${SECONDS} s per run, median of ${REPS} runs each, alternated; host ${hostname()}, ${new Date().toISOString()})`,
    '',
    table(['workload', 'conns', 'today req/s', 'new req/s', 'req/s ×', 'today p50 µs', 'new p50 µs', 'p50 Δ µs', 'today p99', 'new p99', 'errors',
      'today CPU µs/req: gw / agent / workers / up', cpuHead, 'wrk µs/req', 'aim', 'met'],
    results.map(({ spec, today: t, now: n }) => [spec.name, String(spec.conns), t.rps, n.rps, `${(n.rps / t.rps).toFixed(2)}×`, t.p50_us, n.p50_us,
      (n.p50_us - t.p50_us).toFixed(0), t.p99_us, n.p99_us, `${t.errors}/${n.errors}`, cpuText(t.cpu, false), cpuText(n.cpu, oneProcessNow),
      `${us(t.wrkCpuUs)}/${us(n.wrkCpuUs)}`, spec.aim?.text ?? '', spec.aim ? (spec.aim.met(t, n) ? 'yes' : 'NO') : ''])),
    '',
    `socialnet's policy settled (4 pairs merged) ${settled.map((x) => `${(x / 1000).toFixed(1)} s`).join(' / ')} after it was applied under load (today / new).`,
    '',
    '#### RSS after load (MiB; Foo→Bar, Bar and 64 KiB rows above; aim: gateway and node agent each < 60, up < 40 or gone)',
    '',
    table(['stack', 'gateway', 'node agent', 'up supervisor'], rssRows),
  );
  return lines.join('\n');
}
