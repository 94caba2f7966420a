/**
 * The gateway's engine listener (Nightcore's gateway<->engine protocol, spec §4):
 * engines (our launchers, or Nightcore's own engine) connect, send
 * ENGINE_HANDSHAKE(node_id, conn_id), then exchange DISPATCH / COMPLETE /
 * FAILED. All connections with the same node_id form one node; a result may
 * arrive on any of them.
 *
 * Differences from Nightcore, on purpose: a node whose last connection closes
 * is removed and its in-flight calls fail at once (Nightcore keeps the node
 * forever and lets those calls hang); a malformed frame closes only that
 * connection.
 */
import net from 'node:net';
import type { Logger } from '../common/log.js';
import { encodeGatewayHeader, ENGINE_TO_GATEWAY, GatewayFrameReader, type GatewayMessage, MessageType, WireError, writeGatewayMessage } from '../proto/wire.js';

export class EngineConn {
  constructor(readonly socket: net.Socket, readonly nodeId: number, readonly connId: number) {}
}

export class Node {
  readonly conns: EngineConn[] = [];
  inflight = 0;
  private rr = 0;
  dispatched = 0;
  constructor(readonly nodeId: number, readonly connectedAt: number) {}
  /** Round-robin over the node's connections. */
  pickConn(): EngineConn | undefined {
    if (this.conns.length === 0) return undefined;
    this.rr = (this.rr + 1) % this.conns.length;
    return this.conns[this.rr];
  }
}

export interface EngineServerEvents {
  onResult(nodeId: number, msg: GatewayMessage): void;
  onNodeUp(node: Node): void;
  onNodeDown(node: Node): void;
}

export class EngineServer {
  /** connected nodes in the order they first connected */
  readonly nodes = new Map<number, Node>();
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly log: Logger, private readonly events: EngineServerEvents, private readonly maxPayload: number) {}

  listen(host: string, port: number): Promise<number> {
    this.server = net.createServer({ noDelay: true }, (s) => this.onConnection(s));
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen({ host, port, backlog: 64 }, () => resolve((this.server!.address() as net.AddressInfo).port));
    });
  }

  private onConnection(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 1000);
    this.sockets.add(socket);
    const reader = new GatewayFrameReader(this.maxPayload, ENGINE_TO_GATEWAY);
    let conn: EngineConn | undefined;
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.on('data', (chunk: Buffer) => {
      let msgs: GatewayMessage[];
      try {
        msgs = reader.feed(chunk);
      } catch (err) {
        this.log.warn({ peer, err: (err as Error).message }, 'malformed engine message; closing the connection');
        socket.destroy();
        return;
      }
      for (const m of msgs) {
        if (!conn) {
          if (m.type !== MessageType.ENGINE_HANDSHAKE) {
            this.log.warn({ peer, type: m.type }, 'engine connection did not start with ENGINE_HANDSHAKE; closing');
            socket.destroy();
            return;
          }
          conn = new EngineConn(socket, m.nodeId!, m.connId!);
          this.addConn(conn);
          continue;
        }
        if (m.type === MessageType.FUNC_CALL_COMPLETE || m.type === MessageType.FUNC_CALL_FAILED) {
          this.events.onResult(conn.nodeId, m);
        } else {
          this.log.warn({ node: conn.nodeId, type: m.type }, 'ignoring unexpected message from engine');
        }
      }
    });
    socket.on('error', (err) => this.log.debug({ peer, err: err.message }, 'engine connection error'));
    socket.on('close', () => {
      this.sockets.delete(socket);
      if (conn) this.removeConn(conn);
    });
  }

  private addConn(c: EngineConn): void {
    let node = this.nodes.get(c.nodeId);
    const isNew = !node;
    if (!node) {
      node = new Node(c.nodeId, Date.now());
      this.nodes.set(c.nodeId, node);
    }
    node.conns.push(c);
    this.log.info({ node: c.nodeId, conn: c.connId, conns: node.conns.length }, 'engine connection up');
    if (isNew) this.events.onNodeUp(node);
  }

  private removeConn(c: EngineConn): void {
    const node = this.nodes.get(c.nodeId);
    if (!node) return;
    const i = node.conns.indexOf(c);
    if (i >= 0) node.conns.splice(i, 1);
    this.log.warn({ node: c.nodeId, conn: c.connId, conns: node.conns.length }, 'engine connection closed');
    if (node.conns.length === 0) {
      this.nodes.delete(c.nodeId);
      this.events.onNodeDown(node);
    }
  }

  /** Writes a DISPATCH on one of the node's connections; false if it has none. */
  dispatch(node: Node, fullCallId: bigint, input: Buffer): boolean {
    const c = node.pickConn();
    if (!c) return false;
    writeGatewayMessage(c.socket, encodeGatewayHeader(MessageType.DISPATCH_FUNC_CALL, fullCallId, input.length), input);
    return true;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

export { WireError };
