/**
 * The HTTP front end's fast path: the plain function call — keep-alive
 * HTTP/1.1 `POST /function/<name>` (or GET where allowed) with a
 * Content-Length body, origin-form target, no query — read, dispatched and
 * answered straight on the socket, with no IncomingMessage, ServerResponse,
 * stream or promise per request. node:http's per-request machinery was most
 * of the gateway's CPU per call (BENCHMARKS.md).
 *
 * Anything else on a connection — another route, an unknown function, a
 * query, Expect, Transfer-Encoding, Connection: close, HTTP/1.0, a request
 * head not complete in what has arrived, a body over the limit — and the
 * connection is handed to node:http (http-frontend.ts) for good, with the
 * unread bytes put back, once every answer the fast path owes it is out. So
 * every behaviour outside the plain call stays node's and http-frontend.ts's,
 * and the plain call keeps their rules: Nightcore's header block byte for
 * byte, answers in order, reading stops while MAX_PIPELINED answers are owed,
 * header/body/idle deadlines (408 and close, like node's), the same metrics.
 */
import net from 'node:net';
import type { FuncConfig } from '../common/func-config.js';
import { type PlainHead, parsePlainHead } from './http-fast-head.js';
import type { CallHandle, CallOutcome, Dispatcher } from './dispatcher.js';
import { errorAnswer, type HttpLimits, MAX_PIPELINED, nightcoreDate, outcomeStatus } from './http-frontend.js';
import type { GatewayMetrics } from './metrics.js';
import { writeNow } from '../common/write-now.js';
import { pushCopiesFrom, readAcceptedIntoShared } from '../common/shared-read.js';

export interface FastPathOptions {
  config: FuncConfig;
  dispatcher: Dispatcher;
  metrics: GatewayMetrics;
  maxBodyBytes: number;
  limits: HttpLimits;
  /** false: take no call (draining); node:http's routes refuse them */
  accepting?: () => boolean;
  /** gives the socket to node:http (its bytes already put back) */
  handOff(socket: net.Socket): void;
}

const STATUS_LINE: Record<number, string> = { 200: 'HTTP/1.1 200 OK', 500: 'HTTP/1.1 500 Internal Server Error', 504: 'HTTP/1.1 504 Gateway Timeout' };
/** answers up to this size leave in one write (head and body copied together); larger ones in one writev */
const COPY_LIMIT = 16 * 1024;
const EMPTY = Buffer.alloc(0);
const REQUEST_TIMEOUT = { code: 'ERR_HTTP_REQUEST_TIMEOUT' } as NodeJS.ErrnoException;

/**
 * The answer's head up to its Content-Length value, per status, as bytes:
 * rebuilt when the Date's second changes (nightcoreDate caches the text), so an
 * answer copies it instead of building and encoding a string.
 */
const prefixes = new Map<number, Buffer>();
let prefixDate = '';
function headPrefix(status: number): Buffer {
  const date = nightcoreDate();
  if (date !== prefixDate) {
    prefixes.clear();
    prefixDate = date;
  }
  let p = prefixes.get(status);
  if (!p) {
    p = Buffer.from(`${STATUS_LINE[status]}\r\nDate: ${date}\r\nServer: FaaS/0.1\r\nConnection: Keep-Alive\r\nContent-Type: text/plain\r\nContent-Length: `, 'latin1');
    prefixes.set(status, p);
  }
  return p;
}

/**
 * Parses a plain request head at `off` (http-fast-head.ts); undefined when it
 * is not one (or not complete yet): the caller then hands the connection to node:http.
 */
function parseHead(o: FastPathOptions, buf: Buffer, off: number): PlainHead | undefined {
  if (o.accepting && !o.accepting()) return undefined;
  return parsePlainHead(o, buf, off);
}

/** One answer owed on a connection, in request order. */
class Owed {
  out: Buffer | undefined;
  status = 0;
  call: CallHandle | undefined;
  /** `started`: performance.now() (a number: hrtime.bigint() allocates twice per request) */
  constructor(readonly conn: FastConn, readonly name: string, readonly started: number) {}
  /** the dispatcher's callback: bound once per answer, no closure per call beyond it */
  readonly done = (o: CallOutcome): void => {
    const status = outcomeStatus(o);
    this.conn.fp.o.metrics.request(this.name, status, (performance.now() - this.started) / 1e3);
    this.status = status;
    this.out = o.kind === 'ok' ? o.output : EMPTY;
    this.conn.flush();
  };
}

