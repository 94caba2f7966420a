/**
 * A latency histogram for `nightfuse load`: log-spaced buckets 1% wide from
 * 1 µs to 100 s, so percentiles are within 1% whatever the run's length,
 * in a fixed 15 KiB.
 */
const GROWTH = Math.log(1.01);
const SLOTS = Math.ceil(Math.log(1e8) / GROWTH) + 1;

export class LatencyHistogram {
  private readonly counts = new Float64Array(SLOTS);
  count = 0;
  sumMs = 0;
  maxMs = 0;

  record(ms: number): void {
    const us = ms * 1000;
    const i = us <= 1 ? 0 : Math.min(SLOTS - 1, Math.floor(Math.log(us) / GROWTH));
    this.counts[i]++;
    this.count++;
    this.sumMs += ms;
    if (ms > this.maxMs) this.maxMs = ms;
  }

  /** The p-th percentile (0 < p <= 100) in ms, at the middle of its bucket; 0 when empty. */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (let i = 0; i < SLOTS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(this.maxMs, Math.exp((i + 0.5) * GROWTH) / 1000);
    }
    return this.maxMs;
  }

  get meanMs(): number {
    return this.count ? this.sumMs / this.count : 0;
  }
}

/** "0.42 ms", "12.3 ms", "1.20 s" */
export function formatMs(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}
