/**
 * The engine side of Nightcore's gateway link: N TCP connections to the
 * gateway, each opened with ENGINE_HANDSHAKE(node_id, conn_id). Unlike
 * Nightcore's engine (which connects once and never again), every connection
 * reconnects with capped exponential backoff when the gateway goes away.
 *
 * With a cluster token the handshake carries Nightfuse's authentication
 * (proto/wire.ts): the gateway must prove the token before this side answers,
 * and the connection takes calls only once the gateway accepted it. Without a
 * token it is Nightcore's plain handshake, byte for byte, so a real Nightcore
 * gateway works.
 */
import net from 'node:net';
import { nonce, proof, proofMatches } from '../common/cluster-auth.js';
import { tuneLiveness } from '../common/tcp-liveness.js';
import {
  decodeAuthFrame,
  encodeAuthFrame,
  encodeEngineHandshake,
  encodeGatewayHeader,
  GatewayFrameReader,
  type GatewayMessage,
  MessageType,
  WireError,
  writeGatewayMessage,
} from '../proto/wire.js';
import type { Logger } from '../common/log.js';

export interface GatewayConn {
  readonly connId: number;
  readonly alive: boolean;
  write(header: Buffer, payload?: Buffer): boolean;
}

export interface GatewayLinkOptions {
  host: string;
  port: number;
  connections: number;
  nodeId: number;
  log: Logger;
  onDispatch(msg: GatewayMessage, conn: GatewayConn): void;
  onConnected?(connId: number): void;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** cluster token ('' or absent: Nightcore's plain handshake) */
  token?: string;
  /** this launcher process's identity (proto/wire.ts AUTH_HELLO) */
  instance?: Buffer;
  /** the gateway must have accepted the connection within this (ms) */
  authTimeoutMs?: number;
}

class Conn implements GatewayConn {
  socket: net.Socket | null = null;
  alive = false;
  upSince = 0;
  backoffMs: number;
  timer: NodeJS.Timeout | null = null;
  constructor(readonly connId: number, private readonly link: GatewayLink) {
    this.backoffMs = link.minBackoff;
  }
  write(header: Buffer, payload?: Buffer): boolean {
    if (!this.alive || !this.socket) return false;
    writeGatewayMessage(this.socket, header, payload);
    return true;
  }
}

export class GatewayLink {
  private readonly conns: Conn[] = [];
  private stopped = false;
  /** connections the gateway refused or that failed to authenticate, by reason */
  readonly refusals = new Map<string, number>();
  readonly minBackoff: number;
  private readonly maxBackoff: number;

  constructor(private readonly opts: GatewayLinkOptions) {
    this.minBackoff = opts.minBackoffMs ?? 50;
    this.maxBackoff = opts.maxBackoffMs ?? 2000;
    for (let i = 0; i < opts.connections; i++) this.conns.push(new Conn(i, this));
  }

  start(): void {
    for (const c of this.conns) this.connect(c);
  }

  /** Sends a result on `preferred` if it is up, else on any live connection (the gateway matches by call id). */
  sendResult(preferred: GatewayConn | undefined, type: MessageType, fullCallId: bigint, value: number, payload?: Buffer): boolean {
    const header = encodeGatewayHeader(type, fullCallId, payload?.length ?? 0, value);
    const conn = preferred?.alive ? preferred : this.conns.find((c) => c.alive);
    if (!conn) return false;
    return conn.write(header, payload);
  }

  get connectedCount(): number {
    return this.conns.filter((c) => c.alive).length;
  }

  /** Drops every connection and reconnects (the gateway went silent on the control plane). */
  reconnectAll(why: string): void {
    for (const c of this.conns) {
      if (c.socket) {
        this.opts.log.warn({ conn: c.connId, why }, 'dropping the gateway connection to reconnect');
        c.socket.destroy();
      }
    }
  }

  private refused(c: Conn, reason: string, message: string): void {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
    c.backoffMs = Math.max(c.backoffMs, 1000); // a refusal does not go away in milliseconds
    this.opts.log.error({ conn: c.connId, gateway: `${this.opts.host}:${this.opts.port}`, reason }, `gateway link not admitted: ${message}`);
    c.socket?.destroy();
  }

