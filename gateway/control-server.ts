/**
 * The gateway's end of the control plane: accepts launchers' Attach streams,
 * keeps each node's latest report (the cluster-wide view and call graph), and
 * can push commands to a node and await its CommandResult.
 *
 * Trust (docs/SECURITY.md): nothing a stream sends is believed before it has
 * answered the gateway's challenge (with a cluster token: an HMAC over both
 * nonces; the gateway proves itself back in Welcome). One stream registers one
 * node; a node id attached by one live launcher instance is refused to any
 * other; a stream that ends removes exactly its node; a command's result is
 * accepted only from the stream it was sent on. Both sides send heartbeats; a
 * node silent for --node_silence_ms is given up on (its engine link too).
 */
import * as grpc from '@grpc/grpc-js';
import { nonce, proof, proofMatches, INSTANCE_BYTES } from '../common/cluster-auth.js';
import type { Logger } from '../common/log.js';
import { randomInt } from 'node:crypto';
import {
  ControlPlaneService, type CommandResult, type GatewayCommand, type Hello, type MergeEventMsg, type NodeReport, type Stats,
} from '../proto/control.js';

type Stream = grpc.ServerDuplexStream<NodeReport, GatewayCommand>;

export interface AttachedNode {
  hello: Hello;
  /** hex of the launcher's instance id ('' without a token and without one sent) */
  instance: string;
  stats: Stats | undefined;
  attachedAt: number;
  lastSeen: number;
  draining: boolean;
  stream: Stream;
  /** commands sent on this stream, awaiting their result */
  readonly pending: Map<number, (r: CommandResult) => void>;
}

export interface ControlServerOptions {
  log: Logger;
  /** '' = no token: hellos are believed as they are (loopback or --insecure_cluster) */
  token: string;
  authTimeoutMs: number;
  /** a node silent this long is given up on; 0 = never */
  silenceMs: number;
  /** who holds a node id on the engine link, to keep one identity per node */
  engineInstance?: (nodeId: number) => { instance: string; authenticated: boolean } | undefined;
  /** streams waiting to authenticate, at most */
  maxPendingStreams?: number;
}

/** Why streams were refused, for metrics (nightfuse_cluster_auth_failures_total{link="control"}). */
export type ControlRefusal = 'bad_proof' | 'no_token' | 'duplicate_node' | 'timeout' | 'protocol' | 'too_many_pending';

export class ControlServer {
  readonly nodes = new Map<number, AttachedNode>();
  readonly refusals = new Map<ControlRefusal, number>();
  private readonly server: grpc.Server;
  private pendingStreams = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly log: Logger;
  /** called when a node has attached (push it the policy and the desired merges) */
  onAttach: ((n: AttachedNode) => void) | undefined;
  onDetach: ((n: AttachedNode, reason: string) => void) | undefined;
  onMergeEvent: ((nodeId: number, e: MergeEventMsg) => void) | undefined;
  /** the launcher announced it is leaving */
  onDrain: ((n: AttachedNode) => void) | undefined;
  /** the node said nothing for silenceMs */
  onSilent: ((n: AttachedNode) => void) | undefined;

