/**
 * Shared test helpers: HTTP calls, the CLI, and whole stacks as real processes.
 *
 * Ports: every server a test starts binds port 0 itself and the test reads the
 * port back (the gateway's ready line, `server.address()`), so test files
 * running in parallel never race for a port picked in advance.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
export const CLI = join(ROOT, 'bin', 'nightfuse.js');
export const FIXTURE_CONFIG = join(ROOT, 'test', 'fixtures', 'func_config.json');

/**
 * A free port for a server that cannot bind port 0 itself (the launcher's
 * --probe_port, where 0 means off). It comes from below the kernel's ephemeral
 * range, where no port-0 server of another test file can land between this
 * check and the server's bind; the random pick keeps files apart from each other.
 */
export async function freePort(): Promise<number> {
  const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  const top = Math.max(2048, low) - 1;
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 1024 + Math.floor(Math.random() * (top - 1024));
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below the ephemeral range');
}

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

export function request(port: number, method: string, path: string, body?: Buffer | string, timeoutMs = 20000): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export function post(port: number, path: string, body: Buffer | string = ''): Promise<HttpResult> {
  return request(port, 'POST', path, body);
}

export interface Started {
  child: ChildProcess;
  match: RegExpExecArray;
  stdout: () => string;
  stderr: () => string;
}

/** Spawns `nightfuse <args>` and resolves when stdout matches `ready`. */
export function startProcess(args: string[], ready: RegExp, timeoutMs = 30000, env: NodeJS.ProcessEnv = {}): Promise<Started> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`nightfuse ${args[0]} not ready in ${timeoutMs} ms; stderr:\n${err.slice(-3000)}`));
    }, timeoutMs);
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.length > 1_000_000) err = err.slice(-500_000);
    });
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.length > 1_000_000) out = out.slice(-500_000);
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m, stdout: () => out, stderr: () => err });
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`nightfuse ${args[0]} exited (${sig ?? code}) before ready; stderr:\n${err.slice(-3000)}`));
    });
  });
}

/** Resolves with how the process ended (SIGKILL after 5 s if it does not). */
export function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', (code, sig) => {
      clearTimeout(t);
      resolve({ code, signal: sig });
    });
    child.kill(signal);
  });
}

/** The ports in a gateway's (or `nightfuse up`'s) ready line. */
export const READY_PORTS = /http=\S+:(\d+) grpc=\S+:(\d+) engine=\S+:(\d+) control=\S+:(-?\d+)/;
export function readyPorts(m: RegExpExecArray | string): { http: number; grpc: number; engine: number; control: number } {
  const x = typeof m === 'string' ? READY_PORTS.exec(m) : m;
  if (!x) throw new Error(`no ports in ready line ${String(m)}`);
  return { http: Number(x[1]), grpc: Number(x[2]), engine: Number(x[3]), control: Number(x[4]) };
}

/** A gateway process on ports it picks itself (0), unless `ports` pins them (a restart on the same ports). */
export async function startGatewayProcess(flags: string[], env: NodeJS.ProcessEnv = {}, ports?: { http: number; grpc: number; engine: number; control: number }) {
  const p = ports ?? { http: 0, grpc: 0, engine: 0, control: 0 };
  const args = [
    'gateway', '--listen_addr=127.0.0.1', `--http_port=${p.http}`, `--grpc_port=${p.grpc}`,
    `--engine_conn_port=${p.engine}`, `--control_port=${p.control}`, ...flags,
  ];
  const started = await startProcess(args, new RegExp(`gateway ready ${READY_PORTS.source}`), 30000, env);
  return { ...started, ports: readyPorts(started.match) };
}

export interface Stack {
  httpPort: number;
  grpcPort: number;
  enginePort: number;
  controlPort: number;
  ipcRoot: string;
  gateway: ChildProcess;
  launcher: ChildProcess;
  launcherStderr: () => string;
  gatewayStderr: () => string;
  restartGateway(): Promise<void>;
  stop(): Promise<void>;
}

let stackSeq = 0;
/** NIGHTFUSE_TEST_WORKER_HOST: another worker host for stacks (the C coverage run uses native/build-cov's). */
const WORKER_HOST_FLAG = process.env.NIGHTFUSE_TEST_WORKER_HOST ? [`--worker_host=${process.env.NIGHTFUSE_TEST_WORKER_HOST}`] : [];

/** A unique IPC root under /dev/shm for this test process. */
export function uniqueIpcRoot(what = 'test'): string {
  return `/dev/shm/nightfuse-${what}-${process.pid}-${stackSeq++}`;
}

