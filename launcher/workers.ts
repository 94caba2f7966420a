/**
 * A node agent's workers and functions: one worker process (its state, its
 * sockets, the call it runs and the nested calls it made) and one function's
 * pool (workers, idle stack, FIFO of queued calls, counters, Nightcore's
 * min/max worker rules). The node agent's roles (worker-supervisor.ts,
 * dispatch.ts, nested-calls.ts) drive them.
 */
import type net from 'node:net';
import type { FuncEntry } from '../common/func-config.js';
import type { GatewayConn } from './gateway-link.js';
import type { SpawnedProcess } from './spawn.js';
import { CallTable } from '../common/call-table.js';

/** Where a call came from, and so where its result goes. */
export type CallSource = { kind: 'gateway'; conn: GatewayConn | undefined } | NestedSource;

export interface NestedSource {
  kind: 'nested';
  caller: Worker;
  callerFunc: string;
}

export interface Call {
  id: bigint;
  funcId: number;
  /**
   * The DISPATCH_FUNC_CALL frame to write to a worker; undefined for an
   * external call with an inline payload, whose frame is written into the
   * worker's own at send (dispatch.ts: no 1 KiB frame allocated per call).
   */
  frame: Buffer | undefined;
  /** that inline payload */
  inline?: Buffer;
  source: CallSource;
  inputSize: number;
  /** the launcher wrote <id>.i and removes it */
  ownsInputShm: boolean;
  /** CLOCK_MONOTONIC µs (monotonicMicrosNumber) */
  receivedUs: number;
  dispatchedUs?: number;
  done?: boolean;
}

export type WorkerState = 'starting' | 'idle' | 'busy' | 'dead';

export class Worker {
  state: WorkerState = 'starting';
  current: Call | undefined;
  /** nested calls this worker made that are still in flight */
  readonly nested = new CallTable<Call>();
  inSock: net.Socket | undefined;
  outSock: net.Socket | undefined;
  hsSock: net.Socket | undefined;
  handshakeTimer: NodeJS.Timeout | undefined;
  /** held out of dispatch (injection in progress); `heldWaiter` resolves once it is idle */
  held = false;
  /** possibly damaged (a merged callee faulted in it): out of dispatch for good, stopped once its call is done */
  retiring: string | undefined;
  heldWaiter: (() => void) | undefined;
  /** where external calls with an inline payload are written for it (one call at a time), and the inline bytes it last held */
  dispatchFrame: Buffer | undefined;
  dispatchDirty = 0;
  readonly startedAt = Date.now();
  constructor(
    readonly clientId: number,
    readonly fprocessId: number,
    readonly pool: FunctionPool,
    readonly proc: SpawnedProcess,
  ) {}
  get pid(): number {
    return this.proc.pid;
  }
  /** handshaken, alive and not being retired: it can take calls (or is taking one) */
  get ready(): boolean {
    return (this.state === 'idle' || this.state === 'busy') && !this.retiring;
  }
}

export interface FunctionCounters {
  calls: number;
  failures: number;
  restarts: number;
  spawned: number;
  /** sum of the workers' reported processing time of completed calls (µs) */
  processingUs: number;
}

export class FunctionPool {
  readonly workers = new Map<number, Worker>();
  readonly idle: Worker[] = [];
  /** queued calls from pendingHead on; slots before it are emptied as they are taken */
  private readonly pending: (Call | undefined)[] = [];
  private pendingHead = 0;
  readonly counters: FunctionCounters = { calls: 0, failures: 0, restarts: 0, spawned: 0, processingUs: 0 };
  nextFprocessId = 0;
  crashStreak = 0;
  respawnTimer: NodeJS.Timeout | undefined;
  constructor(readonly entry: FuncEntry) {}

  get minWorkers(): number {
    // Nightcore: key absent -> 4 workers at start; <= 0 -> none.
    const m = this.entry.minWorkers;
    return m === undefined ? 4 : Math.max(0, m);
  }
  get maxWorkers(): number {
    const m = this.entry.maxWorkers;
    return m === undefined || m <= 0 ? Infinity : m;
  }
  /** workers that are or will be capacity (a retiring one is not) */
  get live(): number {
    let n = 0;
    for (const w of this.workers.values()) if (w.state !== 'dead' && !w.retiring) n++;
    return n;
  }
  get starting(): number {
    let n = 0;
    for (const w of this.workers.values()) if (w.state === 'starting') n++;
    return n;
  }
  get queued(): number {
    return this.pending.length - this.pendingHead;
  }
  enqueue(c: Call): void {
    this.pending.push(c);
  }
  dequeue(): Call | undefined {
    while (this.pendingHead < this.pending.length) {
      const c = this.pending[this.pendingHead]!;
      // A taken call must not stay reachable from the queue: kept until the next compaction, every
      // finished call (its frame, input and source) outlived the young generation (heap snapshot
      // under load: 608 finished calls held here) and was promoted, to die in the old one.
      this.pending[this.pendingHead++] = undefined;
      if (this.pendingHead === this.pending.length) {
        this.pending.length = 0;
        this.pendingHead = 0;
      } else if (this.pendingHead > 1024 && this.pendingHead * 2 > this.pending.length) {
        this.pending.splice(0, this.pendingHead);
        this.pendingHead = 0;
      }
      if (!c.done) return c;
    }
    return undefined;
  }
  popIdle(): Worker | undefined {
    for (;;) {
      const w = this.idle.pop();
      if (!w) return undefined;
      if (w.state === 'idle' && !w.held && !w.retiring) return w; // a held worker is pushed back when released
    }
  }
  get runnable(): boolean {
    return Boolean(this.entry.library || this.entry.command);
  }
}

