/**
 * External calls: ids, admission (--max_running_requests), node choice
 * (--lb_per_fn_round_robin, --lb_pick_least_load, else random), the table of
 * running calls matched by full_call_id, and the two limits Nightcore lacks
 * (per-call timeout; failing calls whose node disconnected).
 *
 * A result is accepted only from the node the call was dispatched to, and
 * call ids are random (not a counter), so one engine cannot complete, or even
 * name, calls that went to another.
 */
import { randomFillSync } from 'node:crypto';
import { packCallIdFast, type GatewayMessage, MessageType } from '../proto/wire.js';
import type { EngineServer, Node } from './engine-server.js';
import { CallTable } from '../common/call-table.js';

export type CallOutcome =
  | { kind: 'ok'; output: Buffer; processingUs: number }
  | { kind: 'failed' }
  | { kind: 'no_node' }
  | { kind: 'node_lost' }
  | { kind: 'timeout' };

export interface DispatcherOptions {
  maxRunningRequests: number;
  lbPerFnRoundRobin: boolean;
  lbPickLeastLoad: boolean;
  /** 0: no timeout */
  callTimeoutMs: number;
}

/** A call in flight, as its front end holds it: `discard()` when the client has gone. */
export interface CallHandle {
  discard(): void;
}

class Running implements CallHandle {
  node: Node | undefined = undefined;
  /** performance.now() ms after which the call times out (Infinity: never) */
  deadline = Infinity;
  /** the client went away: drop the result, skip it in the queue */
  discarded = false;
  constructor(readonly id: bigint, readonly funcId: number, public input: Buffer, readonly resolve: (o: CallOutcome) => void) {}
  discard(): void {
    this.discarded = true;
  }
}

const NO_HANDLE: CallHandle = { discard() {} };

/** Random 32-bit call ids, drawn from a refilled pool (one getrandom per 1024 calls). */
class CallIdSource {
  private readonly pool = new Uint32Array(1024);
  private next = this.pool.length;
  take(): number {
    if (this.next === this.pool.length) {
      randomFillSync(this.pool);
      this.next = 0;
    }
    return this.pool[this.next++];
  }
}

export class Dispatcher {
  private readonly ids = new CallIdSource();
  private readonly running = new CallTable<Running>();
  private readonly queue: Running[] = [];
  /** node ids in the order they connected (for round robin and least-load ties) */
  private readonly order: number[] = [];
  private readonly rrCursor = new Map<number, number>();
  /** counts kept for metrics */
  readonly stats = { dispatched: 0, queuedTotal: 0, timeouts: 0, nodeLost: 0 };

  constructor(private readonly engines: EngineServer, private readonly o: DispatcherOptions) {}

  get runningCount(): number {
    return this.running.size;
  }
  get queuedCount(): number {
    return this.queue.length;
  }

  private get cap(): number {
    return this.o.maxRunningRequests > 0 ? this.o.maxRunningRequests * Math.max(1, this.order.length) : Infinity;
  }

  nodeUp(node: Node): void {
    if (!this.order.includes(node.nodeId)) this.order.push(node.nodeId);
    this.drain();
  }

  /** The node's last connection closed: its calls will never be answered. */
  nodeDown(node: Node): void {
    const i = this.order.indexOf(node.nodeId);
    if (i >= 0) this.order.splice(i, 1);
    for (const r of this.running.values()) {
      if (r.node === node) {
        this.stats.nodeLost++;
        this.settle(r, { kind: 'node_lost' });
      }
    }
  }

  /** Starts a call; `discard` lets the front end mark it when the client leaves. */
  call(funcId: number, methodId: number, input: Buffer): { promise: Promise<CallOutcome>; discard: () => void } {
    let h: CallHandle = NO_HANDLE;
    const promise = new Promise<CallOutcome>((resolve) => {
      h = this.begin(funcId, methodId, input, resolve);
    });
    return { promise, discard: () => h.discard() };
  }

  /**
   * Starts a call and calls `done` once with its outcome (synchronously, from
   * inside begin(), when there is no node to take it): the hot path's form of
   * call(), with no promise and no closure per call.
   */
  begin(funcId: number, methodId: number, input: Buffer, done: (o: CallOutcome) => void): CallHandle {
    let id: bigint;
    do id = packCallIdFast(funcId, methodId, 0, this.ids.take());
    while (this.running.has(id));
    const r = new Running(id, funcId, input, done);
    if (this.order.length === 0) {
      r.resolve({ kind: 'no_node' });
      return NO_HANDLE;
    }
    if (this.o.callTimeoutMs > 0) {
      r.deadline = performance.now() + this.o.callTimeoutMs;
      this.sweepTimeouts();
    }
    const started = this.running.size - this.queue.length;
    this.running.set(id, r);
    if (started >= this.cap) {
      this.stats.queuedTotal++;
      this.queue.push(r);
    } else {
      this.start(r);
    }
    return r;
  }

