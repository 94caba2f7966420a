/**
 * The merge control protocol (launcher <-> merge runtime in a caller worker):
 * the TypeScript twin of native/include/nightfuse/merge_proto.h, which
 * documents the layout. Both are checked against proto/golden.txt.
 */
export const MP_HEADER = 16;
export const MP_MAX_FRAME = 65536;
export const MP_HIST = 32;
export const MP_REPLY = 0x8000;
/** Longest callee name and library path a runtime accepts: longer ones are refused, never truncated. */
export const MP_MAX_NAME = 255;
export const MP_MAX_PATH = 4095;
/** FAULT flags: the faulting instruction was in the callee's own code. */
export const MP_FAULT_IN_CALLEE = 1;

export const MpType = { HELLO: 1, LOAD: 2, ROUTE: 3, UNLOAD: 4, STATS: 5, FAULT: 6 } as const;
export type MpType = (typeof MpType)[keyof typeof MpType];

export const ISOLATIONS = ['inline', 'stack', 'thread'] as const;
export type Isolation = (typeof ISOLATIONS)[number];

class Writer {
  private parts: Buffer[] = [];
  u8(v: number): this { const b = Buffer.alloc(1); b.writeUInt8(v); this.parts.push(b); return this; }
  u16(v: number): this { const b = Buffer.alloc(2); b.writeUInt16LE(v); this.parts.push(b); return this; }
  u32(v: number): this { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0); this.parts.push(b); return this; }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length > 0xffff) throw new RangeError(`string of ${b.length} bytes is too long for the merge protocol`);
    return this.u16(b.length).raw(b);
  }
  raw(b: Buffer): this { this.parts.push(b); return this; }
  frame(type: number, requestId: number, status = 0): Buffer {
    const body = Buffer.concat(this.parts);
    const h = Buffer.alloc(MP_HEADER);
    h.writeUInt32LE(MP_HEADER + body.length, 0);
    h.writeUInt16LE(type, 4);
    h.writeUInt32LE(requestId >>> 0, 8);
    h.writeInt32LE(status, 12);
    const f = Buffer.concat([h, body]);
    if (f.length > MP_MAX_FRAME) throw new RangeError(`merge frame of ${f.length} bytes exceeds ${MP_MAX_FRAME}`);
    return f;
  }
}

export class MpReader {
  private off: number;
  constructor(private readonly b: Buffer, start = MP_HEADER) {
    this.off = start;
  }
  private need(n: number): void {
    if (this.off + n > this.b.length) throw new RangeError(`merge frame truncated at byte ${this.off}`);
  }
  u8(): number { this.need(1); return this.b.readUInt8(this.off++); }
  u16(): number { this.need(2); const v = this.b.readUInt16LE(this.off); this.off += 2; return v; }
  u32(): number { this.need(4); const v = this.b.readUInt32LE(this.off); this.off += 4; return v; }
  i32(): number { this.need(4); const v = this.b.readInt32LE(this.off); this.off += 4; return v; }
  u64(): number { this.need(8); const v = Number(this.b.readBigUInt64LE(this.off)); this.off += 8; return v; }
  str(): string { const n = this.u16(); this.need(n); const s = this.b.toString('utf8', this.off, this.off + n); this.off += n; return s; }
}

export interface MpHeader { length: number; type: number; requestId: number; status: number }

export function readHeader(f: Buffer): MpHeader {
  return { length: f.readUInt32LE(0), type: f.readUInt16LE(4), requestId: f.readUInt32LE(8), status: f.readInt32LE(12) };
}

function limited(what: string, s: string, max: number): string {
  const n = Buffer.byteLength(s, 'utf8');
  if (n === 0 || n > max) throw new RangeError(`${what} of ${n} bytes: must be 1..${max} bytes (the merge runtime refuses longer ones)`);
  return s;
}
const name = (s: string) => limited('callee name', s, MP_MAX_NAME);

