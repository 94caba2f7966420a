/**
 * Calls in flight by full call id: what a Map<bigint, V> did on the hot path,
 * without its garbage. A Map under churn (a set and a delete per call) rehashes
 * into a new table every few dozen calls, and V8 links each obsolete table to
 * its successor; once one of them is in the old generation, every later table
 * and every value they held is kept alive by it through a scavenge and
 * promoted, until a full GC (measured: ~280 KB promoted per scavenge in the one
 * process at Bar 16 connections; a churned Map in a test script promoted 578 KB
 * per scavenge and ran 48 mark-compacts where slot arrays promoted nothing and
 * ran 2). Here two arrays are allocated once, grown when half full, never
 * shrunk, and a deleted slot is emptied: nothing is allocated per call and
 * nothing outlives its call.
 *
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones).
 */
export class CallTable<V> {
  private keys: (bigint | undefined)[];
  private vals: (V | undefined)[];
  private mask: number;
  private count = 0;

  constructor(capacity = 64) {
    let c = 16;
    while (c < capacity) c *= 2;
    this.keys = new Array<bigint | undefined>(c).fill(undefined);
    this.vals = new Array<V | undefined>(c).fill(undefined);
    this.mask = c - 1;
  }

  get size(): number {
    return this.count;
  }

  /** Where `k` is, or the empty slot where it would go. */
  private find(k: bigint): number {
    let i = this.home(k);
    for (;;) {
      const x = this.keys[i];
      if (x === undefined || x === k) return i;
      i = (i + 1) & this.mask;
    }
  }

  has(k: bigint): boolean {
    return this.keys[this.find(k)] !== undefined;
  }

  get(k: bigint): V | undefined {
    return this.vals[this.find(k)];
  }

  set(k: bigint, v: V): void {
    const i = this.find(k);
    if (this.keys[i] === undefined) {
      this.keys[i] = k;
      this.count++;
    }
    this.vals[i] = v;
    if (this.count * 2 > this.mask + 1) this.grow();
  }

  delete(k: bigint): boolean {
    let i = this.find(k);
    if (this.keys[i] === undefined) return false;
    // backward shift: move later entries of the probe run into the hole, so lookups never stop early
    for (let j = (i + 1) & this.mask; ; j = (j + 1) & this.mask) {
      const x = this.keys[j];
      if (x === undefined) break;
      const home = this.home(x);
      // x may move to i only if i lies cyclically within [home, j)
      if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
        this.keys[i] = x;
        this.vals[i] = this.vals[j];
        i = j;
      }
    }
    this.keys[i] = undefined;
    this.vals[i] = undefined;
    this.count--;
    return true;
  }

  /** The values now in the table (a copy: the caller may delete while it walks it). */
  values(): V[] {
    const out: V[] = [];
    for (let i = 0; i <= this.mask; i++) if (this.keys[i] !== undefined) out.push(this.vals[i]!);
    return out;
  }

  /** The slot `k` hashes to. Call ids vary in their call_id (bits 28-59: random from our gateway, a
   * counter from others) and their client id (bits 14-27, nested calls): both halves are mixed. */
  private home(k: bigint): number {
    const h = Math.imul(Number(k & 0xffffffffn) ^ Math.imul(Number(k >> 32n), 0x85ebca6b), 0x9e3779b1);
    return (h ^ (h >>> 15)) & this.mask;
  }

  private grow(): void {
    const keys = this.keys;
    const vals = this.vals;
    const c = (this.mask + 1) * 2;
    this.keys = new Array<bigint | undefined>(c).fill(undefined);
    this.vals = new Array<V | undefined>(c).fill(undefined);
    this.mask = c - 1;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i];
      if (k === undefined) continue;
      const j = this.find(k);
      this.keys[j] = k;
      this.vals[j] = vals[i];
    }
  }
}