  /** The node at `order[i]` if it takes calls. */
  private usable(i: number): Node | undefined {
    const n = this.engines.nodes.get(this.order[i]);
    return n && !n.draining ? n : undefined;
  }

  /** The k-th usable node, in connection order. */
  private nthUsable(k: number): Node | undefined {
    for (let i = 0; i < this.order.length; i++) {
      const n = this.usable(i);
      if (n && k-- === 0) return n;
    }
    return undefined;
  }

  /** Among the usable nodes (no arrays per call: this runs for every call). */
  private pickNode(funcId: number): Node | undefined {
    let count = 0;
    let least: Node | undefined;
    for (let i = 0; i < this.order.length; i++) {
      const n = this.usable(i);
      if (!n) continue;
      count++;
      if (!least || n.inflight < least.inflight) least = n;
    }
    if (count === 0) return undefined;
    if (this.o.lbPerFnRoundRobin) {
      const c = (this.rrCursor.get(funcId) ?? 0) % count;
      this.rrCursor.set(funcId, c + 1);
      return this.nthUsable(c);
    }
    if (this.o.lbPickLeastLoad) return least;
    return this.nthUsable(Math.floor(Math.random() * count));
  }

  private start(r: Running): void {
    const node = this.pickNode(r.funcId);
    if (!node || !this.engines.dispatch(node, r.id, r.input)) {
      this.settle(r, { kind: 'no_node' });
      return;
    }
    r.node = node;
    node.inflight++;
    node.dispatched++;
    this.stats.dispatched++;
  }

  /** counted for metrics: results for calls the answering node was never given */
  foreignResults = 0;

  onResult(node: Node, m: GatewayMessage): void {
    const r = this.running.get(m.fullCallId);
    if (!r) return; // unknown, timed out, or its node was given up on
    if (r.node !== node) {
      this.foreignResults++;
      return;
    }
    if (m.type === MessageType.FUNC_CALL_COMPLETE) this.settle(r, { kind: 'ok', output: m.payload, processingUs: m.value });
    else this.settle(r, { kind: 'failed' });
  }

  /**
   * Call deadlines are checked together, every eighth of the timeout (5-100
   * ms): a timer per call (a Timeout, its closure, a list insert and removal)
   * was a measurable part of the hot path. A call times out between its
   * deadline and one interval after it.
   */
  private sweepTimer: NodeJS.Timeout | undefined;

  private sweepTimeouts(): void {
    if (this.sweepTimer) return;
    const every = Math.min(100, Math.max(5, Math.floor(this.o.callTimeoutMs / 8)));
    this.sweepTimer = setInterval(() => {
      if (this.running.size === 0) {
        clearInterval(this.sweepTimer);
        this.sweepTimer = undefined;
        return;
      }
      const now = performance.now();
      for (const r of this.running.values()) {
        if (r.deadline > now) continue;
        this.stats.timeouts++;
        this.settle(r, { kind: 'timeout' });
      }
    }, every); // not unref'd: a call waiting for its timeout keeps the process up, as its own timer did
  }

  private settle(r: Running, o: CallOutcome): void {
    if (this.running.get(r.id) !== r) return;
    this.running.delete(r.id);
    if (r.node) {
      r.node.inflight = Math.max(0, r.node.inflight - 1);
    } else {
      const qi = this.queue.indexOf(r);
      if (qi >= 0) this.queue.splice(qi, 1);
    }
    r.input = EMPTY;
    r.resolve(o);
    this.drain();
  }

  private drain(): void {
    while (this.queue.length > 0 && this.running.size - this.queue.length < this.cap) {
      const next = this.queue.shift()!;
      if (next.discarded) {
        this.running.delete(next.id);
        next.resolve({ kind: 'failed' });
        continue;
      }
      this.start(next);
    }
  }

  /** Fails everything (shutdown). */
  failAll(): void {
    for (const r of this.running.values()) this.settle(r, { kind: 'failed' });
  }
}

const EMPTY = Buffer.alloc(0);
