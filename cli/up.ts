/**
 * `nightfuse up`: the whole single-node stack (gateway + launcher, each its own
 * process, and the launcher's workers). Prints one line once everything is
 * ready; stops every process it started on SIGINT/SIGTERM, or when one of them
 * dies.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { loadFuncConfig } from '../common/func-config.js';
import { parseFlags, type FlagSpecs, flagHelp, secretFlag } from '../common/flags.js';
import { randomBytes } from 'node:crypto';
import { logFormat } from '../common/log.js';
import { DEFAULT_POLICY, loadPolicy } from '../common/policy.js';
import { EXAMPLE_CONFIG, EXAMPLE_POLICY } from '../common/paths.js';
import { upHints } from './up-hints.js';
import { newToken, readState, statePath, writeState } from './state.js';
import { GATEWAY_FLAGS, IGNORED_GATEWAY_FLAGS } from '../gateway/main.js';
import { IGNORED_ENGINE_FLAGS, LAUNCHER_FLAGS } from '../launcher/main.js';
import { checkClusterToken } from '../common/cluster-auth.js';
import { removeIpcRoot } from '../launcher/ipc-files.js';
import { startOneProcess, type OneProcessStack } from './up-one-process.js';

const UP_FLAGS = {
  ...GATEWAY_FLAGS,
  ...LAUNCHER_FLAGS,
  listen_addr: { type: 'string', default: '127.0.0.1', help: 'address of every listener (the demo stays on loopback)' },
  func_config_file: { type: 'string', default: EXAMPLE_CONFIG, help: 'func_config.json (default: the bundled examples)' },
  control_port: { type: 'int', default: 10008, help: 'control plane port (-1: off)', min: -1, max: 65535 },
  merge_policy_file: { type: 'string', default: '', help: 'merge policy (default with the bundled examples: examples/merge-policy.yaml)' },
  admin_token: { type: 'string', default: '', help: 'admin API token (default: NIGHTFUSE_ADMIN_TOKEN or --admin_token_file, else the one kept in the state file, $XDG_STATE_HOME/nightfuse/up.json, else a new one kept there)' },
  quiet: { type: 'bool', default: false, help: 'print only the ready line' },
  one_process: { type: 'bool', default: true, help: 'gateway and node agent in this one process, with no TCP hop between them (false: each its own process, as between machines)' },
} satisfies FlagSpecs;

/** The cluster token reaches both children through the environment, never argv (visible to every user in ps). */
const TOKEN_KEYS = ['cluster_token', 'cluster_token_file'];
const GATEWAY_KEYS = new Set(Object.keys(GATEWAY_FLAGS).filter((k) => !TOKEN_KEYS.includes(k)));
const LAUNCHER_KEYS = new Set(Object.keys(LAUNCHER_FLAGS).filter((k) => !TOKEN_KEYS.includes(k)));

function waitForLine(child: ChildProcess, re: RegExp, what: string, timeoutMs: number): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${what} did not become ready within ${timeoutMs} ms`)), timeoutMs);
    const onData = (d: Buffer) => {
      buf += d.toString();
      const m = re.exec(buf);
      if (m) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.stdout!.on('data', (x: Buffer) => process.stdout.write(x));
        resolve(m);
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited during start-up (${sig ?? `code ${code}`}); see its log above`));
    });
  });
}

