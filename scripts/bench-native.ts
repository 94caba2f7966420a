/**
 * Benchmark of issue 3's parts, in one run:
 *  - per nested call, as the caller's worker sees it (timed inside the worker
 *    by the Loop fixture): the worker IPC path vs the same call merged with
 *    inline, stack and thread isolation;
 *  - the merge runtime's own per-call cost in a tight C loop (test_merge --bench);
 *  - injecting the merge runtime into fresh worker processes: stopped-world and
 *    total time, median and p99.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { NATIVE_BUILD, PACKAGE_ROOT } from '../common/paths.js';
import { startLocalStack } from '../launcher/local-stack.js';
import type { Isolation } from '../proto/merge-wire.js';
import { table } from './bench-lib.js';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

async function loopCall(port: number, input: string): Promise<{ p50: number; p99: number; mean: number }> {
  const r = await fetch(`http://127.0.0.1:${port}/function/Loop`, { method: 'POST', body: input });
  const text = await r.text();
  if (r.status !== 200) throw new Error(`Loop failed: ${r.status} ${text}`);
  const [p50, p99, mean] = text.split(' ').map(Number);
  return { p50, p99, mean };
}

export async function benchNative(injections = Number(process.env.BENCH_INJECTIONS ?? 60)): Promise<string> {
  const stack = await startLocalStack(join(PACKAGE_ROOT, 'scripts', 'bench_func_config.json'));
  const lines: string[] = [];
  try {
    const loopWorker = () => stack.agent.readyWorkersOf('Loop')[0];
    await loopCall(stack.httpPort, 'Bar 2000'); // warm-up
    const ipc = await loopCall(stack.httpPort, 'Bar 20000');
    const rows: (string | number)[][] = [['worker IPC (not merged)', ipc.p50, ipc.p99, ipc.mean, '1.0×']];
    for (const iso of ['inline', 'stack', 'thread'] as Isolation[]) {
      const s = await stack.merge.attach(loopWorker()!);
      await s.load('Bar', stack.agent.config.byName.get('Bar')!.library!, iso, 1);
      await s.route('Bar', true);
      await loopCall(stack.httpPort, 'Bar 20000');
      const m = await loopCall(stack.httpPort, 'Bar 200000');
      await s.route('Bar', false);
      await s.unload('Bar');
      rows.push([`merged, ${iso}`, m.p50, m.p99, m.mean, `${(ipc.p50 / m.p50).toFixed(0)}× faster`]);
    }
    lines.push(
      '### Nested call Loop -> Bar, timed inside the caller worker (ns per call)',
      '',
      table(['path', 'p50 ns', 'p99 ns', 'mean ns', 'p50 vs IPC'], rows),
    );

    const micro = JSON.parse(execFileSync(join(NATIVE_BUILD, 'test', 'test_merge'), ['--bench'], { encoding: 'utf8' })
      .split('\n').find((l) => l.startsWith('{"bench"'))!);
    lines.push(
      '',
      '### Merge runtime per-call cost in a tight C loop (host hook -> runtime -> Bar -> output hand-over; ns, p50/p99 of 200 batches)',
      '',
      table(['isolation', 'p50 ns', 'p99 ns', 'aim'], [
        ['inline', micro.inline_ns[0], micro.inline_ns[1], '≤ 50'],
        ['stack', micro.stack_ns[0], micro.stack_ns[1], '≤ 100'],
        ['thread', micro.thread_ns[0], micro.thread_ns[1], '≤ 1000'],
      ]),
    );

    // Injection into fresh workers: kill Loop's worker, let the launcher start a new one, inject.
    for (let i = 0; i < injections; i++) {
      const w = loopWorker()!;
      w.proc.kill('SIGKILL');
      await w.proc.exited;
      let fresh;
      for (let k = 0; k < 500 && !(fresh = stack.agent.workersOf('Loop').find((x) => x.state === 'idle')); k++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      if (!fresh) throw new Error('no fresh Loop worker');
      await stack.merge.attach(fresh);
    }
    // The launcher's path: one load-only injection per fresh worker (the runtime's constructor starts it).
    const reps = stack.merge.injections.slice(-injections).filter((r) => r.ok && !r.entry);
    const stopped = reps.map((r) => r.stoppedUs / 1000);
    const total = reps.map((r) => r.totalUs / 1000);
    const dl = reps.map((r) => r.dlopenUs / 1000);
    const att = reps.map((r) => r.attachUs / 1000);
    const ent = reps.map((r) => r.entryUs / 1000);
    lines.push(
      '',
      `### Injecting the merge runtime into ${reps.length} fresh worker processes (ms; ${injections - reps.length} failed)`,
      '',
      table(['measure', 'median ms', 'p99 ms', 'aim / anchor'], [
        ['stopped world (first interrupt -> last detach)', pct(stopped, 50), pct(stopped, 99), '≤ 0.2 ms p50 (anchor ~3 ms)'],
        ['  of which: seize + stop every thread', pct(att, 50), pct(att, 99), ''],
        ['  of which: remote dlopen', pct(dl, 50), pct(dl, 99), ''],
        ['  of which: remote entry call', pct(ent, 50), pct(ent, 99), 'none: a signal after detach starts the runtime'],
        ['total (incl. ELF lookup, attach, detach)', pct(total, 50), pct(total, 99), ''],
      ]),
    );
  } finally {
    await stack.stop();
  }
  return lines.join('\n');
}
