/**
 * The gateway's engine listener (Nightcore's gateway<->engine protocol, spec §4):
 * engines (our launchers, or Nightcore's own engine) connect, send
 * ENGINE_HANDSHAKE(node_id, conn_id), then exchange DISPATCH / COMPLETE /
 * FAILED. All connections of one node form one Node; a result may arrive on
 * any of them, but only on them.
 *
 * Admission (docs/SECURITY.md): with a cluster token, a connection must prove
 * it (proto/wire.ts, "cluster authentication") before it can register a node,
 * receive a call or answer one; a plain ENGINE_HANDSHAKE — a real Nightcore
 * engine — is admitted only from --plain_engine_allow addresses. Without a
 * token every handshake is admitted (the gateway then listens on loopback
 * only, unless --insecure_cluster). Before it is admitted a peer may send at
 * most one tiny frame at a time and must finish within --cluster_auth_timeout_ms.
 *
 * One node, one identity: a node id registered by one live launcher instance
 * (or, for plain engines, one address) is refused to any other until every
 * connection of the first has closed.
 *
 * Differences from Nightcore, on purpose: a node whose last connection closes
 * is removed and its in-flight calls fail at once (Nightcore keeps the node
 * forever and lets those calls hang); a malformed frame closes only that
 * connection.
 */
import net from 'node:net';
import { type AddressAllowList, nonce, proof, proofMatches } from '../common/cluster-auth.js';
import type { Logger } from '../common/log.js';
import { tuneLiveness } from '../common/tcp-liveness.js';
import {
  decodeAuthFrame, encodeAuthFrame, encodeGatewayHeader, ENGINE_TO_GATEWAY, GatewayFrameReader, type GatewayMessage, MAX_UNAUTHENTICATED_PAYLOAD,
  MessageType, WireError, writeGatewayMessage,
} from '../proto/wire.js';

/** How DISPATCHes reach an engine: its TCP connection, or a node agent in this very process (`nightfuse up`). */
export interface EngineTransport {
  dispatch(fullCallId: bigint, input: Buffer): void;
  close(): void;
}

function tcpTransport(socket: net.Socket): EngineTransport {
  return {
    dispatch: (id, input) => writeGatewayMessage(socket, encodeGatewayHeader(MessageType.DISPATCH_FUNC_CALL, id, input.length), input),
    close: () => socket.destroy(),
  };
}

export class EngineConn {
  constructor(readonly transport: EngineTransport, readonly nodeId: number, readonly connId: number, readonly instance: string) {}
}

/** The gateway's side of an in-process node (launcher/in-process-link.ts): results go straight to the dispatcher. */
export interface LocalNodeHandle {
  readonly alive: boolean;
  /** a FUNC_CALL_COMPLETE / FUNC_CALL_FAILED from the node */
  result(m: GatewayMessage): void;
  detach(reason: string): void;
}

export class Node {
  readonly conns: EngineConn[] = [];
  inflight = 0;
  private rr = 0;
  dispatched = 0;
  /** the launcher said it is leaving: no new calls, its calls in flight may finish */
  draining = false;
  constructor(readonly nodeId: number, readonly instance: string, readonly authenticated: boolean, readonly address: string, readonly connectedAt: number) {}
  /** Round-robin over the node's connections. */
  pickConn(): EngineConn | undefined {
    if (this.conns.length === 0) return undefined;
    this.rr = (this.rr + 1) % this.conns.length;
    return this.conns[this.rr];
  }
}

export interface EngineServerEvents {
  onResult(node: Node, msg: GatewayMessage): void;
  onNodeUp(node: Node): void;
  onNodeDown(node: Node, reason: string): void;
}

export interface EngineServerOptions {
  log: Logger;
  events: EngineServerEvents;
  /** largest message an admitted engine may send */
  maxPayload: number;
  /** cluster token; '' = none (every handshake admitted) */
  token: string;
  /** addresses admitted without proof (real Nightcore engines) when a token is set */
  plainAllow: AddressAllowList;
  authTimeoutMs: number;
  /** connections not yet admitted, at most (more are closed at once) */
  maxPendingConns?: number;
}

/** Why connections were refused, for metrics (nightfuse_cluster_auth_failures_total). */
export type RefusalReason = 'bad_proof' | 'no_token' | 'token_not_configured' | 'duplicate_node' | 'timeout' | 'malformed' | 'too_many_pending'
  /** closed by the peer after our challenge: typically a launcher with another token, which checks our proof first */
  | 'abandoned';

export class EngineServer {
  /** connected nodes in the order they first connected */
  readonly nodes = new Map<number, Node>();
  readonly refusals = new Map<RefusalReason, number>();
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private pending = 0;
  /** connections accepted, refused ones included (work done: common/idle-trim.ts) */
  accepted = 0;
  private readonly refused = new WeakSet<net.Socket>();
  private readonly log: Logger;

  constructor(private readonly o: EngineServerOptions) {
    this.log = o.log;
  }

