// The `nightfuse` command without a stack: help, version, completion, usage errors, exit codes,
// and the pure parts (policy warnings, start-up hints, state file, syscall names, latency histogram).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFuncConfig } from '../common/func-config.js';
import { loadPolicy, parsePolicy } from '../common/policy.js';
import type { CommanderError } from 'commander';
import { LatencyHistogram } from '../cli/latency.js';
import { buildProgram } from '../cli/program.js';
import { policyWarnings } from '../cli/policy.js';
import { readState, statePath, writeState } from '../cli/state.js';
import { syscallName } from '../cli/syscalls.js';
import { demoHints } from '../cli/up-hints.js';
import { freePort, ROOT } from './helpers.js';
import { isolatedState, oneErrorLine, runCli } from './cli-helpers.js';

const { env, cleanup } = isolatedState();
t.teardown(cleanup);
const VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version;

const COMMANDS = ['status', 'merges', 'edges', 'merge', 'unmerge', 'policy', 'policy check', 'policy apply', 'policy show', 'events', 'load', 'inject', 'completion'];
const SERVERS = ['up', 'gateway', 'launcher'];

/** Runs at most `n` CLI processes at a time (2 cores). */
async function pool<T, R>(items: T[], n: number, f: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i]);
    }
  }));
  return out;
}

t.test('the root help lists exactly the commands tested here', async (t) => {
  const r = await runCli(['--help'], env);
  t.equal(r.code, 0);
  const listed = [...r.stdout.matchAll(/^ {2}([a-z]+)\b/gm)].map((m) => m[1]).filter((c) => c !== 'help');
  t.same(listed.sort(), [...SERVERS, ...COMMANDS.filter((c) => !c.includes(' '))].sort());
  t.match(r.stdout, /Exit codes: 0 ok, 1 failed or refused, 2 usage error, 3 cannot reach the gateway/);
  const bare = await runCli([], env);
  t.equal(bare.code, 0, 'no arguments: help, exit 0');
  t.equal(bare.stdout, r.stdout);
});

/** The command tree in process, its output captured: --help on every command without a process each. */
async function helpInProcess(args: string[]): Promise<{ out: string; code: string }> {
  let out = '';
  const program = buildProgram(async () => undefined, (e) => (out += e), (text) => (out += text));
  try {
    await program.parseAsync(args, { from: 'user' });
    return { out, code: 'no exit' };
  } catch (err) {
    return { out, code: (err as CommanderError).code };
  }
}

t.test('--help and -h on every command, with examples and exit codes', async (t) => {
  for (const c of COMMANDS) {
    const long = await helpInProcess([...c.split(' '), '--help']);
    const short = await helpInProcess([...c.split(' '), '-h']);
    t.equal(long.code, 'commander.helpDisplayed', `${c} --help is help`);
    t.match(long.out, new RegExp(`^Usage: nightfuse ${c}`), `${c} --help shows its usage`);
    t.match(long.out, /\nExamples:\n {2}\$ .*nightfuse /, `${c} --help has examples`);
    t.match(long.out, /Exit codes:/);
    t.equal(short.out, long.out, `${c} -h is --help`);
  }
  // And as a real process: output, exit code 0, nothing on stderr.
  const [merge, mergeShort] = await Promise.all([runCli(['merge', '--help'], env), runCli(['merge', '-h'], env)]);
  t.equal(merge.code, 0);
  t.equal(merge.stdout, (await helpInProcess(['merge', '--help'])).out);
  t.equal(mergeShort.stdout, merge.stdout);
  t.equal(merge.stderr + mergeShort.stderr, '');
});

t.test('up, gateway and launcher keep their own flag help (Nightcore syntax)', async (t) => {
  // One process per server help: the gateway's both ways, up's (which also loads the launcher's flags).
  const runs = await pool([['gateway', '--help'], ['gateway', '-h'], ['up', '--help']], 3, (a) => runCli(a, env));
  for (const [i, name] of ['gateway', 'gateway', 'up'].entries()) {
    t.equal(runs[i].code, 0);
    t.match(runs[i].stdout, new RegExp(`^usage: nightfuse ${name} \\[flags\\]\\n {2}--`), `${name} --help is the flag list`);
  }
  t.equal(runs[1].stdout, runs[0].stdout, 'gateway -h is gateway --help');
  t.match(runs[0].stdout, /--http_port=8080/);
  t.match(runs[2].stdout, /--admin_token=/);
  t.match(runs[2].stdout, /--root_path_for_ipc=/, 'up takes the launcher flags');
  // The launcher is wired the same way: commander leaves --help and -h to the command's own parser.
  for (const a of [['launcher', '--help'], ['launcher', '-h'], ['up', '-h']]) t.equal((await helpInProcess(a)).code, 'no exit', `${a.join(' ')} reaches the action`);
});

