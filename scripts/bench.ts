/**
 * `npm run bench`: everything measured side by side in one run on this machine.
 *
 * Part 1 (runtime): HTTP throughput and p50/p99 at 1 and 16 connections for
 *   - a plain node:http echo server (baseline),
 *   - /function/Bar (gateway -> launcher -> worker, one hop),
 *   - /function/Foo (Foo -> Bar nested call through the launcher),
 * and the nested-call overhead the launcher adds, from its edge statistics.
 *
 * Part 2 (native): nested call over IPC vs merged (inline/stack/thread), the
 * merge runtime's per-call cost, and injection times (bench-native.ts).
 *
 * Part 3 (merge): Foo->Bar over HTTP not merged vs merged per isolation, the
 * socialnet example before/after its policy settles (bench-merge.ts).
 *
 * Part 0 (compare, issue 12): today's stack (the baseline commit, built once into a
 *   cache folder) beside this checkout's, row by row with wrk, CPU µs per
 *   request per process and RSS (bench-compare.ts).
 *
 * Env: BENCH_SECONDS (default 5 per run), BENCH_REPS (3), BENCH_BASELINE, BENCH_INJECTIONS (60),
 * BENCH_ONLY=compare|runtime|native|merge.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { CLI, DIST_SCRIPTS, freePort, load, spawnReady, stopAll, table } from './bench-lib.js';
import { benchNative } from './bench-native.js';
import { benchMerge } from './bench-merge.js';
import { benchCompare } from './bench-compare.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);

async function scrapeEdge(httpPort: number): Promise<{ calls: number; rpc: number; proc: number; delay: number }> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const get = (name: string) => Number(new RegExp(`^${name}\\{[^}]*caller="Foo",callee="Bar"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return {
    calls: get('nightfuse_edge_ipc_calls_total'), rpc: get('nightfuse_edge_rpc_duration_seconds_sum'),
    proc: get('nightfuse_edge_callee_duration_seconds_sum'), delay: get('nightfuse_edge_dispatch_delay_seconds_total'),
  };
}

export async function benchRuntime(): Promise<string> {
  const echo = await spawnReady(process.execPath, [join(DIST_SCRIPTS, 'echo-server.js')], /echo ready port=(\d+)/);
  const echoPort = Number(echo.m[1]);
  const [http, grpc, engine, control] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const up = await spawnReady(process.execPath, [CLI, 'up', '--quiet', `--http_port=${http}`, `--grpc_port=${grpc}`,
    `--engine_conn_port=${engine}`, `--control_port=${control}`, `--root_path_for_ipc=/dev/shm/nightfuse-bench-${process.pid}`], /nightfuse up: http=/, 60000);
  void up;
  const rows: (string | number)[][] = [];
  const results: Record<string, { rps: number; p50: number; p99: number }> = {};
  for (const conns of [1, 16]) {
    for (const [name, port, path] of [['node:http echo (baseline)', echoPort, '/'], ['/function/Bar (1 hop)', http, '/function/Bar'], ['/function/Foo (Foo->Bar nested)', http, '/function/Foo']] as const) {
      const before = name.includes('Foo') ? await scrapeEdge(http) : undefined;
      const r = await load(port, path, 'Hello', conns, SECONDS);
      let extra = '';
      if (before) {
        await new Promise((res) => setTimeout(res, 1200));
        const after = await scrapeEdge(http);
        const n = after.calls - before.calls;
        const launcherUs = ((after.rpc - before.rpc) - (after.proc - before.proc)) / n * 1e6;
        extra = `${launcherUs.toFixed(1)} µs/call (mean RPC through launcher minus Bar's processing, ${n} calls)`;
      }
      results[`${name}@${conns}`] = { rps: r.rps, p50: r.p50_us, p99: r.p99_us };
      rows.push([name, String(conns), r.rps, r.p50_us, r.p99_us, r.errors, extra]);
    }
  }
  const over1 = results['/function/Foo (Foo->Bar nested)@1'].p50 - results['/function/Bar (1 hop)@1'].p50;
  return [
    `### Runtime (HTTP, ${SECONDS} s per run, closed loop, host ${hostname()}, ${new Date().toISOString()})`,
    '',
    table(['target', 'conns', 'req/s', 'p50 µs', 'p99 µs', 'errors', 'nested overhead'], rows),
    '',
    `Nested-call overhead, p50(Foo) - p50(Bar) at 1 connection: ${over1.toFixed(1)} µs (a whole extra hop: launcher + FIFOs + Foo's own work).`,
  ].join('\n');
}

async function main(): Promise<void> {
  const only = process.env.BENCH_ONLY;
  const parts: string[] = [];
  try {
    if (!only || only === 'compare') parts.push(await benchCompare());
    if (!only || only === 'runtime') parts.push(await benchRuntime());
    if (!only || only === 'native') parts.push(await benchNative());
    if (!only || only === 'merge') parts.push(await benchMerge());
  } finally {
    await stopAll();
  }
  process.stdout.write(parts.join('\n\n') + '\n');
}

main().catch(async (err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
  await stopAll();
  process.exit(1);
});