  constructor(private readonly o: ControlServerOptions) {
    this.log = o.log;
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': 4 << 20,
      'grpc.max_concurrent_streams': 4,
      // A connection with no stream (one that never opened one, or whose stream was refused) is closed.
      'grpc.max_connection_idle_ms': Math.max(1000, o.authTimeoutMs * 2),
      'grpc-node.max_session_memory': 8,
    });
    this.server.addService(ControlPlaneService, { Attach: (s: Stream) => this.attach(s) });
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => {
        if (err) return reject(err);
        if (this.o.silenceMs > 0) {
          const every = Math.max(50, Math.floor(this.o.silenceMs / 4));
          this.heartbeat = setInterval(() => this.beat(), every);
          this.heartbeat.unref();
        }
        resolve(p);
      });
    });
  }

  private beat(): void {
    const now = Date.now();
    for (const n of [...this.nodes.values()]) {
      if (now - n.lastSeen > this.o.silenceMs) {
        this.log.warn({ node: n.hello.node_id, silentMs: now - n.lastSeen }, 'launcher silent on the control plane; giving up on the node');
        this.detach(n, `silent for ${now - n.lastSeen} ms`, grpc.status.UNAVAILABLE);
        this.onSilent?.(n);
        continue;
      }
      n.stream.write({ command_id: 0, heartbeat: { at_ms: now } });
    }
  }

  private refuse(stream: Stream, reason: ControlRefusal, message: string, code: grpc.status, fields: Record<string, unknown> = {}): void {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
    this.log.warn({ ...fields, peer: stream.getPeer(), reason }, `control-plane stream refused: ${message}`);
    stream.emit('error', { code, details: message });
  }

  private attach(stream: Stream): void {
    stream.on('error', () => {});
    if (this.pendingStreams >= (this.o.maxPendingStreams ?? 64)) {
      this.refuse(stream, 'too_many_pending', 'too many control-plane streams waiting to authenticate', grpc.status.RESOURCE_EXHAUSTED);
      return;
    }
    this.pendingStreams++;
    let pending = true;
    const unpend = () => {
      if (pending) {
        pending = false;
        this.pendingStreams--;
      }
    };
    const ourNonce = nonce();
    let node: AttachedNode | undefined;
    const deadline = setTimeout(() => {
      if (!node) this.refuse(stream, 'timeout', `no hello within ${this.o.authTimeoutMs} ms`, grpc.status.UNAUTHENTICATED);
    }, this.o.authTimeoutMs);
    deadline.unref();
    stream.write({ command_id: 0, challenge: { nonce: ourNonce } });

    stream.on('data', (r: NodeReport) => {
      if (!node) {
        clearTimeout(deadline);
        unpend();
        node = this.onHello(stream, r, ourNonce);
        return;
      }
      if (this.nodes.get(node.hello.node_id) !== node) return; // replaced or dropped: nothing it says counts
      node.lastSeen = Date.now();
      if (r.hello) {
        this.refuse(stream, 'protocol', 'a stream registers one node, once', grpc.status.FAILED_PRECONDITION, { node: node.hello.node_id });
        this.detach(node, 'second hello on the stream');
        return;
      }
      if (r.stats) node.stats = r.stats;
      if (r.merge_event) this.onMergeEvent?.(node.hello.node_id, r.merge_event);
      if (r.command_result) {
        const w = node.pending.get(r.command_result.command_id);
        if (w) {
          node.pending.delete(r.command_result.command_id);
          w(r.command_result);
        }
      }
      if (r.drain && !node.draining) {
        node.draining = true;
        this.log.info({ node: node.hello.node_id, reason: r.drain.reason }, 'launcher is draining: no new calls go to it');
        this.onDrain?.(node);
      }
    });
    const gone = (why: string) => {
      clearTimeout(deadline);
      unpend();
      if (node) this.detach(node, why);
    };
    stream.on('end', () => {
      gone('stream ended');
      stream.end();
    });
    stream.on('error', (e: Error) => gone(e.message));
    stream.on('close', () => gone('stream closed'));
  }

  /** Checks a hello; returns the registered node, or undefined after refusing the stream. */
  private onHello(stream: Stream, r: NodeReport, ourNonce: Buffer): AttachedNode | undefined {
    const h = r.hello;
    if (!h) {
      this.refuse(stream, 'protocol', 'the first report must be a hello', grpc.status.UNAUTHENTICATED);
      return undefined;
    }
    const instance = Buffer.from(h.instance_id ?? []);
    const theirNonce = Buffer.from(h.nonce ?? []);
    if (this.o.token) {
      if (!h.proof || h.proof.length === 0) {
        this.refuse(stream, 'no_token', 'this gateway requires the cluster token (give the launcher --cluster_token or --cluster_token_file)',
          grpc.status.UNAUTHENTICATED, { node: h.node_id });
        return undefined;
      }
      const expected = proof(this.o.token, 'control-node', [h.node_id, instance, theirNonce, ourNonce]);
      if (instance.length !== INSTANCE_BYTES || theirNonce.length !== ourNonce.length || !proofMatches(expected, h.proof)) {
        this.refuse(stream, 'bad_proof', 'wrong cluster token', grpc.status.UNAUTHENTICATED, { node: h.node_id });
        return undefined;
      }
    }
    const id = h.node_id;
    const inst = instance.toString('hex');
    const existing = this.nodes.get(id);
    if (existing && existing.instance !== inst) {
      this.refuse(stream, 'duplicate_node', `node id ${id} is already attached by another live launcher ` +
        `(${existing.hello.hostname}, pid ${existing.hello.pid}); give each node its own --node_id`, grpc.status.ALREADY_EXISTS, { node: id });
      return undefined;
    }
    const engine = this.o.engineInstance?.(id);
    if (engine && engine.authenticated && inst && engine.instance !== inst) {
      this.refuse(stream, 'duplicate_node', `node id ${id} is registered on the engine link by another launcher instance`, grpc.status.ALREADY_EXISTS, { node: id });
      return undefined;
    }
    if (existing) this.detach(existing, 'replaced by a new stream of the same launcher');
    const n: AttachedNode = {
      hello: { ...h, proof: undefined, nonce: undefined, stats: undefined }, instance: inst, stats: h.stats ?? undefined, attachedAt: Date.now(), lastSeen: Date.now(),
      draining: false, stream, pending: new Map(),
    };
    this.nodes.set(id, n);
    const welcome = this.o.token ? proof(this.o.token, 'control-gateway', [id, instance, theirNonce, ourNonce]) : Buffer.alloc(0);
    stream.write({ command_id: 0, welcome: { proof: welcome, silence_ms: this.o.silenceMs } });
    this.log.info({ node: id, host: h.hostname, functions: h.functions.length, authenticated: Boolean(this.o.token) }, 'launcher attached to the control plane');
    this.onAttach?.(n);
    return n;
  }

  /** Removes exactly this registration; its pending commands fail now. */
  private detach(n: AttachedNode, reason: string, code?: grpc.status): void {
    if (this.nodes.get(n.hello.node_id) !== n) return;
    this.nodes.delete(n.hello.node_id);
    for (const [id, w] of n.pending) w({ command_id: id, ok: false, error: `node ${n.hello.node_id} detached (${reason})`, detail_json: '' });
    n.pending.clear();
    this.log.warn({ node: n.hello.node_id, reason }, 'launcher detached from the control plane');
    if (code !== undefined) n.stream.emit('error', { code, details: reason });
    else n.stream.end();
    this.onDetach?.(n, reason);
  }

  nodeStats(): Map<number, Stats> {
    const m = new Map<number, Stats>();
    for (const [id, n] of this.nodes) if (n.stats) m.set(id, n.stats);
    return m;
  }

  /** Sends a command to one node; resolves with its result, or an error result on timeout or detach. */
  command(nodeId: number, body: Omit<GatewayCommand, 'command_id'>, timeoutMs = 30000): Promise<CommandResult> {
    const n = this.nodes.get(nodeId);
    // Random ids: a stream cannot name another stream's commands (it could not answer them anyway).
    const id = randomInt(1, 2 ** 47);
    if (!n) return Promise.resolve({ command_id: id, ok: false, error: `node ${nodeId} is not attached`, detail_json: '' });
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        n.pending.delete(id);
        resolve({ command_id: id, ok: false, error: `node ${nodeId} did not answer within ${timeoutMs} ms`, detail_json: '' });
      }, timeoutMs);
      n.pending.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      n.stream.write({ command_id: id, ...body });
    });
  }

  broadcast(body: Omit<GatewayCommand, 'command_id'>): void {
    for (const n of this.nodes.values()) n.stream.write({ command_id: 0, ...body });
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const n of this.nodes.values()) n.stream.end();
    await new Promise<void>((r) => this.server.tryShutdown(() => r()));
    this.server.forceShutdown();
  }
}
