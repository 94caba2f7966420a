/**
 * Per-edge (caller function -> callee function) statistics of nested calls,
 * the input of the merge policy and of the edge metrics.
 *
 * record() runs once per nested call on the launcher's call path, so it only
 * adds to plain numbers: sums, and one slot of a power-of-two latency bucket
 * array per histogram (proto/control.ts: edgeBucket). Everything derived —
 * the decayed call rate, cumulative histograms, means — is computed when
 * someone reads a snapshot (the control-plane report, the decision tick),
 * about once a second.
 */
import { EDGE_BUCKET_SLOTS, edgeBucket } from '../proto/control.js';

export interface EdgeSample {
  inputBytes: number;
  outputBytes: number;
  /** callee worker's receive time minus the dispatch's send time (µs, from the worker) */
  dispatchDelayUs: number;
  /** time the callee spent in its handler (µs, from the worker) */
  processingUs: number;
  /** INVOKE_FUNC received -> result forwarded, as the launcher saw it (µs) */
  rpcUs: number;
  /** queueing in the launcher before a callee worker was free (µs) */
  queueUs: number;
  failed: boolean;
}

export interface EdgeRecord {
  caller: string;
  callee: string;
  /** every call, IPC and in process */
  calls: number;
  /** every failed call, IPC and in process */
  failures: number;
  inputBytes: number;
  outputBytes: number;
  dispatchDelayUs: number;
  processingUs: number;
  rpcUs: number;
  queueUs: number;
  /** IPC round trips (rpcUs) by power-of-two bucket: see proto/control.ts edgeBucket */
  rpcBuckets: Float64Array;
  /** callee time of successful IPC calls by power-of-two bucket */
  processingBuckets: Float64Array;
  /** calls served locally by a merged callee (reported by the merge runtime) */
  localCalls: number;
  localFailures: number;
  /** their processing time (µs), also included in processingUs */
  localProcessingUs: number;
  /** calls per second, decayed with time constant RATE_TAU_MS; brought up to date by snapshot() */
  ratePerSec: number;
  /** `calls` and the time when ratePerSec was last brought up to date */
  rateCalls: number;
  rateAtMs: number;
}

const RATE_TAU_MS = 5000;

export class EdgeStats {
  /** caller -> callee -> record: two lookups by interned names, no key string built per call */
  private readonly edges = new Map<string, Map<string, EdgeRecord>>();

  private get(caller: string, callee: string): EdgeRecord {
    let byCallee = this.edges.get(caller);
    if (!byCallee) {
      byCallee = new Map();
      this.edges.set(caller, byCallee);
    }
    let e = byCallee.get(callee);
    if (!e) {
      e = {
        caller, callee, calls: 0, failures: 0, inputBytes: 0, outputBytes: 0, dispatchDelayUs: 0, processingUs: 0, rpcUs: 0,
        queueUs: 0, rpcBuckets: new Float64Array(EDGE_BUCKET_SLOTS), processingBuckets: new Float64Array(EDGE_BUCKET_SLOTS),
        localCalls: 0, localFailures: 0, localProcessingUs: 0, ratePerSec: 0, rateCalls: 0, rateAtMs: Date.now(),
      };
      byCallee.set(callee, e);
    }
    return e;
  }

  /** One nested call over IPC (the call path: sums and two bucket slots only). */
  record(caller: string, callee: string, s: EdgeSample): void {
    const e = this.get(caller, callee);
    const rpc = s.rpcUs > 0 ? s.rpcUs : 0;
    e.calls++;
    e.inputBytes += s.inputBytes;
    e.outputBytes += s.outputBytes;
    e.rpcUs += rpc;
    e.rpcBuckets[edgeBucket(rpc)]++;
    if (s.queueUs > 0) e.queueUs += s.queueUs;
    if (s.failed) {
      e.failures++;
      return;
    }
    const proc = s.processingUs > 0 ? s.processingUs : 0;
    e.processingUs += proc;
    e.processingBuckets[edgeBucket(proc)]++;
    if (s.dispatchDelayUs > 0) e.dispatchDelayUs += s.dispatchDelayUs;
  }

  /** Calls that never crossed IPC (merged); they keep the graph complete. */
  recordLocal(caller: string, callee: string, calls: number, failures: number, processingUs: number): void {
    if (calls <= 0) return;
    const e = this.get(caller, callee);
    e.calls += calls;
    e.localCalls += calls;
    e.failures += failures;
    e.localFailures += failures;
    e.processingUs += processingUs;
    e.localProcessingUs += processingUs;
  }

  /** Time spent in `fn` while it ran merged inside its callers (µs). */
  localProcessingOf(fn: string): number {
    let us = 0;
    for (const byCallee of this.edges.values()) {
      const e = byCallee.get(fn);
      if (e) us += e.localProcessingUs;
    }
    return us;
  }

  /** Copies of every edge, with the decayed rate brought up to `nowMs`. */
  snapshot(nowMs = Date.now()): EdgeRecord[] {
    const out: EdgeRecord[] = [];
    for (const byCallee of this.edges.values()) {
      for (const e of byCallee.values()) {
        // The calls since the last update are counted as arriving now: at a
        // read every ~1 s against a 5 s time constant the bias is small.
        const dt = Math.max(0, nowMs - e.rateAtMs);
        e.ratePerSec = e.ratePerSec * Math.exp(-dt / RATE_TAU_MS) + ((e.calls - e.rateCalls) * 1000) / RATE_TAU_MS;
        e.rateCalls = e.calls;
        e.rateAtMs = Math.max(e.rateAtMs, nowMs);
        out.push({ ...e, rpcBuckets: e.rpcBuckets.slice(), processingBuckets: e.processingBuckets.slice() });
      }
    }
    return out;
  }
}