class FastConn {
  buf: Buffer = EMPTY;
  /** `buf` is a view of SHARED_READ_BUFFER (valid only during the read that filled it) */
  bufShared = false;
  /** bytes of the request in `buf` still to come */
  missing = 0;
  /**
   * While a body is still coming, `buf` is a view of this: the request's bytes
   * so far, each read copied once to its place. It grows by doubling towards
   * the request's size, so what it holds is never more than twice what came
   * (a Content-Length alone reserves nothing).
   */
  private pending: Buffer | undefined;
  readonly owed: Owed[] = [];
  /** ms timestamps for the deadlines the sweep checks */
  requestStart = 0;
  lastActive: number;
  writtenAt = 0;
  /** bytes the kernel has taken, and when that last grew: a peer not reading our answers is timed by these */
  lastSent = 0;
  sentAt = 0;
  /** our answers back up (the peer is not reading): no more requests are read until they drain */
  writeBlocked = false;
  /** handing over to node:http once nothing is owed */
  leaving = false;
  /** the peer has ended its side */
  ended = false;
  parsing = false;
  gone = false;
  constructor(readonly fp: FastPath, readonly socket: net.Socket, now: number) {
    this.lastActive = now;
    this.requestStart = now; // a new connection's first request is timed from its accept, as node does
  }

  /** `shared`: `chunk` is a view of SHARED_READ_BUFFER (common/shared-read.ts), to be copied if kept past this call. */
  onData(chunk: Buffer, shared: boolean): void {
    if (this.gone) return;
    const now = Date.now();
    this.lastActive = now;
    if (this.buf.length === 0) this.requestStart = now;
    if (this.missing > 0) {
      // a body still coming: each read copied once, to its place in the request's buffer
      const n = Math.min(chunk.length, this.missing);
      const at = this.buf.length;
      const p = this.room(n);
      chunk.copy(p, at, 0, n);
      this.buf = p.subarray(0, at + n);
      this.missing -= n;
      if (this.missing > 0) return;
      this.pending = undefined;
      // bytes of the next request behind the body (pipelined): rare, joined
      if (n < chunk.length) this.buf = Buffer.concat([this.buf, chunk.subarray(n)]);
      this.bufShared = false;
    } else if (this.buf.length === 0) {
      this.buf = chunk;
      this.bufShared = shared;
    } else {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.bufShared = false;
    }
    this.parse();
    if (this.bufShared && this.buf.length > 0) {
      // kept for the next read: a body still to come starts the request's own buffer
      if (this.missing > 0) this.room(0);
      else this.buf = Buffer.from(this.buf);
    }
    this.bufShared = false;
  }

