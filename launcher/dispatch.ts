/**
 * The node agent's dispatch: calls to idle workers (LIFO), queued FIFO when
 * all are busy; external calls from the gateway link and their results back;
 * every worker's results, delivered once to where their call came from.
 * Nested calls come in through nested-calls.ts and leave through it again.
 */
import type { Logger } from '../common/log.js';
import { writeNow } from '../common/write-now.js';
import {
  encodeIpc,
  type GatewayMessage,
  INLINE_CAPACITY,
  ipc,
  MESSAGE_SIZE,
  MessageType,
  monotonicMicrosNumber,
  setSendTimestampUs,
  writeDispatchInline,
} from '../proto/wire.js';
import type { GatewayConn } from './gateway-link.js';
import type { IpcRoot } from './ipc-files.js';
import type { NestedCalls } from './nested-calls.js';
import type { WorkerSupervisor } from './worker-supervisor.js';
import type { Call, FunctionPool, Worker } from './workers.js';
import { CallTable } from '../common/call-table.js';

export type SendToGateway = (conn: GatewayConn | undefined, type: MessageType, id: bigint, value: number, payload?: Buffer) => void;

/** Where results for the gateway go: NodeAgent, whose sendToGateway whoever owns the gateway link sets. */
export interface GatewaySink {
  sendToGateway: SendToGateway;
}

export class Dispatcher {
  /** external calls in flight, by full call id */
  private readonly external = new CallTable<Call>();
  // Set once by connect(): the three roles refer to each other.
  private supervisor!: WorkerSupervisor;
  private nested!: NestedCalls;

  constructor(
    private readonly pools: ReadonlyMap<number, FunctionPool>,
    private readonly ipc: IpcRoot,
    private readonly log: Logger,
    private readonly sink: GatewaySink,
  ) {}

  connect(supervisor: WorkerSupervisor, nested: NestedCalls): void {
    this.supervisor = supervisor;
    this.nested = nested;
  }

  submit(call: Call, pool: FunctionPool): void {
    const w = pool.popIdle();
    if (w) {
      this.send(w, call);
      return;
    }
    pool.enqueue(call);
    this.supervisor.ensureCapacity(pool);
  }

  private send(w: Worker, call: Call): void {
    w.state = 'busy';
    w.current = call;
    let frame = call.frame;
    if (!frame) {
      // writeNow copies what it cannot write at once, so the worker's frame is free again when it returns
      frame = w.dispatchFrame ??= Buffer.alloc(MESSAGE_SIZE);
      w.dispatchDirty = writeDispatchInline(frame, call.id, call.inline!, w.dispatchDirty);
    }
    const now = monotonicMicrosNumber();
    call.dispatchedUs = now;
    setSendTimestampUs(frame, now);
    writeNow(w.inSock!, frame);
  }

  /** A worker became free: give it the oldest queued call, or park it. */
  releaseWorker(w: Worker): void {
    if (w.state === 'dead') return;
    if (w.retiring) {
      w.state = 'idle';
      this.supervisor.stopRetired(w);
      return;
    }
    if (w.held) {
      w.state = 'idle';
      const waiter = w.heldWaiter;
      w.heldWaiter = undefined;
      waiter?.();
      return;
    }
    const next = w.pool.dequeue();
    if (next) this.send(w, next);
    else {
      w.state = 'idle';
      w.pool.idle.push(w);
    }
  }

  /** DISPATCH_FUNC_CALL from the gateway. */
  dispatchExternal(m: GatewayMessage, conn: GatewayConn | undefined): void {
    const id = m.fullCallId;
    const funcId = Number(id & 0xffn);
    const pool = this.pools.get(funcId);
    if (!pool) return this.failExternal(id, funcId, conn, undefined, 'unknown func_id');
    pool.counters.calls++;
    if (!pool.runnable) return this.failExternal(id, funcId, conn, pool, 'function has no library or command on this node');
    if (this.external.has(id)) return this.failExternal(id, funcId, conn, pool, 'a call with the same id is still in flight (gateway restarted?)');
    const input = m.payload;
    let frame: Buffer | undefined; // an inline payload's frame is written into the worker's own at send
    let ownsInputShm = false;
    if (input.length > INLINE_CAPACITY) {
      try {
        this.writeShmReplacingStale(id, 'i', input);
      } catch (err) {
        return this.failExternal(id, funcId, conn, pool, `cannot write input file: ${(err as Error).message}`);
      }
      ownsInputShm = true;
      frame = encodeIpc({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: id, payloadSize: -input.length });
    }
    const call: Call = {
      id, funcId, frame, inline: frame ? undefined : input, source: { kind: 'gateway', conn }, inputSize: input.length, ownsInputShm,
      receivedUs: monotonicMicrosNumber(),
    };
    this.external.set(id, call);
    this.submit(call, pool);
  }