/** A gateway and a launcher as separate processes, on ports the gateway picks and a fresh IPC root. */
export async function startStack(opts: { config?: string; gatewayFlags?: string[]; launcherFlags?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Stack> {
  const ipcRoot = uniqueIpcRoot();
  const config = opts.config ?? FIXTURE_CONFIG;
  const gatewayFlags = [`--func_config_file=${config}`, ...(opts.gatewayFlags ?? [])];
  const gw = await startGatewayProcess(gatewayFlags, opts.env);
  const { ports } = gw;
  const ln = await startProcess([
    'launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${ports.engine}`, `--control_port=${ports.control}`,
    `--root_path_for_ipc=${ipcRoot}`, `--func_config_file=${config}`, ...WORKER_HOST_FLAG, ...(opts.launcherFlags ?? []),
  ], /launcher ready/, 30000, opts.env).catch(async (err) => {
    await stopProcess(gw.child);
    throw err;
  });
  const stack: Stack = {
    httpPort: ports.http, grpcPort: ports.grpc, enginePort: ports.engine, controlPort: ports.control, ipcRoot,
    gateway: gw.child, launcher: ln.child, launcherStderr: ln.stderr, gatewayStderr: gw.stderr,
    async restartGateway() {
      await stopProcess(stack.gateway);
      // The launcher reconnects to the same address, so the new gateway takes the ports the old one had.
      const again = await startGatewayProcess(gatewayFlags, opts.env, ports);
      stack.gateway = again.child;
      stack.gatewayStderr = again.stderr;
    },
    async stop() {
      await Promise.all([stopProcess(stack.launcher), stopProcess(stack.gateway)]);
    },
  };
  await waitFor(async () => (await request(ports.http, 'GET', '/metrics')).body.toString().includes('nightfuse_gateway_connected_nodes 1'), 10000, 'launcher connected to gateway');
  // And attached on the control plane (merges, views): the engine link alone comes up first.
  const controlOff = ports.control <= 0 || (opts.launcherFlags ?? []).some((f) => /^--control_port=0$/.test(f));
  if (!controlOff) {
    await waitFor(async () => /^nightfuse_function_workers\{/m.test((await request(ports.http, 'GET', '/metrics')).body.toString()), 10000, 'launcher attached on the control plane');
  }
  return stack;
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await cond()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function metricValue(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{')) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(' ').pop());
  }
  return undefined;
}

export async function metrics(port: number): Promise<string> {
  return (await request(port, 'GET', '/metrics')).body.toString();
}

/** The gateway's admin API. */
export async function admin(port: number, token: string, method: string, path: string, body?: string): Promise<{ status: number; data: any }> {
  const r = await fetch(`http://127.0.0.1:${port}/admin/v1${path}`, { method, body, headers: token ? { Authorization: `Bearer ${token}` } : {} });
  return { status: r.status, data: await r.json() };
}

/**
 * Waits until the node's merge decision loop has completed `rounds` more
 * rounds than it had when this was called (counted from the first report
 * made after the call), so a "not merged" result means the loop looked.
 */
export async function decisionRounds(port: number, token: string, rounds: number, timeoutMs = 20000): Promise<void> {
  const since = Date.now();
  let base: number | undefined;
  await waitFor(async () => {
    const n = (await admin(port, token, 'GET', '/nodes')).data[0];
    if (!n?.lastReport || Date.parse(n.lastReport) <= since) return false;
    base ??= n.ticks;
    return n.ticks >= base! + rounds;
  }, timeoutMs, `${rounds} merge decision rounds`);
}

/** `nightfuse <args>` to completion; killed after `timeoutMs` (then code is -1). */
export function cli(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 30000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: timeoutMs, killSignal: 'SIGTERM' }, (err, stdout, stderr) => {
      const e = err as { code?: number | string; killed?: boolean } | null;
      resolve({ code: !e ? 0 : e.killed ? -1 : typeof e.code === 'number' ? e.code : 1, stdout, stderr });
    });
  });
}

/** Every live descendant of `pid` (children first found through /proc/<pid>/stat's ppid). */
export function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] !== 'Z') parent.set(Number(d), Number(fields[1]));
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [c, pp] of parent) if (pp === p) {
      out.push(c);
      walk(c);
    }
  };
  walk(pid);
  return out;
}

/** A launcher's worker processes, with the client and function ids it gave them (their environment). */
export function workerProcesses(launcherPid: number): { pid: number; clientId: number; funcId: number }[] {
  return descendants(launcherPid).flatMap((pid) => {
    try {
      const env = Object.fromEntries(readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').map((kv) => kv.split('=', 2) as [string, string]));
      return env.FAAS_CLIENT_ID ? [{ pid, clientId: Number(env.FAAS_CLIENT_ID), funcId: Number(env.FAAS_FUNC_ID) }] : [];
    } catch {
      return [];
    }
  });
}

/** True while `pid` exists and is not a zombie. */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Calls `path` continuously on `concurrency` lanes until stop(), checking
 * every answer: stats.ok counts right answers, stats.bad describes the rest.
 * `pauseMs` spaces each lane's calls (a steady, low rate).
 */
export function loadLoop(port: number, path: string, input: (i: number) => string, expect: (i: number) => string, concurrency = 1, pauseMs = 0) {
  let stop = false;
  const stats = { ok: 0, bad: [] as string[] };
  const lane = async (k: number) => {
    for (let i = k; !stop; i += concurrency) {
      try {
        const r = await post(port, path, input(i));
        if (r.status === 200 && r.body.toString() === expect(i)) stats.ok++;
        else stats.bad.push(`#${i}: ${r.status} ${r.body.toString().slice(0, 80)}`);
      } catch (err) {
        stats.bad.push(`#${i}: ${(err as Error).message}`);
      }
      if (pauseMs > 0 && !stop) await new Promise((r) => setTimeout(r, pauseMs));
    }
  };
  const done = Promise.all(Array.from({ length: concurrency }, (_, k) => lane(k)));
  return { stats, stop: async () => { stop = true; await done; } };
}
