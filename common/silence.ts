/**
 * How long a peer has been silent, not counting time our own event loop was
 * stalled: a gateway or launcher that was busy (or descheduled) for a second
 * must not take that second as the peer's silence and evict a healthy node.
 * check() runs every `everyMs`; a check that comes late by more than a period
 * credits the lateness to the peer.
 */
export class SilenceWatch {
  private heardAt = Date.now();
  private checkedAt = Date.now();

  constructor(private readonly everyMs: number) {}

  heard(): void {
    this.heardAt = Date.now();
  }

  /** Milliseconds of silence now. */
  check(): number {
    const now = Date.now();
    const late = now - this.checkedAt - this.everyMs;
    this.checkedAt = now;
    if (late > this.everyMs) this.heardAt = Math.min(now, this.heardAt + late);
    return now - this.heardAt;
  }
}
