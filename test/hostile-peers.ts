/**
 * Tools for adversarial peers against a real gateway process: raw TCP
 * conversations, an HTTP/1.1 response reader, HTTP/2 frames with a literal
 * HPACK encoder and a seeded random generator (a process's RSS and FDs: adversary.ts usage()).
 */
import net from 'node:net';

/** mulberry32: small, fast, reproducible (print the seed in failures). */
export function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  return {
    next,
    int,
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)],
    bytes: (n: number) => Buffer.from(Array.from({ length: n }, () => int(0, 255))),
    chance: (p: number) => next() < p,
  };
}
export type Rng = ReturnType<typeof rng>;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A raw TCP peer that records everything it receives and when the server closed. */
export class RawPeer {
  readonly socket: net.Socket;
  private chunks: Buffer[] = [];
  closedAt = 0;
  readonly openedAt = Date.now();
  error = '';
  readonly closed: Promise<void>;
  private waiters: (() => void)[] = [];

  constructor(port: number, host = '127.0.0.1') {
    this.socket = net.connect(port, host);
    this.socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.wake();
    });
    this.socket.on('error', (e: NodeJS.ErrnoException) => (this.error = e.code ?? e.message));
    this.closed = new Promise((r) => this.socket.once('close', () => {
      this.closedAt = Date.now();
      this.wake();
      r();
    }));
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  get received(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  get isClosed(): boolean {
    return this.closedAt > 0;
  }

  connected(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.socket.connecting) return resolve();
      this.socket.once('connect', () => resolve());
      this.socket.once('close', () => reject(new Error(`connection closed before connect (${this.error})`)));
    });
  }

  write(data: Buffer | string): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  /** Sends `data` in up to `maxPieces` pieces cut at random points, with tiny gaps (parsers must not care where TCP cut). */
  async writeFragmented(data: Buffer, r: Rng, maxPieces = 24, maxGapMs = 2): Promise<void> {
    const cuts = [...new Set(Array.from({ length: r.int(1, maxPieces - 1) }, () => r.int(1, Math.max(1, data.length - 1))))].sort((a, b) => a - b);
    let at = 0;
    for (const cut of [...cuts, data.length]) {
      if (cut <= at) continue;
      this.write(data.subarray(at, cut));
      at = cut;
      await sleep(r.int(0, maxGapMs));
    }
  }

  /** Resolves when `cond` holds for what was received (or the peer closed), or after `ms`. */
  async until(cond: (got: Buffer) => boolean, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (cond(this.received)) return true;
      if (this.isClosed || Date.now() >= deadline) return cond(this.received);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Waits for the server to close; false if it did not within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    await Promise.race([this.closed, sleep(ms)]);
    return this.isClosed;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface HttpAnswer {
  status: number;
  /** header lines as sent, in order */
  head: string;
  headers: [string, string][];
  body: Buffer;
  /** the answer's exact bytes */
  raw: Buffer;
}

/** Splits received bytes into complete HTTP/1.1 answers (Content-Length framing, as every gateway answer has). */
export function parseAnswers(buf: Buffer): { answers: HttpAnswer[]; rest: Buffer } {
  const answers: HttpAnswer[] = [];
  let at = 0;
  for (;;) {
    const end = buf.indexOf('\r\n\r\n', at, 'latin1');
    if (end < 0) break;
    const head = buf.subarray(at, end).toString('latin1');
    const lines = head.split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3}) /.exec(lines[0]);
    if (!m) throw new Error(`not an HTTP answer: ${JSON.stringify(head.slice(0, 80))}`);
    const headers = lines.slice(1).map((l): [string, string] => {
      const c = l.indexOf(':');
      return [l.slice(0, c), l.slice(c + 1).trim()];
    });
    const cl = headers.find(([k]) => k.toLowerCase() === 'content-length');
    if (!cl) throw new Error(`answer without Content-Length: ${JSON.stringify(head)}`);
    const bodyStart = end + 4;
    const bodyEnd = bodyStart + Number(cl[1]);
    if (bodyEnd > buf.length) break;
    answers.push({ status: Number(m[1]), head, headers, body: buf.subarray(bodyStart, bodyEnd), raw: buf.subarray(at, bodyEnd) });
    at = bodyEnd;
  }
  return { answers, rest: buf.subarray(at) };
}

export function header(a: HttpAnswer, name: string): string | undefined {
  return a.headers.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];
}

// ---- HTTP/2 ----

export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
export const H2 = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PUSH_PROMISE: 5, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 } as const;
export const FLAG = { END_STREAM: 1, ACK: 1, END_HEADERS: 4, PADDED: 8, PRIORITY: 0x20 } as const;

export function h2frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK integer with an n-bit prefix (RFC 7541 §5.1). */
function hpackInt(value: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

/** Header block of literals without indexing, no Huffman: any peer can decode it, nothing is remembered. */
export function hpack(headers: [string, string][]): Buffer {
  const out: number[] = [];
  for (const [k, v] of headers) {
    const kb = Buffer.from(k, 'latin1');
    const vb = Buffer.from(v, 'latin1');
    out.push(0x00, ...hpackInt(kb.length, 7, 0), ...kb, ...hpackInt(vb.length, 7, 0), ...vb);
  }
  return Buffer.from(out);
}

export function grpcRequestHeaders(path: string, extra: [string, string][] = []): [string, string][] {
  return [[':method', 'POST'], [':scheme', 'http'], [':path', path], [':authority', 'x'], ['content-type', 'application/grpc'], ['te', 'trailers'], ...extra];
}

/** One length-prefixed gRPC message. */
export function grpcMessage(msg: Buffer): Buffer {
  const p = Buffer.alloc(5);
  p.writeUInt32BE(msg.length, 1);
  return Buffer.concat([p, msg]);
}

export interface H2Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

/** Splits received bytes into frames (after the server's own SETTINGS, there is no preface server-side). */
export function parseFrames(buf: Buffer): H2Frame[] {
  const frames: H2Frame[] = [];
  let at = 0;
  while (at + 9 <= buf.length) {
    const len = buf.readUIntBE(at, 3);
    if (at + 9 + len > buf.length) break;
    frames.push({ type: buf[at + 3], flags: buf[at + 4], streamId: buf.readUInt32BE(at + 5) & 0x7fffffff, payload: buf.subarray(at + 9, at + 9 + len) });
    at += 9 + len;
  }
  return frames;
}