  /** The request's buffer, with room for `extra` more bytes after `buf` (which becomes a view of it). */
  private room(extra: number): Buffer {
    const have = this.buf.length;
    const p = this.pending;
    if (p && this.buf.buffer === p.buffer && this.buf.byteOffset === p.byteOffset && have + extra <= p.length) return p;
    const total = have + this.missing;
    const size = Math.min(total, Math.max(2 * (have + extra), 64 * 1024));
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, have);
    this.pending = next;
    this.buf = next.subarray(0, have);
    return next;
  }

  /** Takes every complete plain request in the buffer; stops at the first other thing. */
  parse(): void {
    if (this.parsing || this.missing > 0) return; // an answer given synchronously (no node) flushes inside the loop below
    this.parsing = true;
    try {
      this.parseLoop();
    } finally {
      this.parsing = false;
    }
    if (this.leaving && this.owed.length === 0) this.handOff();
    else if (this.leaving) this.socket.pause();
    else if (this.ended && this.owed.length === 0) this.finishEnded();
  }

  private parseLoop(): void {
    const o = this.fp.o;
    let off = 0;
    while (off < this.buf.length && !this.leaving && !this.ended) {
      if (this.owed.length >= MAX_PIPELINED || this.writeBlocked) {
        this.socket.pause();
        break;
      }
      const h = parseHead(o, this.buf, off);
      if (!h) {
        this.leaving = true;
        break;
      }
      if (this.buf.length - off < h.headLen + h.bodyLen) {
        this.missing = h.headLen + h.bodyLen - (this.buf.length - off); // body still coming: the deadline sweep watches it
        break;
      }
      const bodyAt = off + h.headLen;
      // the body is copied out of the read buffer only when that buffer holds more than it
      const input = h.bodyLen === 0 ? EMPTY : (!this.bufShared && this.buf.length === h.bodyLen + h.headLen ? this.buf.subarray(bodyAt) : Buffer.from(this.buf.subarray(bodyAt, bodyAt + h.bodyLen)));
      off = bodyAt + h.bodyLen;
      this.fp.stats.requests++;
      const a = new Owed(this, h.entry.funcName, performance.now());
      this.owed.push(a);
      a.call = o.dispatcher.begin(h.entry.funcId, 0, input, a.done);
    }
    this.buf = off >= this.buf.length ? EMPTY : this.buf.subarray(off);
    if (off > 0 && this.buf.length > 0) this.requestStart = Date.now(); // the next request began in the same read
  }

  /** Writes the answers that are ready, in order. */
  flush(): void {
    if (this.gone) return;
    const s = this.socket;
    const wasFull = this.owed.length >= MAX_PIPELINED;
    let n = 0;
    while (n < this.owed.length && this.owed[n].out) n++;
    if (n === 0) return;
    if (n > 1) s.cork();
    for (let i = 0; i < n; i++) {
      const a = this.owed[i];
      const body = a.out!;
      const pre = headPrefix(a.status);
      const len = String(body.length);
      const headLen = pre.length + len.length + 4;
      const b = Buffer.allocUnsafe(body.length <= COPY_LIMIT ? headLen + body.length : headLen);
      pre.copy(b, 0);
      b.write(len, pre.length, 'latin1');
      b.writeUInt32BE(0x0d0a0d0a, headLen - 4); // "\r\n\r\n"
      if (body.length <= COPY_LIMIT) {
        body.copy(b, headLen);
        if (n === 1) writeNow(s, b);
        else s.write(b);
      } else {
        s.cork();
        s.write(b);
        s.write(body);
        s.uncork();
      }
    }
    if (n > 1) s.uncork();
    this.owed.splice(0, n);
    const now = Date.now();
    this.lastActive = now;
    this.writtenAt = now;
    if (s.writableNeedDrain && !this.writeBlocked) {
      // a peer that sends requests but does not read the answers must not make us hold them all
      this.writeBlocked = true;
      s.pause();
      s.once('drain', this.fp.onDrainOf);
    }
    if (this.owed.length > 0 || this.parsing || this.writeBlocked) return;
    this.goOn(wasFull || this.buf.length > 0);
  }

  /** Nothing owed any more: end, hand over, or read on (`readOn`: reading was paused or requests wait). */
  goOn(readOn: boolean): void {
    if (this.ended) this.finishEnded();
    else if (this.leaving) this.handOff();
    else if (readOn) {
      this.socket.resume();
      this.parse();
    }
  }

  handOff(): void {
    if (this.gone) return;
    this.gone = true;
    this.fp.conns.delete(this);
    this.fp.stats.handedOff++;
    const s = this.socket;
    s.pause();
    pushCopiesFrom(s);
    s.removeListener('data', this.fp.onDataOf);
    s.removeListener('end', this.fp.onEndOf);
    s.removeListener('close', this.fp.onCloseOf);
    s.removeListener('error', this.fp.onErrorOf);
    (s as FastSocket)[kFast] = undefined;
    if (this.bufShared) this.buf = Buffer.from(this.buf);
    this.pending = undefined;
    this.bufShared = false;
    if (this.buf.length > 0) s.unshift(this.buf);
    this.buf = EMPTY;
    // node:http reads through the JS stream then (not straight from the handle), so the bytes put back come first
    const handle = (s as unknown as { _handle?: { _consumed?: boolean } })._handle;
    if (handle) handle._consumed = true;
    this.fp.o.handOff(s);
    s.resume();
  }

  finishEnded(): void {
    this.close();
    this.socket.end();
  }

  /** The peer ended its side or the socket closed: calls still owed are no longer wanted. */
  close(): void {
    if (this.gone) return;
    this.gone = true;
    this.fp.conns.delete(this);
    for (const a of this.owed) a.call?.discard();
    this.owed.length = 0;
  }
}

const kFast = Symbol('nightfuse.fastConn');
const byServer = new WeakMap<object, FastPath>();

/** The fast path serving an HTTP front end's server. */
export function fastPathOf(server: object): FastPath | undefined {
  return byServer.get(server);
}

export function attachFastPath(server: object, fp: FastPath): void {
  byServer.set(server, fp);
}
type FastSocket = net.Socket & { [kFast]?: FastConn };

