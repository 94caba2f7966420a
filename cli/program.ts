/**
 * The `nightfuse` command tree (commander). The admin and tool commands are
 * commander commands with --help/-h and examples; unknown flags and extra
 * arguments are usage errors. `up`, `gateway` and `launcher` keep
 * Nightcore's flag syntax: commander passes their arguments through
 * untouched to the hand-written parser (common/flags.ts).
 */
import { Argument, Command, InvalidArgumentError, Option } from 'commander';
import { VERSION } from '../common/version.js';
import { EXIT_CODES_HELP } from './exit.js';

/** What an action returns: an exit code, or undefined for a server that keeps running. */
export type ActionResult = number | undefined;

const int = (what: string, min: number, max: number) => (v: string) => {
  if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError(`${what} must be a whole number`);
  const n = Number(v);
  if (n < min || n > max) throw new InvalidArgumentError(`${what} must be between ${min} and ${max}`);
  return n;
};

const seconds = (what: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`${what} must be a number of seconds`);
  if (n < min || n > max) throw new InvalidArgumentError(`${what} must be between ${min} and ${max} seconds`);
  return n;
};

function withGateway(c: Command): Command {
  return c
    .option('--gateway <url>', "gateway HTTP address (or NIGHTFUSE_GATEWAY; default: the one `nightfuse up` last ran, else http://127.0.0.1:8080)")
    .option('--admin_token <token>', "admin API token (or NIGHTFUSE_ADMIN_TOKEN; default: `nightfuse up`'s state file, for its own gateway only)");
}

function examples(c: Command, lines: string[]): Command {
  return c.addHelpText('after', `\nExamples:\n${lines.map((l) => `  $ ${l}`).join('\n')}\n\n${EXIT_CODES_HELP}\n`);
}

const watchable = (c: Command) =>
  c.option('-w, --watch', 'redraw the table in place until Ctrl-C')
    .option('--interval <seconds>', 'seconds between redraws with --watch', seconds('--interval', 0.2, 3600), 2)
    .option('--json', 'print JSON');

/** `-h` means --help for the pass-through commands too (their parser knows only --help). */
const helpAlias = (args: string[]) => args.map((a) => (a === '-h' ? '--help' : a));

/**
 * `run` executes an action and owns its exit code; `usageError` prints a
 * commander usage error. Both are set before any subcommand exists, since
 * subcommands copy these settings when created.
 */
