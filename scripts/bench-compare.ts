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
import { rssParts, sampleCpu, stackPids, type CpuSample, type StackPids } from './bench-proc.js';
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
  /** gateway and node agent in one process */
  oneProcess: boolean;
  child: ChildProcess;
  http: number;
  admin(method: string, path: string, body?: string): Promise<any>;
}

async function startUp(label: string, root: string, config: string, policy: string, flags: string[]): Promise<Stack> {
  const [http, engine, control] = await Promise.all([freePort(), freePort(), freePort()]);
  // run as a user runs it: the bin script, with whatever node flags its #! line gives
  const args = ['up', '--quiet', `--http_port=${http}`, '--grpc_port=0', `--engine_conn_port=${engine}`,
    `--control_port=${control}`, `--root_path_for_ipc=/dev/shm/nightfuse-bench-cmp-${process.pid}-${http}`,
    `--func_config_file=${config}`, `--merge_policy_file=${policy}`, `--admin_token=${TOKEN}`, '--merge_tick_ms=250', ...flags];
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
  const p = stackPids(child.pid!);
  return { label, oneProcess: p.gateway === p.up, child, http, admin };
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
  /** one median run per stack, in the stacks' order (today first) */
  runs: Run[];
}

async function rowsOn(stacks: Stack[], specs: RowSpec[]): Promise<RowResult[]> {
  const out: RowResult[] = [];
  for (const spec of specs) {
    const answers = await Promise.all(stacks.map((s) => answer(s, spec.path, spec.body)));
    for (let k = 1; k < stacks.length; k++) {
      if (answers[k] !== answers[0]) throw new Error(`${spec.name}: the answers differ:\n--- ${stacks[0].label}\n${answers[0]}\n--- ${stacks[k].label}\n${answers[k]}`);
    }
    const runs: Run[][] = stacks.map(() => []);
    // warm-up, then alternate: today, new, …, today, new, …
    for (const s of stacks) await runWrk(`http://127.0.0.1:${s.http}${spec.path}`, spec.conns, 1, spec.body);
    for (let i = 0; i < REPS; i++) {
      for (let k = 0; k < stacks.length; k++) runs[k].push(await measure(stacks[k], spec.path, spec.conns, spec.body));
    }
    out.push({ spec, runs: runs.map(medianRun) });
  }
  return out;
}

type RssSnap = Map<number, { rss: number; anon: number; file: number }>;

/** RSS of each process of each stack (right after the load, and again after RSS_SETTLE_MS idle). */
function rssSnap(pids: StackPids[]): RssSnap {
  const m: RssSnap = new Map();
  for (const p of pids) for (const pid of [p.up, p.gateway, p.agent]) m.set(pid, rssParts(pid));
  return m;
}

const RSS_SETTLE_MS = 3000;