/** Ready means callable: the launcher's connections have been admitted by the gateway. */
async function waitForNode(host: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const text = await (await fetch(`http://${host}:${port}/metrics`)).text();
      if (/^nightfuse_gateway_connected_nodes [1-9]/m.test(text)) return;
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the launcher did not connect to the gateway within ${timeoutMs} ms; see its log above`);
}

export async function runUp(argv: string[]): Promise<void> {
  if (argv.includes('--help')) {
    process.stdout.write(`usage: nightfuse up [flags]\n${flagHelp(UP_FLAGS, { env: true })}\n`);
    return;
  }
  // The children read the same NIGHTFUSE_* variables themselves; what is parsed here decides only what up passes on argv.
  const parsed = parseFlags(UP_FLAGS, argv, { ignored: [...IGNORED_ENGINE_FLAGS, ...IGNORED_GATEWAY_FLAGS], env: process.env });
  const { values: f, given } = parsed;
  // Validate the config here so a mistake is reported once, clearly.
  const config = loadFuncConfig(f.func_config_file);
  if (!f.merge_policy_file && f.func_config_file === EXAMPLE_CONFIG) f.merge_policy_file = EXAMPLE_POLICY;
  const policy = f.merge_policy_file ? loadPolicy(f.merge_policy_file) : DEFAULT_POLICY;
  // The token: --admin_token(_file) or NIGHTFUSE_ADMIN_TOKEN(_FILE), else the state file's (made once), so exports survive restarts.
  const stateFile = statePath();
  let tokenNote: string;
  const givenToken = secretFlag(parsed, 'admin_token');
  const onCommandLine = given.has('admin_token') || given.has('admin_token_file');
  given.delete('admin_token_file'); // read here: the gateway gets the token itself
  if (givenToken) {
    f.admin_token = givenToken;
    tokenNote = onCommandLine ? 'from the command line' : 'from the environment';
  } else {
    const { state, problem } = readState(stateFile);
    if (problem) process.stderr.write(`nightfuse up: ${problem}\n`);
    f.admin_token = state?.adminToken ?? newToken();
    tokenNote = `${state ? 'reused from' : 'new, kept in'} ${stateFile}`;
  }
  // Our own processes authenticate each other: a token of our own unless the operator gave one.
  const clusterToken = checkClusterToken(secretFlag(parsed, 'cluster_token')) || randomBytes(24).toString('hex');
  given.add('merge_policy_file');
  const cli = fileURLToPath(new URL('./nightfuse.js', import.meta.url));
  const pass = (keys: Set<string>, extra: Record<string, string | number | boolean>) => {
    const out: string[] = [];
    for (const [k, v] of Object.entries(f)) {
      if (!keys.has(k) || k === 'admin_token') continue; // the token goes by environment: argv is visible to every user in ps
      if (!given.has(k) && !['listen_addr', 'func_config_file', 'control_port'].includes(k)) continue;
      out.push(`--${k}=${v}`);
    }
    for (const [k, v] of Object.entries(extra)) out.push(`--${k}=${v}`);
    return out;
  };
  const launcherExtra = (host: string, enginePort: number | string, controlPort: number | string) =>
    ({ gateway_addr: host, gateway_port: enginePort, control_port: Number(controlPort) > 0 ? controlPort : 0 });
  if (f.one_process) {
    // The in-process gateway and launcher read their tokens as separate processes would; workers never see them (launcher/worker-supervisor.ts).
    process.env.NIGHTFUSE_CLUSTER_TOKEN = clusterToken;
    process.env.NIGHTFUSE_ADMIN_TOKEN = f.admin_token;
    delete process.env.NIGHTFUSE_ADMIN_TOKEN_FILE;
    delete process.env.NIGHTFUSE_CLUSTER_TOKEN_FILE;
    let stack: OneProcessStack | undefined;
    let stopping = false;
    const stopOne = async (code: number, sig: string) => {
      if (stopping) return;
      stopping = true;
      try {
        await stack?.stop(sig, f.drain_timeout_ms);
        removeIpcRoot(f.root_path_for_ipc);
      } catch (err) {
        process.stderr.write(`nightfuse up: ${(err as Error).message}\n`);
      }
      process.exit(code);
    };
    process.on('SIGINT', () => void stopOne(0, 'SIGINT'));
    process.on('SIGTERM', () => void stopOne(0, 'SIGTERM'));
    try {
      stack = await startOneProcess(pass(GATEWAY_KEYS, {}), (p) => pass(LAUNCHER_KEYS, launcherExtra(loopbackOf(f.listen_addr), p.engine, p.control)));
      const h = loopbackOf(f.listen_addr);
      printReady(h, stack.ports.http, stack.ports.grpc, stack.ports.engine, stack.ports.control);
    } catch (err) {
      process.stderr.write(`nightfuse up: ${(err as Error).message}\n`);
      await stopOne(1, 'start-up failed');
    }
    return;
  }
  const children: ChildProcess[] = [];
  let stopping = false;
  // SIGTERM is passed on and drains (each child waits up to --drain_timeout_ms for its calls); SIGINT stops at once.
  const stopAll = async (code: number, signal: 'SIGTERM' | 'SIGINT' = 'SIGINT') => {
    if (stopping) return;
    stopping = true;
    const graceMs = (signal === 'SIGTERM' ? f.drain_timeout_ms : 0) + 5000;
    await Promise.all(children.map((c) => new Promise<void>((r) => {
      if (c.exitCode !== null || c.signalCode !== null) return r();
      c.once('exit', () => r());
      c.kill(signal);
      setTimeout(() => c.kill('SIGKILL'), graceMs).unref();
    })));
    // Whatever way the launcher ended, its IPC root goes (only if it is one: removeIpcRoot checks).
    try {
      removeIpcRoot(f.root_path_for_ipc);
    } catch (err) {
      process.stderr.write(`nightfuse up: ${(err as Error).message}\n`);
    }
    process.exit(code);
  };
  process.on('SIGINT', () => void stopAll(0, 'SIGINT'));
  process.on('SIGTERM', () => void stopAll(0, 'SIGTERM'));

  // Children log through us, line by line, so a log line never splits our own output.
  const { NIGHTFUSE_ADMIN_TOKEN: _token, NIGHTFUSE_ADMIN_TOKEN_FILE: _tokenFile, ...parentEnv } = process.env;
  const childEnv = { ...parentEnv, NIGHTFUSE_CLUSTER_TOKEN: clusterToken, NIGHTFUSE_CLUSTER_TOKEN_FILE: '', NIGHTFUSE_LOG_FORMAT: logFormat(), ...(process.stderr.isTTY ? { FORCE_COLOR: '1' } : {}) };
  const start = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const c = spawn(process.execPath, [...HEAP_FLAGS(), cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...childEnv, ...env } });
    createInterface({ input: c.stderr!, crlfDelay: Infinity }).on('line', (l) => process.stderr.write(`${l}\n`));
    children.push(c);
    c.on('exit', (code, sig) => {
      if (!stopping) {
        process.stderr.write(`nightfuse up: ${args[0]} stopped unexpectedly (${sig ?? `code ${code}`}); stopping the stack\n`);
        void stopAll(1);
      }
    });
    return c;
  };
  try {
    // Only the gateway gets the token: the launcher's environment reaches every worker.
    const gw = start(['gateway', ...pass(GATEWAY_KEYS, {})], { NIGHTFUSE_ADMIN_TOKEN: f.admin_token });
    const m = await waitForLine(gw, /gateway ready http=(\S+):(\d+) grpc=\S+:(\d+) engine=\S+:(\d+) control=\S+:(-?\d+)/, 'gateway', 15000);
    const [, host, httpPort, grpcPort, enginePort, controlPort] = m;
    const gwHost = loopbackOf(host);
    const launcher = start(['launcher', ...pass(LAUNCHER_KEYS, launcherExtra(gwHost, enginePort, controlPort))]);
    await waitForLine(launcher, /launcher ready[^\n]*\n/, 'launcher', 30000);
    await waitForNode(gwHost, Number(httpPort), 10000);
    printReady(gwHost, httpPort, grpcPort, enginePort, controlPort);
  } catch (err) {
    process.stderr.write(`nightfuse up: ${(err as Error).message}\n`);
    await stopAll(1);
  }

  function printReady(gwHost: string, httpPort: number | string, grpcPort: number | string, enginePort: number | string, controlPort: number | string): void {
    const http = `http://${gwHost}:${httpPort}`;
    if (!tokenNote.startsWith('from ')) writeState(stateFile, { adminToken: f.admin_token, gateway: http });
    // One write: the ready line and the hints reach the terminal whole, never interleaved with a log line.
    process.stdout.write(`nightfuse up: http=${gwHost}:${httpPort} grpc=${gwHost}:${grpcPort} engine=${gwHost}:${enginePort} control=${gwHost}:${controlPort} functions=${config.entries.map((e) => e.funcName).join(',')}\n` +
      (f.quiet ? '' : upHints({ config, policy, policyFile: f.merge_policy_file, http, token: f.admin_token, tokenNote })));
  }
}

/** The heap sizing this process was started with (bin/nightfuse.js) applies to its children too; nothing else (--inspect …). */
function HEAP_FLAGS(): string[] {
  return process.execArgv.filter((a) => /^--(max-semi-space-size|max-old-space-size|initial-heap-size)=/.test(a));
}

function loopbackOf(addr: string): string {
  return addr === '0.0.0.0' ? '127.0.0.1' : addr;
}

