/**
 * `nightfuse inject <pid> <library> [--entry SYMBOL] [--arg STRING] [--json]`:
 * the injector on any process the caller may trace. Exit status 1 when the
 * injection failed, 2 on usage errors.
 */
import { parseFlags, type FlagSpecs, FlagError } from '../common/flags.js';
import { inject } from '../launcher/injector.js';

const FLAGS = {
  entry: { type: 'string', default: '', help: 'symbol to call after loading: int entry(const char* arg)' },
  arg: { type: 'string', default: '', help: 'string passed to the entry' },
  json: { type: 'bool', default: false, help: 'print one JSON object' },
  safe_wait_ms: { type: 'int', default: 50, help: 'wait this long for a thread blocked in a system call (-1: never use running code)', min: -1 },
  timeout_ms: { type: 'int', default: 5000, help: 'bound on each remote call', min: 1 },
} satisfies FlagSpecs;

const USAGE = 'usage: nightfuse inject <pid> <library.so> [--entry SYMBOL] [--arg STRING] [--json] [--safe_wait_ms N] [--timeout_ms N]';

export async function runInject(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const { values: f, rest } = parseFlags(FLAGS, argv, { positional: true });
  if (rest.length !== 2) throw new FlagError(`expected <pid> and <library>\n${USAGE}`);
  const pid = Number(rest[0]);
  if (!Number.isInteger(pid) || pid <= 0) throw new FlagError(`"${rest[0]}" is not a process id`);
  const r = await inject(pid, rest[1], { entry: f.entry || undefined, arg: f.arg, safeWaitMs: f.safe_wait_ms, timeoutMs: f.timeout_ms });
  if (f.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
  } else if (r.ok) {
    process.stdout.write(
      `injected ${r.library} into ${pid}${r.entry ? ` and called ${r.entry}` : ''}: ` +
        `stopped ${(r.stoppedUs / 1000).toFixed(3)} ms, total ${(r.totalUs / 1000).toFixed(3)} ms, ` +
        `${r.threadsSeen} thread(s), ran on ${r.threadUsed} (${r.safePoint ? `blocked in syscall ${r.syscall}` : 'in user code'})\n`,
    );
  } else {
    process.stderr.write(`nightfuse inject: ${r.error}\n`);
  }
  return r.ok ? 0 : 1;
}