function rss(label: string, p: StackPids, after: RssSnap, settled: RssSnap): (string | number)[] {
  const cell = (pid: number) => {
    const a = after.get(pid), b = settled.get(pid);
    return a && b ? `${us(a.rss)} → ${us(b.rss)} (anon ${us(b.anon)}, file ${us(b.file)})` : '?';
  };
  if (p.gateway === p.up) return [label, `${cell(p.gateway)}: gateway + node agent`, '(same process)', 'none (up is that process)'];
  return [label, cell(p.gateway), cell(p.agent), cell(p.up)];
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
function cpuText(s: Stack, c: CpuSample): string {
  return s.oneProcess ? `${us(c.gateway)} (gw+agent) / ${us(c.workers)} / –` : `${us(c.gateway)} / ${us(c.agent)} / ${us(c.workers)} / ${us(c.up)}`;
}

/** The stacks compared: today's, and this checkout's in both shapes of `nightfuse up`. */
function stackSpecs(baseline: string): { label: string; root: string; flags: string[] }[] {
  return [
    { label: `today (${BASELINE_COMMIT})`, root: baseline, flags: [] },
    { label: 'new, one process', root: PACKAGE_ROOT, flags: [] },
    { label: 'new, --one_process=false', root: PACKAGE_ROOT, flags: ['--one_process=false'] },
  ];
}

async function startAll(baseline: string, config: (root: string) => string): Promise<Stack[]> {
  const out: Stack[] = [];
  for (const x of stackSpecs(baseline)) out.push(await startUp(x.label, x.root, config(x.root), join(x.root, 'scripts', 'bench_policy_manual.yaml'), x.flags));
  return out;
}

export async function benchCompare(): Promise<string> {
  const baseline = prepareBaseline();
  const results: RowResult[] = [];
  let rssRows: (string | number)[][] = [];
  let labels: Stack[] = [];

  const stacks = await startAll(baseline, (root) => join(root, 'examples', 'func_config.json'));
  labels = stacks;
  try {
    const hello = { text: 'Hello' };
    const big = { repeat: ['x', 64 * 1024] as [string, number] };
    results.push(...await rowsOn(stacks, [
      { name: 'Bar (one hop)', path: '/function/Bar', conns: 1, body: hello, aim: { text: 'p50 ≥ 30 µs lower', met: (t, n) => t.p50_us - n.p50_us >= 30 } },
      { name: 'Bar (one hop)', path: '/function/Bar', conns: 16, body: hello, aim: { text: '≥ 1.8× req/s', met: (t, n) => n.rps >= 1.8 * t.rps } },
      { name: 'Foo→Bar not merged', path: '/function/Foo', conns: 1, body: hello },
      { name: 'Foo→Bar not merged', path: '/function/Foo', conns: 16, body: hello, aim: { text: '≥ 2× req/s', met: (t, n) => n.rps >= 2 * t.rps } },
      { name: 'Bar, 64 KiB body', path: '/function/Bar', conns: 16, body: big, aim: { text: '≥ 2× req/s', met: (t, n) => n.rps >= 2 * t.rps } },
    ]));
    const pids = stacks.map((s) => stackPids(s.child.pid!));
    const after = rssSnap(pids);
    await new Promise((r) => setTimeout(r, RSS_SETTLE_MS));
    const settledRss = rssSnap(pids);
    rssRows = stacks.map((s, i) => rss(s.label, pids[i], after, settledRss));
  } finally {
    await Promise.all(stacks.map(stopStack));
  }

  const snStacks = await startAll(baseline, (root) => join(root, 'examples', 'socialnet', 'func_config.json'));
  const settled: number[] = [];
  try {
    const body = { text: 'hello @alice see https://example.com/x and @bob' };
    for (const s of snStacks) settled.push(await settleSocialnet(s, body));
    results.push(...await rowsOn(snStacks, [
      { name: 'socialnet ComposePost, settled', path: '/function/ComposePost', conns: 1, body, aim: { text: 'p50 ≥ 1.3× lower', met: (t, n) => t.p50_us >= 1.3 * n.p50_us } },
      { name: 'socialnet ComposePost, settled', path: '/function/ComposePost', conns: 16, body },
    ]));
  } finally {
    await Promise.all(snStacks.map(stopStack));
  }

  const rows: (string | number)[][] = [];
  for (const { spec, runs } of results) {
    const t = runs[0];
    runs.forEach((r, k) => rows.push([k === 0 ? spec.name : '', k === 0 ? String(spec.conns) : '', labels[k].label, r.rps,
      k === 0 ? '' : `${(r.rps / t.rps).toFixed(2)}×`, r.p50_us, k === 0 ? '' : (r.p50_us - t.p50_us).toFixed(0), r.p99_us, r.errors,
      cpuText(labels[k], r.cpu), us(r.wrkCpuUs), k === 0 ? spec.aim?.text ?? '' : '', k === 0 || !spec.aim ? '' : spec.aim.met(t, r) ? 'yes' : 'NO']));
  }
  return [
    `### Today (${BASELINE_COMMIT}) vs now, \`nightfuse up\` on one machine (wrk, 1 thread, keep-alive POST; ${SECONDS} s per run, median of ${REPS} runs per stack, stacks alternated; host ${hostname()}, ${new Date().toISOString()})`,
    '',
    'CPU µs per request from /proc/<pid>/stat (utime + stime) before and after each run: gateway / node agent / all workers / up supervisor (one process: gateway + node agent together).',
    '',
    table(['workload', 'conns', 'stack', 'req/s', 'req/s vs today', 'p50 µs', 'p50 Δ µs', 'p99 µs', 'errors', 'CPU µs/req', 'wrk µs/req', 'aim', 'met'], rows),
    '',
    `socialnet's policy settled (4 pairs merged) ${settled.map((x) => `${(x / 1000).toFixed(1)} s`).join(' / ')} after it was applied under load (${labels.map((s) => s.label).join(' / ')}).`,
    '',
    `#### RSS after load (MiB; after the Bar, Foo→Bar and 64 KiB rows, right after → ${RSS_SETTLE_MS / 1000} s later, and that one's private (RssAnon) and file-backed (RssFile) parts; aim: gateway and node agent each < 60, up < 40 or gone)`,
    '',
    table(['stack', 'gateway', 'node agent', 'up supervisor'], rssRows),
  ].join('\n');
}
