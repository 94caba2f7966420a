/**
 * The engine side of Nightcore's gateway link: N TCP connections to the
 * gateway, each opened with ENGINE_HANDSHAKE(node_id, conn_id). Unlike
 * Nightcore's engine (which connects once and never again), every connection
 * reconnects with capped exponential backoff when the gateway goes away.
 */
import net from 'node:net';
import {
  encodeEngineHandshake,
  encodeGatewayHeader,
  GatewayFrameReader,
  type GatewayMessage,
  MessageType,
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
}

class Conn implements GatewayConn {
  socket: net.Socket | null = null;
  alive = false;
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

  private connect(c: Conn): void {
    if (this.stopped) return;
    const { log } = this.opts;
    const socket = net.connect({ host: this.opts.host, port: this.opts.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 1000 });
    c.socket = socket;
    const reader = new GatewayFrameReader();
    socket.on('connect', () => {
      socket.write(encodeEngineHandshake(this.opts.nodeId, c.connId));
      c.alive = true;
      c.backoffMs = this.minBackoff;
      log.info({ conn: c.connId, gateway: `${this.opts.host}:${this.opts.port}` }, 'connected to gateway');
      this.opts.onConnected?.(c.connId);
    });
    socket.on('data', (chunk: Buffer) => {
      let msgs: GatewayMessage[];
      try {
        msgs = reader.feed(chunk);
      } catch (err) {
        log.error({ conn: c.connId, err: (err as Error).message }, 'malformed message from gateway; reconnecting');
        socket.destroy();
        return;
      }
      for (const m of msgs) {
        if (m.type === MessageType.DISPATCH_FUNC_CALL) this.opts.onDispatch(m, c);
        else log.warn({ conn: c.connId, type: m.type }, 'ignoring unexpected message type from gateway');
      }
    });
    socket.on('error', (err) => {
      if (c.alive) log.warn({ conn: c.connId, err: err.message }, 'gateway connection error');
    });
    socket.on('close', () => {
      const wasAlive = c.alive;
      c.alive = false;
      c.socket = null;
      if (this.stopped) return;
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
