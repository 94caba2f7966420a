/**
 * `nightfuse inject <pid> <library>`: the injector on any process the caller
 * may trace. Exit status 1 when the injection failed, 2 on usage errors.
 */
import { inject } from '../launcher/injector.js';
import { CliError, EXIT, usageError } from './exit.js';
import { syscallName } from './syscalls.js';

export interface InjectFlags {
  entry?: string;
  arg?: string;
  json?: boolean;
  safe_wait_ms: number;
  timeout_ms: number;
}

export async function runInject(pidText: string, library: string, f: InjectFlags): Promise<number> {
  const pid = Number(pidText);
  if (!/^\d+$/.test(pidText) || !Number.isSafeInteger(pid) || pid <= 0) throw usageError(`"${pidText}" is not a process id`);
  const r = await inject(pid, library, { entry: f.entry || undefined, arg: f.arg ?? '', safeWaitMs: f.safe_wait_ms, timeoutMs: f.timeout_ms });
  if (f.json) {
    process.stdout.write(JSON.stringify({ ...r, syscallName: r.safePoint ? syscallName(r.syscall) : null }) + '\n');
    return r.ok ? EXIT.OK : EXIT.FAILED;
  }
  if (!r.ok) throw new CliError(r.error);
  process.stdout.write(
    `injected ${r.library} into ${pid}${r.entry ? ` and called ${r.entry}` : ''}: ` +
      `stopped ${(r.stoppedUs / 1000).toFixed(3)} ms, total ${(r.totalUs / 1000).toFixed(3)} ms, ` +
      `${r.threadsSeen} thread(s), ran on ${r.threadUsed} (${r.safePoint ? `blocked in ${syscallName(r.syscall)}` : 'in user code'})\n`,
  );
  return EXIT.OK;
}
