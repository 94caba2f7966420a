/**
 * Benchmark of run-time merging end to end (issue 4), in one run:
 *  - Foo -> Bar over HTTP, not merged vs merged with each isolation level, at
 *    1 and 16 connections: throughput, p50, p99, and the ratios to not merged;
 *  - the socialnet example's ComposePost end to end, before and after its
 *    policy settles;
 *  - decision -> merge in force (route on) per worker, from the launchers' events.
 */
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.js';
import { CLI, freePort, load, spawnReady, table } from './bench-lib.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const TOKEN = 'bench';

async function upStack(config: string, policy: string) {
  const [http, engine, control] = await Promise.all([freePort(), freePort(), freePort()]);
  await spawnReady(process.execPath, [CLI, 'up', '--quiet', `--http_port=${http}`, '--grpc_port=0', `--engine_conn_port=${engine}`,
    `--control_port=${control}`, `--root_path_for_ipc=/dev/shm/nightfuse-bench-merge-${process.pid}-${http}`,
    `--func_config_file=${config}`, `--merge_policy_file=${policy}`, `--admin_token=${TOKEN}`, '--merge_tick_ms=250'], /nightfuse up: http=/, 60000);
  const admin = async (method: string, path: string, body?: string) => {
    const r = await fetch(`http://127.0.0.1:${http}/admin/v1${path}`, { method, body, headers: { Authorization: `Bearer ${TOKEN}` } });
    const data = await r.json();
    if (r.status !== 200) throw new Error(`${method} ${path}: ${JSON.stringify(data)}`);
    return data;
  };
  return { http, admin };
}

export async function benchMerge(): Promise<string> {
  const lines: string[] = [];
  // ---- Foo -> Bar over HTTP
  const s = await upStack(join(PACKAGE_ROOT, 'examples', 'func_config.json'), join(PACKAGE_ROOT, 'scripts', 'bench_policy_manual.yaml'));
  const rows: (string | number)[][] = [];
  const base: Record<number, { rps: number; p50: number; p99: number }> = {};
  const applyMs: number[] = [];
  for (const mode of ['not merged', 'inline', 'stack', 'thread']) {
    if (mode !== 'not merged') {
      const r = await s.admin('POST', '/merges', JSON.stringify({ caller: 'Foo', callee: 'Bar', isolation: mode }));
      for (const res of r.results) for (const w of res.detail.workers) applyMs.push(w.ms);
    }
    for (const conns of [1, 16]) {
      const r = await load(s.http, '/function/Foo', 'Hello', conns, SECONDS);
      if (mode === 'not merged') base[conns] = { rps: r.rps, p50: r.p50_us, p99: r.p99_us };
      const b = base[conns];
      rows.push([mode, String(conns), r.rps, r.p50_us, r.p99_us, r.errors,
        mode === 'not merged' ? '' : `${(b.p50 / r.p50_us).toFixed(2)}× p50, ${(r.rps / b.rps).toFixed(2)}× req/s`]);
    }
    if (mode !== 'not merged') await s.admin('DELETE', '/merges/Foo/Bar');
  }
  lines.push(`### Foo -> Bar over HTTP, not merged vs merged (${SECONDS} s per run, closed loop)`, '',
    table(['Bar', 'conns', 'req/s', 'p50 µs', 'p99 µs', 'errors', 'vs not merged'], rows), '',
    `Manual merge, per Foo worker, request -> route in force (attach/inject + LOAD + ROUTE): median ${median(applyMs).toFixed(1)} ms, max ${Math.max(...applyMs).toFixed(1)} ms over ${applyMs.length} workers.`);

  // ---- socialnet before/after its policy settles
  const sn = await upStack(join(PACKAGE_ROOT, 'examples', 'socialnet', 'func_config.json'), join(PACKAGE_ROOT, 'scripts', 'bench_policy_manual.yaml'));
  const body = 'hello @alice see https://example.com/x and @bob';
  const before1 = await load(sn.http, '/function/ComposePost', body, 1, SECONDS);
  const before16 = await load(sn.http, '/function/ComposePost', body, 16, SECONDS);
  const t0 = Date.now();
  await sn.admin('PUT', '/policy', (await import('node:fs')).readFileSync(join(PACKAGE_ROOT, 'examples', 'socialnet', 'merge-policy.yaml'), 'utf8'));
  // Traffic lets the policy see hot edges; wait until the four social pairs are merged.
  const warm = load(sn.http, '/function/ComposePost', body, 2, 20, 0);
  let settledMs = NaN;
  for (let i = 0; i < 200; i++) {
    const m = (await sn.admin('GET', '/merges')) as any[];
    if (m.filter((x) => x.state === 'merged' && x.workersMerged === x.workersTotal).length >= 4) {
      settledMs = Date.now() - t0;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await warm;
  const after1 = await load(sn.http, '/function/ComposePost', body, 1, SECONDS);
  const after16 = await load(sn.http, '/function/ComposePost', body, 16, SECONDS);
  const merges = (await sn.admin('GET', '/merges')) as any[];
  const events = (await sn.admin('GET', '/events')) as any[];
  for (const e of events.filter((x) => x.kind === 'merged')) applyMs.push(...(JSON.parse(e.detail_json).applyMs ?? []));
  lines.push('', `### socialnet ComposePost end to end, before and after the policy settles (${merges.length} pairs merged: ${merges.map((m) => `${m.caller}<-${m.callee} (${m.isolation})`).join(', ')}; settled ${(settledMs / 1000).toFixed(1)} s after the policy was applied under load)`, '',
    table(['conns', 'before req/s', 'before p50 µs', 'before p99 µs', 'after req/s', 'after p50 µs', 'after p99 µs', 'p50 ratio', 'req/s ratio'], [
      ['1', before1.rps, before1.p50_us, before1.p99_us, after1.rps, after1.p50_us, after1.p99_us, `${(before1.p50_us / after1.p50_us).toFixed(2)}×`, `${(after1.rps / before1.rps).toFixed(2)}×`],
      ['16', before16.rps, before16.p50_us, before16.p99_us, after16.rps, after16.p50_us, after16.p99_us, `${(before16.p50_us / after16.p50_us).toFixed(2)}×`, `${(after16.rps / before16.rps).toFixed(2)}×`],
    ]), '',
    `Decision -> merge in force, per worker (automatic and manual merges): median ${median(applyMs).toFixed(1)} ms, p99 ${pct(applyMs, 99).toFixed(1)} ms over ${applyMs.length} worker merges (aim ≤ 20 ms).`);
  return lines.join('\n');
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] : NaN;
}
function median(xs: number[]): number {
  return pct(xs, 50);
}