export const encode = {
  load: (id: number, callee: string, library: string, isolation: Isolation, instances: number, stackKib = 0): Buffer =>
    new Writer().str(name(callee)).str(limited('library path', library, MP_MAX_PATH)).u8(ISOLATIONS.indexOf(isolation)).u8(0).u16(instances)
      .u32(stackKib).frame(MpType.LOAD, id),
  route: (id: number, callee: string, on: boolean): Buffer => new Writer().str(name(callee)).u8(on ? 1 : 0).frame(MpType.ROUTE, id),
  unload: (id: number, callee: string, timeoutMs: number): Buffer => new Writer().str(name(callee)).u32(timeoutMs).frame(MpType.UNLOAD, id),
  stats: (id: number): Buffer => new Writer().frame(MpType.STATS, id),
  /** The acknowledgement of FAULT `id`: the worker is out of dispatch (the faulting call waits for it). */
  faultAck: (id: number): Buffer => new Writer().frame(MpType.FAULT | MP_REPLY, id),
};

export interface Hello { pid: number; funcId: number; clientId: number; version: string }
export interface Fault {
  /** the fault's number in this runtime (the FAULT frame's request id; 0 from older runtimes, which wait for no acknowledgement) */
  id: number;
  callee: string; signal: number; address: string; callsBefore: number;
  /** the faulting instruction was in the callee's own code (false: in libc or elsewhere; undefined: an older runtime) */
  inCallee: boolean | undefined;
}
export interface CalleeStats {
  name: string; isolation: Isolation; routed: boolean; faulted: boolean; calls: number; failures: number; faults: number;
  totalCycles: number; maxCycles: number; inflight: number; instances: number; hist: number[];
}
export interface StatsReply { tscHz: number; callees: CalleeStats[] }

export function decodeHello(f: Buffer): Hello {
  const r = new MpReader(f);
  return { pid: r.u32(), funcId: r.u32(), clientId: r.u32(), version: r.str() };
}

export function decodeFault(f: Buffer): Fault {
  const r = new MpReader(f);
  const callee = r.str();
  const signal = r.i32();
  const address = `0x${f.readBigUInt64LE(MP_HEADER + 2 + Buffer.byteLength(callee) + 4).toString(16)}`;
  r.u64();
  const callsBefore = r.u64();
  const hasFlags = f.length > MP_HEADER + 2 + Buffer.byteLength(callee) + 20;
  return { id: readHeader(f).requestId, callee, signal, address, callsBefore, inCallee: hasFlags ? (r.u8() & MP_FAULT_IN_CALLEE) !== 0 : undefined };
}

/** A reply: its message, and for STATS the per-callee statistics. */
export function decodeReply(f: Buffer): { header: MpHeader; message: string; stats?: StatsReply } {
  const header = readHeader(f);
  const r = new MpReader(f);
  const message = r.str();
  if ((header.type & ~MP_REPLY) !== MpType.STATS || header.status !== 0) return { header, message };
  const tscHz = r.u64();
  const n = r.u16();
  const callees: CalleeStats[] = [];
  for (let i = 0; i < n; i++) {
    const name = r.str();
    const isolation = ISOLATIONS[r.u8()] ?? 'inline';
    const routed = r.u8() === 1;
    const faulted = r.u8() === 1;
    r.u8();
    const c: CalleeStats = {
      name, isolation, routed, faulted, calls: r.u64(), failures: r.u64(), faults: r.u64(), totalCycles: r.u64(),
      maxCycles: r.u64(), inflight: r.u32(), instances: r.u32(), hist: [],
    };
    for (let b = 0; b < MP_HIST; b++) c.hist.push(r.u32());
    callees.push(c);
  }
  return { header, message, stats: { tscHz, callees } };
}

/** Percentile (ns) from the log2-cycles histogram: the upper edge of the bucket holding it. */
export function histPercentileNs(hist: number[], tscHz: number, p: number): number {
  const total = hist.reduce((a, b) => a + b, 0);
  if (total === 0 || tscHz <= 0) return NaN;
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i];
    if (seen >= (p / 100) * total) return (2 ** (i + 1) / tscHz) * 1e9;
  }
  return NaN;
}

/** Cuts a stream into frames; throws on a length no peer sends. */
export class MpFrameReader {
  private buf: Buffer = Buffer.alloc(0);
  feed(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Buffer[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len < MP_HEADER || len > MP_MAX_FRAME) throw new RangeError(`merge frame length ${len} out of range`);
      if (this.buf.length < len) break;
      out.push(this.buf.subarray(0, len));
      this.buf = this.buf.subarray(len);
    }
    return out;
  }
}