t.test('--version and -V', async (t) => {
  const r = await runCli(['--version'], env);
  t.equal(r.code, 0);
  t.equal(r.stdout, `${VERSION}\n`);
  t.match(await helpInProcess(['-V']), { code: 'commander.version', out: `${VERSION}\n` });
});

t.test('usage errors: exit 2, one line, no stack', async (t) => {
  // [args, the command the message names, what it says]
  const cases: [string[], string, RegExp][] = [
    [['merges', '--bogus'], 'merges', /unknown option '--bogus'/],
    [['merges', '--jsn'], 'merges', /unknown option '--jsn'\s+\(did you mean --json\?\)/i],
    [['merges', 'extra'], 'merges', /too many arguments/],
    [['merge', 'Foo', 'Bar', 'Baz'], 'merge', /too many arguments/],
    [['merge', 'Foo'], 'merge', /missing required argument 'callee'/],
    [['policy', 'check'], 'policy check', /missing required argument 'file'/],
    [['policy', 'check', 'a.yaml', 'b.yaml'], 'policy check', /too many arguments/],
    [['policy', 'bogus'], 'policy', /unknown command 'bogus'/],
    [['bogus'], '', /unknown command 'bogus'/],
    [['load', 'Foo', '-c', '0'], 'load', /--connections must be between 1 and 1000/],
    [['load', 'Foo', '-d', 'soon'], 'load', /--duration must be a number of seconds/],
    [['merge', 'Foo', 'Bar', '--isolation', 'none'], 'merge', /Allowed choices are inline, stack, thread/],
    [['completion', 'fish'], 'completion', /Allowed choices are bash, zsh/],
    [['inject', 'self', 'lib.so'], 'inject', /"self" is not a process id/],
    [['merges'], 'merges', /no admin token for http:\/\/127\.0\.0\.1:8080/],
    [['merges', '--gateway', 'ftp://x', '--admin_token', 't'], 'merges', /only http:\/\/ and https:\/\//],
    [['gateway', '--bogus'], 'gateway', /unknown flag --bogus/],
    [['launcher', '--engine_conn_port'], 'launcher', /unknown flag --engine_conn_port/],
  ];
  // Every commander-level message from the command tree in process (no process each)…
  for (const [args, , re] of cases) {
    const r = await helpInProcess(args);
    if (r.code !== 'no exit') t.match(r.out, re, `${args.join(' ')}: ${r.code}`);
  }
  // …and exit code, prefix and one-line form from real processes, for a sample that covers each kind.
  const sample = [1, 3, 5, 8, 13, 14, 16];
  const runs = await pool(sample, 3, (i) => runCli(cases[i][0], env));
  for (const [k, i] of sample.entries()) {
    const [args, cmd, re] = cases[i];
    const r = runs[k];
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`);
    t.match(r.stderr, new RegExp(`^nightfuse${cmd ? ` ${cmd}` : ''}: .*${re.source}`, re.flags), `${args.join(' ')}: says why, naming the command`);
    t.ok(oneErrorLine(r.stderr), `${args.join(' ')}: one line (${JSON.stringify(r.stderr)})`);
    t.equal(r.stdout, '', 'nothing on stdout');
  }
});

t.test('gateway unreachable: exit 3, one line, for admin commands, events and load', async (t) => {
  const gw = `http://127.0.0.1:${await freePort()}`;
  const runs = await pool([['edges', '--watch'], ['events', '--follow'], ['merge', 'Foo', 'Bar'], ['load', 'Foo', '-d', '1']], 3,
    (a) => runCli([...a, '--gateway', gw, '--admin_token', 'some-token'], env));
  for (const r of runs) {
    t.equal(r.code, 3);
    t.match(r.stderr, new RegExp(`^nightfuse [a-z ]+: cannot reach the gateway at ${gw.replace(/\./g, '\\.')}: ECONNREFUSED\\n$`));
    t.ok(oneErrorLine(r.stderr));
  }
});

t.test('inject: a failed injection is one line and exit 1', async (t) => {
  const r = await runCli(['inject', '4194000', join(ROOT, 'native', 'build', 'examples', 'libbar.so')], env);
  t.equal(r.code, 1, r.stderr);
  t.ok(oneErrorLine(r.stderr), r.stderr);
  t.match(r.stderr, /^nightfuse inject: /);
});

t.test('policy check: valid, invalid, and warnings against a func_config', async (t) => {
  const policy = join(ROOT, 'examples', 'merge-policy.yaml');
  const own = await runCli(['policy', 'check', policy, '--func_config_file', join(ROOT, 'examples', 'func_config.json')], env);
  t.equal(own.code, 0);
  t.match(own.stdout, /valid \(2 rules, 1 trust groups\)\n$/);
  t.equal(own.stderr, '', 'no warnings against its own config');
  const other = await runCli(['policy', 'check', policy, '--func_config_file', join(ROOT, 'examples', 'socialnet', 'func_config.json')], env);
  t.equal(other.code, 0, 'warnings do not fail the check');
  t.match(other.stderr, /^warning: trustGroups\.demo: "Foo" is not a function in .*socialnet\/func_config\.json$/m);
  t.match(other.stderr, /^warning: rules\[0\] \(Foo -> Bar\): "Foo" and "Bar" are not functions in /m);
  t.match(other.stdout, /4 warning\(s\)/);
  const dir = mkdtempSync(join(tmpdir(), 'nightfuse-policy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'bad.yaml'), 'defaults: { mode: sometimes }\n');
  const bad = await runCli(['policy', 'check', join(dir, 'bad.yaml'), '--json'], env);
  t.equal(bad.code, 1);
  t.same(JSON.parse(bad.stdout), { ok: false, errors: ['defaults.mode: must be one of auto, always, never'] });
  const missing = await runCli(['policy', 'check', join(dir, 'nope.yaml')], env);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /cannot read .*nope\.yaml: ENOENT/);
});

t.test('policy warnings: unknown names, rules that never apply', async (t) => {
  const p = parsePolicy(`
trustGroups: { g: [A, Ghost] }
rules:
  - { caller: A, callee: B }
  - { caller: A, callee: "B*" }
  - { caller: "X*", callee: A }
  - { caller: A, callee: Nope }
`);
  t.same(policyWarnings(p, ['A', 'B', 'C'], 'cfg.json'), [
    'trustGroups.g: "Ghost" is not a function in cfg.json',
    'rules[1] (A -> B*): applies to no pair of functions in cfg.json (no match, or an earlier rule matches first)',
    'rules[2] (X* -> A): applies to no pair of functions in cfg.json (no match, or an earlier rule matches first)',
    'rules[3] (A -> Nope): "Nope" is not a function in cfg.json',
  ]);
});

t.test('start-up hints come from the config and policy in use', async (t) => {
  const demo = demoHints(loadFuncConfig(join(ROOT, 'examples', 'func_config.json')), loadPolicy(join(ROOT, 'examples', 'merge-policy.yaml')));
  t.equal(demo.entry, 'Foo');
  t.match(demo.pair, { caller: 'Foo', callee: 'Bar', isolation: 'stack' });
  const social = demoHints(loadFuncConfig(join(ROOT, 'examples', 'socialnet', 'func_config.json')), loadPolicy(join(ROOT, 'examples', 'socialnet', 'merge-policy.yaml')));
  t.equal(social.entry, 'ComposePost', 'socialnet is not told to call Foo');
  t.match(social.pair, { caller: 'ComposePost', callee: 'UniqueId', isolation: 'inline' });
});

t.test('state file: 0600 in a 0700 folder under XDG_STATE_HOME; one others may read is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nightfuse-state-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = statePath({ XDG_STATE_HOME: dir });
  t.equal(path, join(dir, 'nightfuse', 'up.json'));
  t.equal(statePath({ HOME: '/home/x' }), '/home/x/.local/state/nightfuse/up.json');
  t.same(readState(path), {}, 'missing: nothing, no problem');
  writeState(path, { adminToken: 'abcdefghijklmnopqrstuv', gateway: 'http://127.0.0.1:1' });
  t.equal(statSync(path).mode & 0o777, 0o600);
  t.equal(statSync(join(dir, 'nightfuse')).mode & 0o777, 0o700);
  t.equal(readState(path).state?.adminToken, 'abcdefghijklmnopqrstuv');
  chmodSync(path, 0o644);
  t.match(readState(path), { state: undefined, problem: /readable by other users/ });
  writeState(path, { adminToken: 'short' });
  t.match(readState(path).problem, /no valid adminToken/);
  t.notOk(existsSync(`${path}.${process.pid}.tmp`), 'no temp file left');
});

t.test('system call names for the injector report', async (t) => {
  t.equal(syscallName(0), 'read(2)');
  t.equal(syscallName(202), 'futex(2)');
  t.equal(syscallName(232), 'epoll_wait(2)');
  t.equal(syscallName(281), 'epoll_pwait(2)');
  t.equal(syscallName(230), 'clock_nanosleep(2)');
  t.equal(syscallName(9999), 'syscall 9999');
});

t.test('latency histogram percentiles within 1%', async (t) => {
  const h = new LatencyHistogram();
  for (let i = 1; i <= 10000; i++) h.record(i / 100); // 0.01 .. 100 ms, uniform
  for (const [p, want] of [[50, 50], [99, 99], [100, 100]] as const) {
    const got = h.percentile(p);
    t.ok(Math.abs(got - want) / want < 0.011, `p${p} ${got} ~ ${want}`);
  }
  t.equal(new LatencyHistogram().percentile(50), 0);
  t.ok(Math.abs(h.meanMs - 50.005) < 1e-9);
});

t.test('completion: bash completes commands, subcommands, flags, choices and Nightcore flags', async (t) => {
  const script = (await runCli(['completion', 'bash'], env)).stdout;
  t.match(script, /complete -o default -F _nightfuse nightfuse/);
  const complete = (line: string) => {
    const words = line.split(' ');
    const cmd = `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _nightfuse; printf '%s\\n' "\${COMPREPLY[@]}"`;
    return execFileSync('bash', ['-c', cmd], { encoding: 'utf8' }).split('\n').filter(Boolean);
  };
  t.same(complete('nightfuse me').sort(), ['merge', 'merges']);
  t.same(complete('nightfuse policy '), ['check', 'apply', 'show', '-h', '--help']);
  t.same(complete('nightfuse policy check --func'), ['--func_config_file']);
  t.same(complete('nightfuse merge --isolation '), ['inline', 'stack', 'thread']);
  t.same(complete('nightfuse completion '), ['bash', 'zsh']);
  t.ok(complete('nightfuse load Foo --c').includes('--connections'));
  t.same(complete('nightfuse gateway --http_p'), ['--http_port=']);
  t.ok(complete('nightfuse up --merge').includes('--merge_policy_file='));
  t.same(complete('nightfuse events --fo'), ['--follow']);
  t.ok(complete('nightfuse ').includes('load'));
  const zsh = (await runCli(['completion', 'zsh'], env)).stdout;
  t.match(zsh, /^#compdef nightfuse\n/);
  for (const fn of ['_nightfuse', '_nightfuse_merge', '_nightfuse_policy_check', '_nightfuse_gateway', '_nightfuse_load']) t.match(zsh, new RegExp(`^${fn}\\(\\) \\{`, 'm'));
  t.match(zsh, /'--isolation\[[^\]]*\]:value:\(inline stack thread\)'/);
  t.match(zsh, /compdef _nightfuse nightfuse/);
  const hasZsh = ['/usr/bin/zsh', '/bin/zsh'].some(existsSync);
  if (hasZsh) execFileSync('zsh', ['-n', '-c', zsh]);
  t.pass(hasZsh ? 'zsh -n accepts the script' : 'zsh not installed: syntax not checked by zsh');
});

t.test('README and docs link only to files a clone has', async (t) => {
  for (const doc of ['README.md', 'docs/ARCHITECTURE.md', 'docs/DESIGN-NOTES.md', 'CHANGELOG.md', 'deploy/grafana/README.md']) {
    const text = readFileSync(join(ROOT, doc), 'utf8');
    t.notMatch(text, /\.\.\/shared\//, `${doc}: nothing outside the repository`);
    for (const m of text.matchAll(/\]\(([^)#]+)(#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(m[1])) continue;
      t.ok(existsSync(join(ROOT, doc, '..', m[1])), `${doc} links to ${m[1]}`);
    }
  }
  t.ok(existsSync(join(ROOT, 'LICENSE')) && /^MIT License/.test(readFileSync(join(ROOT, 'LICENSE'), 'utf8')), 'LICENSE is MIT, as package.json says');
  t.equal(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).license, 'MIT');
});