export class FastPath {
  readonly conns = new Set<FastConn>();
  /** requests answered here, and connections given to node:http (tests and diagnostics) */
  readonly stats = { requests: 0, handedOff: 0, connections: 0 };
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(readonly o: FastPathOptions) {}

  // One listener of each kind for every socket: no closures per connection.
  readonly onDataOf = function (this: FastSocket, chunk: Buffer): void {
    this[kFast]?.onData(chunk, false);
  };
  readonly onReadOf = function (this: FastSocket, n: number, buf: Uint8Array): boolean {
    this[kFast]?.onData((buf as Buffer).subarray(0, n), true);
    return true;
  };
  readonly onEndOf = function (this: FastSocket): void {
    const c = this[kFast];
    if (!c) return;
    // half-closed with answers owed: they still go out, then our side ends (node does the same)
    c.ended = true;
    c.leaving = false;
    if (c.owed.length === 0) c.finishEnded();
  };
  readonly onDrainOf = function (this: FastSocket): void {
    const c = this[kFast];
    if (!c || c.gone) return;
    c.writeBlocked = false;
    if (c.owed.length === 0 && !c.parsing) c.goOn(true); // reading was paused for the drain
  };
  readonly onCloseOf = function (this: FastSocket): void {
    this[kFast]?.close();
  };
  readonly onErrorOf = function (this: FastSocket): void {
    this[kFast]?.close();
    this.destroy();
  };

  accept(socket: net.Socket): void {
    this.stats.connections++;
    const c = new FastConn(this, socket, Date.now());
    (socket as FastSocket)[kFast] = c;
    this.conns.add(c);
    socket.setNoDelay(true);
    if (!readAcceptedIntoShared(socket, this.onReadOf)) socket.on('data', this.onDataOf);
    socket.on('end', this.onEndOf);
    socket.on('close', this.onCloseOf);
    socket.on('error', this.onErrorOf);
    if (!this.sweepTimer) {
      const l = this.o.limits;
      const shortest = Math.min(...[l.headerTimeoutMs, l.bodyTimeoutMs, l.idleTimeoutMs].filter((t) => t > 0), 4000);
      this.sweepTimer = setInterval(() => this.sweep(), Math.max(10, Math.floor(shortest / 4)));
      this.sweepTimer.unref();
    }
  }

  /** Deadlines of every fast connection, checked together (node's own scheme: nothing per request). */
  private sweep(): void {
    const now = Date.now();
    const l = this.o.limits;
    for (const c of this.conns) {
      const s = c.socket;
      if (s.writableLength > 0) {
        // a peer not reading our answers: timed by what the kernel takes (bytesWritten counts what is
        // still queued too), so answers added to the queue do not look like progress
        const sent = s.bytesWritten - s.writableLength;
        if (sent !== c.lastSent || c.sentAt === 0) {
          c.lastSent = sent;
          c.sentAt = now;
        } else if (l.idleTimeoutMs > 0 && now - c.sentAt > l.idleTimeoutMs) {
          c.close();
          s.destroy();
        }
        continue;
      }
      c.sentAt = 0;
      if (c.owed.length > 0) continue; // waiting for functions is bounded by --call_timeout_ms
      const receiving = c.buf.length > 0 || c.lastActive === c.requestStart && c.writtenAt === 0;
      if (receiving) {
        const deadline = c.buf.length > 0 && l.bodyTimeoutMs > 0 ? l.headerTimeoutMs + l.bodyTimeoutMs : l.headerTimeoutMs;
        if (now - c.requestStart > deadline) this.timeOut(c);
      } else if (l.idleTimeoutMs > 0 && now - c.lastActive > l.idleTimeoutMs + 1000) {
        c.close();
        s.destroy();
      }
    }
  }

  private timeOut(c: FastConn): void {
    c.close();
    const s = c.socket;
    if (!s.writable) return void s.destroy();
    s.write(errorAnswer(this.o.limits, REQUEST_TIMEOUT));
    s.destroySoon();
    setTimeout(() => s.destroy(), 1000).unref();
  }

  /** server.close(): connections that owe nothing go now (node's closeIdleConnections). */
  closeIdle(): void {
    for (const c of [...this.conns]) {
      if (c.owed.length > 0) continue;
      c.close();
      c.socket.destroy();
    }
  }

  /** Server shutdown: every connection the fast path still holds goes. */
  closeAll(): void {
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    for (const c of [...this.conns]) {
      c.close();
      c.socket.destroy();
    }
  }
}
