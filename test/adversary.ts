/**
 * Tools for tests that attack the cluster links: a real gateway process on
 * ports it picks itself, resource readings of a process (from /proc, and its
 * live memory over the V8 inspector), and raw engine peers that speak (or
 * mangle) the gateway link's handshake.
 */
import { type ChildProcess, execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import { newInstanceId, nonce, proof } from '../common/cluster-auth.js';
import {
  decodeAuthFrame, encodeAuthFrame, encodeEngineHandshake, encodeGatewayMessage, GatewayFrameReader, type GatewayMessage, MessageType,
} from '../proto/wire.js';
import { FIXTURE_CONFIG, startProcess, stopProcess } from './helpers.js';

const execFileP = promisify(execFile);

export const TOKEN = 'test-cluster-token-0123456789abcdef';

export interface GatewayProc {
  child: ChildProcess;
  pid: number;
  http: number;
  grpc: number;
  engine: number;
  control: number;
  stderr: () => string;
  stop(): Promise<void>;
}

/** `nightfuse gateway` on 127.0.0.1, every port picked by the gateway itself (no pick-then-bind race). */
export async function startGatewayProcess(flags: string[] = [], env: NodeJS.ProcessEnv = {}, config = FIXTURE_CONFIG): Promise<GatewayProc> {
  const { child, match, stderr } = await startProcess(
    ['gateway', '--listen_addr=127.0.0.1', '--http_port=0', '--grpc_port=0', '--engine_conn_port=0', '--control_port=0', `--func_config_file=${config}`, ...flags],
    /gateway ready http=\S+:(\d+) grpc=\S+:(\d+) engine=\S+:(\d+) control=\S+:(-?\d+)/, 30000, env,
  );
  const [http, grpc, engine, control] = match.slice(1, 5).map(Number);
  return { child, pid: child.pid!, http, grpc, engine, control, stderr, stop: () => stopProcess(child) };
}

/** Resident memory (KiB) and open descriptors of a process. */
export function usage(pid: number): { rssKiB: number; fds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return { rssKiB: rss, fds: readdirSync(`/proc/${pid}/fd`).length };
}

/** Resolves when the socket closes; `closedByPeer` tells whether the other side ended it. */
export function whenClosed(s: net.Socket, timeoutMs: number): Promise<{ closed: boolean; afterMs: number; data: Buffer }> {
  const started = Date.now();
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ closed: false, afterMs: Date.now() - started, data: Buffer.concat(chunks) });
    }, timeoutMs);
    s.once('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, afterMs: Date.now() - started, data: Buffer.concat(chunks) });
    });
    s.on('error', () => {});
  });
}

export function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Messages the gateway sent on `s` (parsed as gateway-link frames). */
export function frames(data: Buffer): GatewayMessage[] {
  try {
    return new GatewayFrameReader().feed(data);
  } catch {
    return [];
  }
}

/** The refusal reason the gateway sent, if it sent one. */
export function refusalOf(data: Buffer): string | undefined {
  for (const m of frames(data)) {
    const f = m.type === MessageType.HANDSHAKE_RESPONSE ? decodeAuthFrame(m) : undefined;
    if (f?.kind === 'refuse') return f.reason;
  }
  return undefined;
}

/**
 * An engine peer on the gateway link: authenticates with `token` (or sends
 * Nightcore's plain handshake when token is ''), then answers every DISPATCH
 * with `respond` — or, for rogues, whatever the test makes it send.
 */
export class EnginePeer {
  readonly socket: net.Socket;
  readonly received: GatewayMessage[] = [];
  readonly instance = newInstanceId();
  admitted = false;
  refusal: string | undefined;
  private readonly reader = new GatewayFrameReader();
  private ourNonce = nonce();
  readonly ready: Promise<boolean>;

