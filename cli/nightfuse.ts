/**
 * The `nightfuse` command: runs the command tree (cli/program.ts) and turns
 * every outcome into an exit code (cli/exit.ts). Expected errors are one
 * line on stderr; NIGHTFUSE_DEBUG=1 adds the stack of an unexpected one.
 */
import { CommanderError } from 'commander';
import { CliError, EXIT, oneLine } from './exit.js';
import { buildProgram, type ActionResult } from './program.js';

function exitWith(code: number): void {
  // Let piped stdout and stderr drain before leaving.
  process.exitCode = code;
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

function describe(err: unknown): { message: string; code: number } {
  if (err instanceof CliError) return { message: err.message, code: err.exitCode };
  // By name: importing these classes would load the policy schema (ajv) for every --help.
  const name = (err as Error)?.name;
  if (name === 'FlagError' || name === 'ConfigError') return { message: (err as Error).message, code: EXIT.USAGE };
  if (name === 'PolicyError') return { message: (err as Error).message, code: EXIT.FAILED };
  const e = err as Error & { code?: string };
  const debug = process.env.NIGHTFUSE_DEBUG === '1' && e?.stack ? `\n${e.stack}` : '';
  return { message: `${e?.message ?? String(err)}${debug}`, code: EXIT.FAILED };
}

let commandName = 'nightfuse';

const program = buildProgram(async (action: () => Promise<ActionResult>) => {
  try {
    const code = await action();
    if (code !== undefined) exitWith(code);
  } catch (err) {
    const { message, code } = describe(err);
    process.stderr.write(`${commandName}: ${process.env.NIGHTFUSE_DEBUG === '1' ? message : oneLine(message)}\n`);
    exitWith(code);
  }
}, (text) => {
  // commander's usage errors: one line, our prefix, no help dump.
  process.stderr.write(`${commandName}: ${oneLine(text.replace(/^error: /, '')).replace('; (Did you mean', ' (did you mean')}\n`);
});

program.hook('preAction', (_root, action) => {
  const names: string[] = [];
  for (let c: typeof action | null = action; c && c !== program; c = c.parent) names.unshift(c.name());
  commandName = ['nightfuse', ...names].join(' ');
});
// A usage error names the command it is about, before any action runs.
const argv = process.argv.slice(2);
for (let c = program, i = 0; i < argv.length; i++) {
  if (argv[i].startsWith('-')) continue;
  const sub = c.commands.find((x) => x.name() === argv[i]);
  if (!sub) break;
  commandName += ` ${sub.name()}`;
  c = sub;
}

if (argv.length === 0) {
  program.outputHelp();
  exitWith(EXIT.OK);
} else {
  program.parseAsync(argv, { from: 'user' }).catch((err: unknown) => {
    if (err instanceof CommanderError) {
      const ok = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help';
      exitWith(ok ? EXIT.OK : EXIT.USAGE);
      return;
    }
    const { message, code } = describe(err);
    process.stderr.write(`${commandName}: ${oneLine(message)}\n`);
    exitWith(code);
  });
}