  private connect(c: Conn): void {
    if (this.stopped) return;
    const { log } = this.opts;
    const token = this.opts.token ?? '';
    const socket = net.connect({ host: this.opts.host, port: this.opts.port, noDelay: true });
    c.socket = socket;
    const reader = new GatewayFrameReader();
    let ourNonce: Buffer | undefined;
    let authTimer: NodeJS.Timeout | undefined;
    const up = () => {
      clearTimeout(authTimer);
      c.alive = true;
      c.upSince = Date.now();
      log.info({ conn: c.connId, gateway: `${this.opts.host}:${this.opts.port}`, authenticated: Boolean(token) }, 'connected to gateway');
      this.opts.onConnected?.(c.connId);
    };
    socket.on('connect', () => {
      tuneLiveness(socket);
      if (!token) {
        socket.write(encodeEngineHandshake(this.opts.nodeId, c.connId));
        up();
        return;
      }
      ourNonce = nonce();
      socket.write(encodeAuthFrame({ kind: 'hello', instance: this.opts.instance!, nonce: ourNonce }, this.opts.nodeId, c.connId));
      authTimer = setTimeout(() => this.refused(c, 'timeout', `no answer to the authentication within ${this.opts.authTimeoutMs ?? 5000} ms`),
        this.opts.authTimeoutMs ?? 5000);
    });
    // One handshake step from the gateway (before admission, or a refusal at any time).
    const onAuth = (m: GatewayMessage): boolean => {
      const step = decodeAuthFrame(m);
      if (step?.kind === 'refuse') {
        this.refused(c, 'refused', step.reason);
        return false;
      }
      if (c.alive || !token) throw new WireError(`unexpected authentication step ${step?.kind ?? m.type}`);
      if (step?.kind === 'challenge' && ourNonce) {
        const expected = proof(token, 'engine-gateway', [this.opts.nodeId, c.connId, this.opts.instance!, ourNonce, step.nonce]);
        if (!proofMatches(expected, step.proof)) {
          this.refused(c, 'bad_gateway_proof', 'the gateway could not prove the cluster token (is it the same on both sides?)');
          return false;
        }
        socket.write(encodeAuthFrame({ kind: 'proof', proof: proof(token, 'engine-node', [this.opts.nodeId, c.connId, this.opts.instance!, ourNonce, step.nonce]) }));
        ourNonce = undefined;
        return true;
      }
      if (step?.kind === 'accept' && !ourNonce) {
        up();
        return true;
      }
      throw new WireError(`authentication step ${step?.kind ?? m.type} out of order`);
    };
    socket.on('data', (chunk: Buffer) => {
      let msgs: GatewayMessage[];
      try {
        msgs = reader.feed(chunk);
        for (const m of msgs) {
          if (m.type === MessageType.DISPATCH_FUNC_CALL && c.alive) this.opts.onDispatch(m, c);
          else if (m.type === MessageType.HANDSHAKE_RESPONSE) {
            if (!onAuth(m)) return;
          } else log.warn({ conn: c.connId, type: m.type }, 'ignoring unexpected message type from gateway');
        }
      } catch (err) {
        log.error({ conn: c.connId, err: (err as Error).message }, 'malformed message from gateway; reconnecting');
        socket.destroy();
      }
    });
    socket.on('error', (err) => {
      if (c.alive) log.warn({ conn: c.connId, err: err.message }, 'gateway connection error');
    });
    socket.on('close', () => {
      clearTimeout(authTimer);
      const wasAlive = c.alive;
      c.alive = false;
      c.socket = null;
      if (this.stopped) return;
      // A connection that held for a while was a good one: reconnect quickly. One
      // that ends at once (refused, even after a plain handshake) backs off.
      if (wasAlive && Date.now() - c.upSince > 5000) c.backoffMs = this.minBackoff;
      if (wasAlive) log.warn({ conn: c.connId }, 'gateway connection closed; reconnecting');
      c.timer = setTimeout(() => this.connect(c), c.backoffMs);
      c.backoffMs = Math.min(this.maxBackoff, c.backoffMs * 2);
    });
  }

  stop(): void {
    this.stopped = true;
    for (const c of this.conns) {
      if (c.timer) clearTimeout(c.timer);
      c.socket?.destroy();
      c.alive = false;
    }
  }
}
