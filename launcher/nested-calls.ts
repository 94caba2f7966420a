/**
 * The node agent's nested calls: a worker's INVOKE_FUNC becomes a call to the
 * callee's pool (dispatched like an external call, dispatch.ts), its result
 * goes back over the caller's input FIFO, and every one is recorded on its
 * caller->callee edge (EdgeStats).
 */
import type { Logger } from '../common/log.js';
import { writeNow } from '../common/write-now.js';
import { ipc, MessageType, monotonicMicrosNumber, setSendTimestampUs } from '../proto/wire.js';
import type { Dispatcher } from './dispatch.js';
import type { EdgeStats } from './edge-stats.js';
import type { IpcRoot } from './ipc-files.js';
import type { Call, FunctionPool, NestedSource, Worker } from './workers.js';

export class NestedCalls {
  constructor(
    private readonly pools: ReadonlyMap<number, FunctionPool>,
    private readonly ipc: IpcRoot,
    private readonly log: Logger,
    private readonly edges: EdgeStats,
    private readonly dispatch: Dispatcher,
  ) {}

  onInvoke(caller: Worker, f: Buffer): void {
    const id = ipc.fullCallId(f);
    const calleeId = ipc.funcId(f);
    const pool = this.pools.get(calleeId);
    const size = ipc.payloadSize(f);
    // The same frame becomes the DISPATCH: ids and payload stay, the type
    // changes and bytes 8-15 (parent_call_id) are zero in a DISPATCH.
    const frame = Buffer.from(f);
    frame[0] = (frame[0] & 0xf0) | MessageType.DISPATCH_FUNC_CALL;
    frame.fill(0, 8, 16);
    frame.fill(0, 32, 64); // padding, including our origin extension, is zero in a DISPATCH
    // A merged callee's own calls leave from its caller's process: attribute them to the callee.
    const origin = ipc.originFuncId(f);
    const callerFunc = (origin !== undefined ? this.pools.get(origin)?.entry.funcName : undefined) ?? caller.pool.entry.funcName;
    const call: Call = {
      id, funcId: calleeId, frame, source: { kind: 'nested', caller, callerFunc }, inputSize: Math.abs(size),
      ownsInputShm: false, receivedUs: monotonicMicrosNumber(),
    };
    // Counted before any refusal, as external calls are: a refused call is a call and a failure.
    if (pool) pool.counters.calls++;
    if (!pool || !pool.runnable || caller.nested.has(id)) {
      // Nightcore drops such calls and the caller hangs; we fail them.
      this.log.warn({ caller: caller.pool.entry.funcName, calleeFuncId: calleeId, call: String(id) }, 'nested call to an unknown or unrunnable function, or a duplicate id: failed');
      this.dispatch.finishFailed(call, 'unknown callee');
      return;
    }
    caller.nested.set(id, call);
    this.dispatch.submit(call, pool);
  }

  /** The result `f` of nested `call` (already counted on the callee's pool, once): to the caller, if it is still there. */
  deliver(call: Call, source: NestedSource, callee: FunctionPool | undefined, f: Buffer, failed: boolean, size: number): void {
    const caller = source.caller;
    // a refused duplicate id must not take the entry of the call in flight under that id
    if (caller.nested.get(call.id) === call) caller.nested.delete(call.id);
    const now = monotonicMicrosNumber();
    this.edges.record(source.callerFunc, callee?.entry.funcName ?? `#${call.funcId}`, {
      inputBytes: call.inputSize,
      outputBytes: Math.abs(size),
      dispatchDelayUs: failed ? 0 : ipc.dispatchDelay(f),
      processingUs: failed ? 0 : ipc.processingTime(f),
      rpcUs: now - call.receivedUs,
      queueUs: call.dispatchedUs ? call.dispatchedUs - call.receivedUs : 0,
      failed,
    });
    if (caller.state === 'dead' || !caller.inSock) {
      // The caller would have removed these files after its invoke returned.
      if (!failed && size < 0) this.ipc.removeShm(call.id, 'o');
      if (call.frame && ipc.payloadSize(call.frame) < 0) this.ipc.removeShm(call.id, 'i');
      return;
    }
    setSendTimestampUs(f, now);
    writeNow(caller.inSock, f);
  }
}