  private failExternal(id: bigint, funcId: number, conn: GatewayConn | undefined, pool: FunctionPool | undefined, why: string): void {
    this.log.warn({ call: String(id), funcId, why }, 'external call failed');
    if (pool) pool.counters.failures++;
    this.sink.sendToGateway(conn, MessageType.FUNC_CALL_FAILED, id, 0);
  }

  /** Fails every external call still in flight (the node agent is stopping). */
  failAllExternal(why: string): void {
    for (const call of this.external.values()) this.finishFailed(call, why);
  }

  /** A leftover <id>.i from a lost call (ids restart when the gateway does) is stale: replace it. */
  private writeShmReplacingStale(id: bigint, suffix: 'i' | 'o', data: Buffer): void {
    try {
      this.ipc.writeShm(id, suffix, data);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      this.ipc.removeShm(id, suffix);
      this.ipc.writeShm(id, suffix, data);
    }
  }

  onWorkerFrame(w: Worker, f: Buffer): void {
    switch (ipc.type(f)) {
      case MessageType.FUNC_CALL_COMPLETE:
      case MessageType.FUNC_CALL_FAILED:
        return this.onWorkerResult(w, f);
      case MessageType.INVOKE_FUNC:
        return this.nested.onInvoke(w, f);
      default:
        this.log.warn({ clientId: w.clientId, type: ipc.type(f) }, 'ignoring unexpected frame from worker');
    }
  }

  private onWorkerResult(w: Worker, f: Buffer): void {
    const id = ipc.fullCallId(f);
    const call = w.current;
    if (!call || call.id !== id) {
      this.log.warn({ clientId: w.clientId, call: String(id) }, 'result for a call this worker is not running; dropped');
      if (ipc.type(f) === MessageType.FUNC_CALL_COMPLETE && ipc.payloadSize(f) < 0) this.ipc.removeShm(id, 'o');
      return;
    }
    w.current = undefined;
    this.releaseWorker(w);
    this.finish(call, f);
  }

  finishFailed(call: Call, why: string): void {
    this.finish(call, encodeIpc({ type: MessageType.FUNC_CALL_FAILED, fullCallId: call.id }), why);
  }

  /** Delivers a COMPLETE/FAILED frame for `call` to where it came from, once. */
  private finish(call: Call, f: Buffer, why?: string): void {
    if (call.done) return;
    call.done = true;
    const pool = this.pools.get(call.funcId);
    const failed = ipc.type(f) !== MessageType.FUNC_CALL_COMPLETE;
    if (failed && pool) pool.counters.failures++;
    if (!failed && pool) pool.counters.processingUs += Math.max(0, ipc.processingTime(f));
    const size = failed ? 0 : ipc.payloadSize(f);
    if (call.source.kind === 'nested') return this.nested.deliver(call, call.source, pool, f, failed, size);
    this.external.delete(call.id);
    if (call.ownsInputShm) this.ipc.removeShm(call.id, 'i');
    let output: Buffer | undefined;
    let ok = !failed;
    if (ok) {
      try {
        output = size >= 0 ? Buffer.from(ipc.inline(f)) : this.ipc.takeShm(call.id, 'o', -size);
      } catch (err) {
        this.log.error({ call: String(call.id), err: (err as Error).message }, 'cannot read call output');
        ok = false;
      }
    }
    if (why) this.log.warn({ call: String(call.id), why }, 'call failed');
    if (ok) this.sink.sendToGateway(call.source.conn, MessageType.FUNC_CALL_COMPLETE, call.id, ipc.processingTime(f), output);
    else this.sink.sendToGateway(call.source.conn, MessageType.FUNC_CALL_FAILED, call.id, 0);
  }
}
