/**
 * Per-edge (caller function -> callee function) statistics of nested calls,
 * the input of the merge policy. Sums are exact counters (rates and means are
 * derived by whoever reads them over an interval); `ratePerSec` is an
 * exponentially-decayed call rate, so a cooled-down edge reads near zero
 * without anyone resetting it.
 */
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
  calls: number;
  failures: number;
  inputBytes: number;
  outputBytes: number;
  dispatchDelayUs: number;
  processingUs: number;
  rpcUs: number;
  queueUs: number;
  /** calls per second, decayed with time constant RATE_TAU_MS */
  ratePerSec: number;
  lastAtMs: number;
  /** calls served locally by a merged callee (reported by the merge runtime) */
  localCalls: number;
  /** their processing time (µs), also included in processingUs */
  localProcessingUs: number;
}

const RATE_TAU_MS = 5000;

export class EdgeStats {
  private readonly edges = new Map<string, EdgeRecord>();

  private get(caller: string, callee: string): EdgeRecord {
    const key = `${caller}\u0000${callee}`;
    let e = this.edges.get(key);
    if (!e) {
      e = {
        caller, callee, calls: 0, failures: 0, inputBytes: 0, outputBytes: 0, dispatchDelayUs: 0,
        processingUs: 0, rpcUs: 0, queueUs: 0, ratePerSec: 0, lastAtMs: Date.now(), localCalls: 0, localProcessingUs: 0,
      };
      this.edges.set(key, e);
    }
    return e;
  }

  private bumpRate(e: EdgeRecord, n: number, nowMs: number): void {
    const dt = Math.max(0, nowMs - e.lastAtMs);
    e.ratePerSec = e.ratePerSec * Math.exp(-dt / RATE_TAU_MS) + (n * 1000) / RATE_TAU_MS;
    e.lastAtMs = nowMs;
  }

  record(caller: string, callee: string, s: EdgeSample, nowMs = Date.now()): void {
    const e = this.get(caller, callee);
    e.calls++;
    if (s.failed) e.failures++;
    e.inputBytes += s.inputBytes;
    e.outputBytes += s.outputBytes;
    e.dispatchDelayUs += Math.max(0, s.dispatchDelayUs);
    e.processingUs += Math.max(0, s.processingUs);
    e.rpcUs += Math.max(0, s.rpcUs);
    e.queueUs += Math.max(0, s.queueUs);
    this.bumpRate(e, 1, nowMs);
  }

  /** Calls that never crossed IPC (merged); they keep the graph complete. */
  recordLocal(caller: string, callee: string, calls: number, failures: number, processingUs: number, nowMs = Date.now()): void {
    if (calls <= 0) return;
    const e = this.get(caller, callee);
    e.calls += calls;
    e.localCalls += calls;
    e.failures += failures;
    e.processingUs += processingUs;
    e.localProcessingUs += processingUs;
    this.bumpRate(e, calls, nowMs);
  }

  /** Time spent in `fn` while it ran merged inside its callers (µs). */
  localProcessingOf(fn: string): number {
    let us = 0;
    for (const e of this.edges.values()) if (e.callee === fn) us += e.localProcessingUs;
    return us;
  }

  /** Snapshot with rates decayed to now. */
  snapshot(nowMs = Date.now()): EdgeRecord[] {
    return [...this.edges.values()].map((e) => ({
      ...e,
      ratePerSec: e.ratePerSec * Math.exp(-Math.max(0, nowMs - e.lastAtMs) / RATE_TAU_MS),
    }));
  }
}