  listen(host: string, port: number): Promise<number> {
    this.server = net.createServer({ noDelay: true }, (s) => this.onConnection(s));
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen({ host, port, backlog: 511 }, () => resolve((this.server!.address() as net.AddressInfo).port));
    });
  }

  private refuse(socket: net.Socket, reason: RefusalReason, message: string, fields: Record<string, unknown>): void {
    if (this.refused.has(socket)) return;
    this.refused.add(socket);
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
    this.log.warn({ ...fields, reason }, `engine connection refused: ${message}`);
    if (socket.writable && reason !== 'timeout' && reason !== 'too_many_pending') socket.end(encodeAuthFrame({ kind: 'refuse', reason: message }));
    socket.destroySoon();
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  private onConnection(socket: net.Socket): void {
    this.accepted++;
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.pending >= (this.o.maxPendingConns ?? 256)) {
      this.refusals.set('too_many_pending', (this.refusals.get('too_many_pending') ?? 0) + 1);
      this.log.warn({ peer }, 'too many engine connections waiting to authenticate; closing');
      socket.destroy();
      return;
    }
    this.pending++;
    let admitted = false;
    const settlePending = () => {
      if (!admitted) {
        admitted = true;
        this.pending--;
      }
    };
    socket.setNoDelay(true);
    tuneLiveness(socket);
    this.sockets.add(socket);
    const reader = new GatewayFrameReader(MAX_UNAUTHENTICATED_PAYLOAD, ENGINE_TO_GATEWAY);
    let conn: EngineConn | undefined;
    let challenge: { nodeId: number; connId: number; instance: Buffer; nonce: Buffer; ourNonce: Buffer } | undefined;
    const deadline = setTimeout(() => {
      if (!conn) this.refuse(socket, 'timeout', `no complete handshake within ${this.o.authTimeoutMs} ms`, { peer });
    }, this.o.authTimeoutMs);
    deadline.unref();
    const admit = (nodeId: number, connId: number, instance: string, authenticated: boolean): boolean => {
      const c = new EngineConn(tcpTransport(socket), nodeId, connId, instance);
      const why = this.addConn(c, authenticated, socket.remoteAddress ?? '');
      if (why) {
        this.refuse(socket, 'duplicate_node', why, { peer, node: nodeId });
        return false;
      }
      conn = c;
      clearTimeout(deadline);
      settlePending();
      reader.maxPayload = this.o.maxPayload;
      return true;
    };
    const onHandshakeStep = (m: GatewayMessage): boolean => {
      const step = decodeAuthFrame(m);
      if (!challenge) {
        if (m.type !== MessageType.ENGINE_HANDSHAKE) {
          this.refuse(socket, 'malformed', 'the connection did not start with ENGINE_HANDSHAKE', { peer, type: m.type });
          return false;
        }
        if (!step) {
          // A plain Nightcore handshake: it cannot prove anything.
          if (this.o.token && !this.o.plainAllow.allows(socket.remoteAddress)) {
            this.refuse(socket, 'no_token', 'this gateway requires the cluster token (give the launcher --cluster_token or --cluster_token_file); ' +
              'real Nightcore engines are admitted only from --plain_engine_allow addresses', { peer, node: m.nodeId });
            return false;
          }
          return admit(m.nodeId!, m.connId!, `plain@${socket.remoteAddress}`, false);
        }
        if (step.kind !== 'hello') throw new WireError(`expected an auth hello, got ${step.kind}`);
        if (!this.o.token) {
          this.refuse(socket, 'token_not_configured', 'this gateway has no cluster token: start it with the same --cluster_token as the launcher', { peer, node: m.nodeId });
          return false;
        }
        const ourNonce = nonce();
        challenge = { nodeId: m.nodeId!, connId: m.connId!, instance: step.instance, nonce: step.nonce, ourNonce };
        const gwProof = proof(this.o.token, 'engine-gateway', [challenge.nodeId, challenge.connId, step.instance, step.nonce, ourNonce]);
        socket.write(encodeAuthFrame({ kind: 'challenge', nonce: ourNonce, proof: gwProof }));
        return true;
      }
      if (!step || step.kind !== 'proof') throw new WireError('expected the launcher\'s auth proof');
      const c = challenge;
      const expected = proof(this.o.token, 'engine-node', [c.nodeId, c.connId, c.instance, c.nonce, c.ourNonce]);
      if (!proofMatches(expected, step.proof)) {
        this.refuse(socket, 'bad_proof', 'wrong cluster token', { peer, node: c.nodeId });
        return false;
      }
      if (!admit(c.nodeId, c.connId, c.instance.toString('hex'), true)) return false;
      socket.write(encodeAuthFrame({ kind: 'accept' }));
      return true;
    };
    socket.on('data', (chunk: Buffer) => {
      let msgs: GatewayMessage[];
      try {
        msgs = reader.feed(chunk);
      } catch (err) {
        if (conn) this.log.warn({ peer, node: conn.nodeId, err: (err as Error).message }, 'malformed engine message; closing the connection');
        else this.refuse(socket, 'malformed', (err as Error).message, { peer });
        socket.destroy();
        return;
      }
      for (let i = 0; i < msgs.length; i++) {
        const m = msgs[i];
        if (!conn) {
          try {
            if (!onHandshakeStep(m)) return;
          } catch (err) {
            this.refuse(socket, 'malformed', (err as Error).message, { peer });
            return;
          }
          // Nothing may follow a step before the gateway has answered it: a pipelined
          // frame would be read with the pre-admission size limit, or before the proof.
          if (!conn && i + 1 < msgs.length) {
            this.refuse(socket, 'malformed', 'sent more before the handshake was answered', { peer });
            return;
          }
          continue;
        }
        if (m.type === MessageType.FUNC_CALL_COMPLETE || m.type === MessageType.FUNC_CALL_FAILED) {
          const node = this.nodes.get(conn.nodeId);
          if (node && node.conns.includes(conn)) this.o.events.onResult(node, m);
        } else {
          this.log.warn({ node: conn.nodeId, type: m.type }, 'ignoring unexpected message from engine');
        }
      }
    });
    socket.on('error', (err) => this.log.debug({ peer, err: err.message }, 'engine connection error'));
    socket.on('close', () => {
      clearTimeout(deadline);
      if (!admitted && challenge && !this.refused.has(socket)) this.refusals.set('abandoned', (this.refusals.get('abandoned') ?? 0) + 1);
      settlePending();
      this.sockets.delete(socket);
      if (conn) this.removeConn(conn, 'connection closed');
    });
  }

  /** Registers a connection; returns why it is refused, if it is. */
  private addConn(c: EngineConn, authenticated: boolean, address: string): string | undefined {
    let node = this.nodes.get(c.nodeId);
    if (node && node.instance !== c.instance) {
      return `node id ${c.nodeId} is already registered by another live ${node.authenticated ? 'launcher' : 'engine'} ` +
        `(from ${node.address}, since ${new Date(node.connectedAt).toISOString()}); give each node its own --node_id`;
    }
    const isNew = !node;
    if (!node) {
      node = new Node(c.nodeId, c.instance, authenticated, address, Date.now());
      this.nodes.set(c.nodeId, node);
    }
    // The same launcher reconnecting a connection the gateway has not yet seen die: the new one wins.
    const stale = node.conns.find((x) => x.connId === c.connId);
    if (stale) {
      node.conns.splice(node.conns.indexOf(stale), 1);
      stale.transport.close();
    }
    node.conns.push(c);
    this.log.info({ node: c.nodeId, conn: c.connId, conns: node.conns.length, authenticated }, 'engine connection up');
    if (isNew) this.o.events.onNodeUp(node);
    return undefined;
  }

  private removeConn(c: EngineConn, reason: string): void {
    const node = this.nodes.get(c.nodeId);
    if (!node) return;
    const i = node.conns.indexOf(c);
    if (i < 0) return;
    node.conns.splice(i, 1);
    this.log.warn({ node: c.nodeId, conn: c.connId, conns: node.conns.length, reason }, 'engine connection closed');
    if (node.conns.length === 0) {
      this.nodes.delete(c.nodeId);
      this.o.events.onNodeDown(node, reason);
    }
  }

  /**
   * Gives up on a node (it went silent, or left): out of dispatch at once, its
   * calls in flight fail, its connections close; it may register again.
   */
  dropNode(nodeId: number, reason: string, instance?: string): void {
    const node = this.nodes.get(nodeId);
    if (!node || (instance !== undefined && node.instance !== instance)) return;
    this.nodes.delete(nodeId);
    this.log.warn({ node: nodeId, reason }, 'node dropped');
    for (const c of node.conns.splice(0)) c.transport.close();
    this.o.events.onNodeDown(node, reason);
  }

  /** Writes a DISPATCH on one of the node's connections; false if it has none. */
  dispatch(node: Node, fullCallId: bigint, input: Buffer): boolean {
    const c = node.pickConn();
    if (!c) return false;
    c.transport.dispatch(fullCallId, input);
    return true;
  }

  /**
   * Registers a connection of a node agent running in this process (no
   * socket, no handshake: it is us). It is one node like any other (node view,
   * identity rule, dispatch, failure when it goes), authenticated as the
   * launcher instance whose control-plane stream it shares.
   */
  attachLocal(nodeId: number, connId: number, instance: string, deliver: (fullCallId: bigint, input: Buffer) => void, onClose: () => void): LocalNodeHandle {
    let alive = true;
    const close = () => {
      if (!alive) return;
      alive = false;
      onClose();
    };
    const c = new EngineConn({ dispatch: deliver, close }, nodeId, connId, instance);
    const why = this.addConn(c, true, 'in-process');
    if (why) throw new Error(`in-process node agent refused: ${why}`);
    return {
      get alive() {
        return alive;
      },
      result: (m) => {
        const node = this.nodes.get(nodeId);
        if (alive && node && node.conns.includes(c)) this.o.events.onResult(node, m);
      },
      detach: (reason) => {
        if (!alive) return;
        alive = false;
        this.removeConn(c, reason);
      },
    };
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

export { WireError };
