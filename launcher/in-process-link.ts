/**
 * The gateway link when the gateway and the node agent share one process
 * (`nightfuse up` on one machine): DISPATCHes are function calls into the
 * agent and results function calls into the dispatcher, with no TCP hop, no
 * framing and no copy. No cluster authentication either: the peer is this
 * process. Everything else is as over TCP: the gateway sees one node with
 * `connections` connections (node view, identity rule, dispatch, its calls
 * failing when it goes); a connection the gateway drops (the node went silent
 * on the control plane, or reconnectAll) attaches again after a backoff.
 */
import type { EngineServer, LocalNodeHandle } from '../gateway/engine-server.js';
import type { Logger } from '../common/log.js';
import { type GatewayMessage, MessageType } from '../proto/wire.js';
import type { GatewayConn, NodeLink } from './gateway-link.js';

export interface InProcessLinkOptions {
  engines: EngineServer;
  nodeId: number;
  /** the launcher instance (hex), the same its control-plane stream proves */
  instance: string;
  connections: number;
  log: Logger;
  onDispatch(msg: GatewayMessage, conn: GatewayConn): void;
  /** a connection is up (GatewayLink's onConnected) */
  onConnected?(connId: number): void;
  reattachMs?: number;
}

class LocalConn implements GatewayConn {
  handle: LocalNodeHandle | undefined;
  timer: NodeJS.Timeout | undefined;
  constructor(readonly connId: number) {}
  get alive(): boolean {
    return this.handle?.alive ?? false;
  }
}

export class InProcessLink implements NodeLink {
  private readonly conns: LocalConn[] = [];
  private stopped = true;
  /** >0 while the agent runs a DISPATCH: a result given synchronously then waits for the dispatcher to record the call */
  private delivering = 0;

  constructor(private readonly o: InProcessLinkOptions) {
    for (let i = 0; i < o.connections; i++) this.conns.push(new LocalConn(i));
  }

  start(): void {
    this.stopped = false;
    for (const c of this.conns) this.attach(c);
  }

  private attach(c: LocalConn): void {
    if (this.stopped) return;
    const deliver = (fullCallId: bigint, input: Buffer) => {
      this.delivering++;
      try {
        this.o.onDispatch({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId, value: 0, payload: input }, c);
      } finally {
        this.delivering--;
      }
    };
    const onClose = () => {
      if (this.stopped) return;
      this.o.log.warn({ conn: c.connId }, 'the gateway dropped the in-process connection; attaching again');
      c.timer = setTimeout(() => this.attach(c), this.o.reattachMs ?? 50);
    };
    try {
      c.handle = this.o.engines.attachLocal(this.o.nodeId, c.connId, this.o.instance, deliver, onClose);
      this.o.onConnected?.(c.connId);
    } catch (err) {
      this.o.log.error({ conn: c.connId, err: (err as Error).message }, 'in-process gateway connection refused; retrying');
      c.timer = setTimeout(() => this.attach(c), 1000);
    }
  }

  sendResult(preferred: GatewayConn | undefined, type: MessageType, fullCallId: bigint, value: number, payload?: Buffer): boolean {
    const conn = preferred instanceof LocalConn && preferred.alive ? preferred : this.conns.find((c) => c.alive);
    if (!conn) return false;
    const m: GatewayMessage = { type, fullCallId, value, payload: payload ?? EMPTY };
    const h = conn.handle!;
    if (this.delivering > 0) queueMicrotask(() => h.result(m));
    else h.result(m);
    return true;
  }

  reconnectAll(why: string): void {
    for (const c of this.conns) {
      if (!c.alive) continue;
      this.o.log.warn({ conn: c.connId, why }, 'dropping the in-process gateway connection to attach again');
      c.handle!.detach(why);
      clearTimeout(c.timer);
      c.timer = setTimeout(() => this.attach(c), this.o.reattachMs ?? 50);
    }
  }

  stop(): void {
    this.stopped = true;
    for (const c of this.conns) {
      clearTimeout(c.timer);
      c.handle?.detach('node agent stopping');
    }
  }
}

const EMPTY = Buffer.alloc(0);
