/** Shared test helpers: free ports, HTTP calls, and whole stacks as real processes. */
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
export const CLI = join(ROOT, 'bin', 'nightfuse.js');
export const FIXTURE_CONFIG = join(ROOT, 'test', 'fixtures', 'func_config.json');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
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

/** Spawns `nightfuse <args>` and resolves when stdout matches `ready`. */
export function startProcess(args: string[], ready: RegExp, timeoutMs = 30000, env: NodeJS.ProcessEnv = {}): Promise<{ child: ChildProcess; match: RegExpExecArray; stderr: () => string }> {
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
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m, stderr: () => err });
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`nightfuse ${args[0]} exited (${sig ?? code}) before ready; stderr:\n${err.slice(-3000)}`));
    });
  });
}

export function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

export interface Stack {
  httpPort: number;
  grpcPort: number;
  enginePort: number;
  controlPort: number;
  ipcRoot: string;
  gateway: ChildProcess;
  launcher: ChildProcess;
  gatewayArgs: string[];
  launcherStderr: () => string;
  restartGateway(): Promise<void>;
  stop(): Promise<void>;
}

let stackSeq = 0;

/** A gateway and a launcher as separate processes on fresh ports and IPC root. */
export async function startStack(opts: { config?: string; gatewayFlags?: string[]; launcherFlags?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Stack> {
  const [httpPort, grpcPort, enginePort, controlPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const ipcRoot = `/dev/shm/nightfuse-test-${process.pid}-${stackSeq++}`;
  const config = opts.config ?? FIXTURE_CONFIG;
  const gatewayArgs = [
    'gateway', '--listen_addr=127.0.0.1', `--http_port=${httpPort}`, `--grpc_port=${grpcPort}`,
    `--engine_conn_port=${enginePort}`, `--control_port=${controlPort}`, `--func_config_file=${config}`,
    ...(opts.gatewayFlags ?? []),
  ];
  const gw = await startProcess(gatewayArgs, /gateway ready/, 30000, opts.env);
  const ln = await startProcess([
    'launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${enginePort}`, `--control_port=${controlPort}`,
    `--root_path_for_ipc=${ipcRoot}`, `--func_config_file=${config}`, ...(opts.launcherFlags ?? []),
  ], /launcher ready/, 30000, opts.env);
  const stack: Stack = {
    httpPort, grpcPort, enginePort, controlPort, ipcRoot, gateway: gw.child, launcher: ln.child, gatewayArgs,
    launcherStderr: ln.stderr,
    async restartGateway() {
      await stopProcess(stack.gateway);
      const again = await startProcess(gatewayArgs, /gateway ready/, 30000, opts.env);
      stack.gateway = again.child;
    },
    async stop() {
      await Promise.all([stopProcess(stack.launcher), stopProcess(stack.gateway)]);
    },
  };
  await waitFor(async () => (await request(httpPort, 'GET', '/metrics')).body.toString().includes('nightfuse_gateway_connected_nodes 1'), 10000, 'launcher connected to gateway');
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

/**
 * Calls `path` continuously on `concurrency` lanes until stop(), checking
 * every answer: stats.ok counts right answers, stats.bad describes the rest.
 */
export function loadLoop(port: number, path: string, input: (i: number) => string, expect: (i: number) => string, concurrency = 1) {
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
    }
  };
  const done = Promise.all(Array.from({ length: concurrency }, (_, k) => lane(k)));
  return { stats, stop: async () => { stop = true; await done; } };
}