  constructor(port: number, readonly nodeId: number, readonly token: string, readonly connId = 0,
    private readonly respond: ((m: GatewayMessage) => Buffer) | null = (m) => Buffer.concat([Buffer.from(`n${nodeId}:`), m.payload])) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.on('error', () => {});
    let settle!: (ok: boolean) => void;
    this.ready = new Promise((r) => (settle = r));
    this.socket.on('close', () => settle(false));
    this.socket.on('connect', () => {
      if (token) this.socket.write(encodeAuthFrame({ kind: 'hello', instance: this.instance, nonce: this.ourNonce }, nodeId, connId));
      else {
        this.socket.write(encodeEngineHandshake(nodeId, connId));
        this.admitted = true; // as far as a plain engine knows
        setTimeout(() => settle(!this.socket.destroyed), 300);
      }
    });
    this.socket.on('data', (d: Buffer) => {
      let msgs: GatewayMessage[];
      try {
        msgs = this.reader.feed(d);
      } catch {
        this.socket.destroy();
        return;
      }
      for (const m of msgs) {
        if (m.type === MessageType.HANDSHAKE_RESPONSE) {
          const f = decodeAuthFrame(m);
          if (f?.kind === 'challenge') {
            this.socket.write(encodeAuthFrame({ kind: 'proof', proof: proof(token, 'engine-node', [nodeId, connId, this.instance, this.ourNonce, f.nonce]) }));
          } else if (f?.kind === 'accept') {
            this.admitted = true;
            settle(true);
          } else if (f?.kind === 'refuse') {
            this.refusal = f.reason;
            settle(false);
          }
          continue;
        }
        this.received.push(m);
        if (m.type === MessageType.DISPATCH_FUNC_CALL && this.respond) this.complete(m.fullCallId, this.respond(m));
      }
    });
  }

  complete(fullCallId: bigint, payload: Buffer): void {
    this.socket.write(encodeGatewayMessage({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId, value: 1, payload }));
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * The V8 inspector's address of a process started with
 * NODE_OPTIONS=--inspect=127.0.0.1:0, from its stderr; read it right after the
 * start (node prints it first, and a long stderr is kept only by its tail).
 */
export function inspectorUrl(stderr: string): string {
  const url = /Debugger listening on (ws:\/\/\S+)/.exec(stderr)?.[1];
  if (!url) throw new Error(`no inspector address in the process's stderr (start it with NODE_OPTIONS=--inspect=127.0.0.1:0): ${stderr.slice(0, 500)}`);
  return url;
}

/**
 * What a process's JavaScript keeps alive: V8 heap and Buffer memory after two
 * full GCs, read over its inspector (see inspectorUrl). RSS cannot tell a leak
 * from V8 sizing its heap to the allocation rate; this can. The inspector is
 * driven from a short-lived node child because Node 20 has a WebSocket client
 * only behind a flag.
 */
export async function liveMemory(inspector: string): Promise<{ heapUsed: number; external: number }> {
  const { stdout } = await execFileP(process.execPath, ['--experimental-websocket', '--no-warnings', '--input-type=module', '-e', INSPECT_SCRIPT, inspector], { timeout: 15000 });
  const m = JSON.parse(stdout) as { heapUsed: number; external: number };
  return { heapUsed: m.heapUsed, external: m.external };
}

const INSPECT_SCRIPT = `
const ws = new WebSocket(process.argv[1]);
let next = 0;
const waiting = new Map();
const call = (method, params = {}) => new Promise((resolve, reject) => {
  const id = ++next;
  waiting.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params }));
});
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  const w = waiting.get(m.id);
  if (!w) return;
  waiting.delete(m.id);
  if (m.error) w.reject(new Error(m.error.message)); else w.resolve(m.result);
};
ws.onerror = () => { console.error('inspector connection failed'); process.exit(2); };
ws.onopen = async () => {
  // Two: the first may only schedule finalizers that free Buffers' backing stores.
  await call('HeapProfiler.collectGarbage');
  await call('HeapProfiler.collectGarbage');
  const r = await call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
  process.stdout.write(r.result.value);
  ws.close();
  process.exit(0);
};
`;