export function buildProgram(
  run: (action: () => Promise<ActionResult>) => Promise<void>, usageError: (text: string) => void, writeOut?: (text: string) => void,
): Command {
  const program = new Command('nightfuse')
    .exitOverride()
    .configureOutput({ outputError: (str) => usageError(str), ...(writeOut ? { writeOut } : {}) })
    .description('Nightcore-compatible serverless gateway and node agent that merges hot function-to-function calls at run time.')
    .version(VERSION, '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .enablePositionalOptions()
    .showSuggestionAfterError(true);
  program.addHelpText('after', `
Admin commands talk to the gateway's admin API; they find it through --gateway/--admin_token,
NIGHTFUSE_GATEWAY/NIGHTFUSE_ADMIN_TOKEN, or the state file \`nightfuse up\` writes.
'nightfuse <command> --help' shows a command's flags and examples.

${EXIT_CODES_HELP}
`);
  const act = <A extends unknown[]>(f: (...a: A) => Promise<ActionResult> | ActionResult) => (...a: A) => run(async () => f(...a));

  // Servers: Nightcore's flags, parsed by common/flags.ts.
  const passThrough = (name: string, description: string, start: (argv: string[]) => Promise<void>) =>
    program.command(name).description(description)
      .helpOption(false).allowUnknownOption().allowExcessArguments().passThroughOptions()
      .argument('[flags...]', `flags (see nightfuse ${name} --help)`)
      .action(act(async (flags: string[]) => {
        await start(helpAlias(flags));
        return undefined;
      }));
  passThrough('up', 'the single-node stack: gateway + launcher + workers (what npm start runs)',
    async (argv) => (await import('./up.js')).runUp(argv));
  passThrough('gateway', "the gateway alone (Nightcore's gateway flags)",
    async (argv) => { await (await import('../gateway/main.js')).runGateway(argv); });
  passThrough('launcher', "the node agent alone (Nightcore's engine/launcher flags)",
    async (argv) => { await (await import('../launcher/main.js')).runLauncher(argv); });

  // Views.
  for (const [name, what, cols] of [
    ['status', 'functions, nodes, merges and the policy in force', 'nightfuse status'],
    ['merges', 'merged pairs: isolation, state, workers in force, age', 'nightfuse merges --watch'],
    ['edges', 'the call graph: calls/s, IPC and in-process calls, failures, mean round trip and callee time', 'nightfuse edges --watch --interval 1'],
  ] as const) {
    examples(watchable(withGateway(program.command(name).description(what))), [cols, `nightfuse ${name} --json | jq .`])
      .action(act(async (o) => (await import('./admin.js')).runView(name, o)));
  }

  examples(withGateway(program.command('merge').description('merge CALLEE into every worker of CALLER by hand; returns once in force everywhere'))
    .argument('<caller>', 'the calling function')
    .argument('<callee>', 'the function to load into the caller\'s workers')
    .addOption(new Option('--isolation <level>', "where the callee runs (default: the policy's)").choices(['inline', 'stack', 'thread']))
    .option('--json', 'print the gateway\'s answer as JSON'), [
    'nightfuse merge Foo Bar', 'nightfuse merge Foo Bar --isolation thread',
  ]).action(act(async (caller: string, callee: string, o) => (await import('./admin.js')).runMerge(caller, callee, o)));

  examples(withGateway(program.command('unmerge').description('undo a merge: the caller\'s calls to the callee go over IPC again'))
    .argument('<caller>', 'the calling function').argument('<callee>', 'the merged function')
    .option('--json', 'print the gateway\'s answer as JSON'), ['nightfuse unmerge Foo Bar'])
    .action(act(async (caller: string, callee: string, o) => (await import('./admin.js')).runUnmerge(caller, callee, o)));

  const policy = examples(program.command('policy').description('check, apply or show the merge policy'), [
    'nightfuse policy check examples/merge-policy.yaml --func_config_file examples/func_config.json',
    'nightfuse policy apply my-policy.yaml', 'nightfuse policy show',
  ]);
  examples(policy.command('check').description('validate a policy file locally (no gateway needed); warn about functions the func_config does not name')
    .argument('<file>', 'policy file (YAML or JSON)')
    .option('--func_config_file <file>', 'func_config.json to check the policy\'s function names against')
    .option('--json', 'print {ok, errors|warnings} as JSON'), ['nightfuse policy check policy.yaml --func_config_file func_config.json'])
    .action(act(async (file: string, o) => (await import('./policy.js')).runPolicyCheck(file, o)));
  examples(withGateway(policy.command('apply').description('replace the gateway\'s policy (validated there too) and push it to every launcher')
    .argument('<file>', 'policy file (YAML or JSON)').option('--json', 'print the gateway\'s answer as JSON')), ['nightfuse policy apply policy.yaml'])
    .action(act(async (file: string, o) => (await import('./policy.js')).runPolicyApply(file, o)));
  examples(withGateway(policy.command('show').description('print the policy in force, where it came from, and any refused reload')
    .option('--effective', 'print the effective settings (defaults filled in) instead of the text')
    .option('--json', 'print JSON')), ['nightfuse policy show', 'nightfuse policy show --effective'])
    .action(act(async (o) => (await import('./policy.js')).runPolicyShow(o)));

  examples(withGateway(program.command('events').description('the merge decision log: each decision, merge, unmerge, failure and fault, with its reasons and numbers'))
    .option('-f, --follow', 'keep printing new events until Ctrl-C')
    .option('--interval <seconds>', 'with --follow: how often to ask the gateway', seconds('--interval', 0.1, 60), 1)
    .option('--json', 'one JSON object per line'), ['nightfuse events', 'nightfuse events --follow', 'nightfuse events --json | jq .reason'])
    .action(act(async (o) => (await import('./events.js')).runEvents(o)));

  examples(withGateway(program.command('load').description('put a function under load through the gateway; latency per second, merge events as they happen, and a summary'))
    .argument('<function>', 'function name, as in func_config.json')
    .option('-c, --connections <n>', 'concurrent keep-alive connections', int('--connections', 1, 1000), 8)
    .option('-d, --duration <seconds>', 'how long', seconds('--duration', 1, 3600), 20)
    .option('--body <text>', 'request body', 'Hello')
    .option('--expect <text>', 'the right answer (default: the first answer); any other 200 body is a wrong answer; without a final newline, one at the end of the answer is ignored')
    .option('--no-events', 'do not follow merge events')
    .option('--json', 'print the summary as JSON')
    .addHelpText('after', '\nExits 1 when any call failed or answered wrong.'), [
    'nightfuse load Foo', "nightfuse load Foo -c 16 -d 30 --body Hi --expect 'From function Bar: Hi, World'",
    "nightfuse load ComposePost --body 'hello @alice see https://example.com/x'",
  ]).action(act(async (fn: string, o) => (await import('./load.js')).runLoad(fn, o)));

  examples(program.command('inject').description('load a shared library into a running x86-64 process (ptrace) and optionally call an entry in it')
    .argument('<pid>', 'target process id').argument('<library>', 'shared library (.so) to load')
    .option('--entry <symbol>', 'symbol to call after loading: int entry(const char* arg)')
    .option('--arg <string>', 'string passed to the entry', '')
    .option('--safe_wait_ms <ms>', 'wait this long for a thread blocked in a system call (-1: never use running code)', int('--safe_wait_ms', -1, 60000), 50)
    .option('--timeout_ms <ms>', 'bound on each remote call', int('--timeout_ms', 1, 600000), 5000)
    .option('--json', 'print one JSON object'), ['nightfuse inject 4242 ./libhello.so --entry hello --arg world'])
    .action(act(async (pid: string, lib: string, o) => (await import('./inject.js')).runInject(pid, lib, o)));

  examples(program.command('completion').description('print a shell completion script')
    .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh'])),
  ['source <(nightfuse completion bash)        # in ~/.bashrc', 'source <(nightfuse completion zsh)         # in ~/.zshrc'])
    .action(act(async (shell: 'bash' | 'zsh') => {
      process.stdout.write((await import('./completion.js')).completionScript(program, shell));
      return 0;
    }));
  return program;
}
