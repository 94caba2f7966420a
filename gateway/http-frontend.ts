/**
 * HTTP/1.1 front end, as Nightcore's gateway (spec §3.2): POST (and GET where
 * allowHttpGet) /function/<name>; origin- or absolute-form targets; input is
 * the body or, with qsAsInput, the query as JSON; 200 with the output, 404 for
 * anything unknown, 500 for failure or no node; Nightcore's exact header block.
 *
 * Nightfuse additions: 413 over --max_body_bytes, 504 after --call_timeout_ms,
 * GET /metrics (Prometheus text), GET /healthz (alive) and /readyz (a node
 * can serve; 503 with the reason otherwise), and an admin API mounted by the
 * gateway under /admin/ when enabled.
 *
 * Connection handling departs from Nightcore (which keeps every socket open
 * forever): `Connection: close` and HTTP/1.0 (unless it asks for keep-alive)
 * get `Connection: close` and the socket is closed after the answer; headers,
 * bodies, idle keep-alive and stalled writes are timed out; connections are
 * capped and header blocks bounded (HttpLimits). Pipelined requests are
 * answered in order, and a connection stops being read while MAX_PIPELINED
 * answers are outstanding. Timeouts ride on node's own per-server sweep and
 * per-socket timer: nothing per request.
 */
import http from 'node:http';
import type net from 'node:net';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import type { CallOutcome, Dispatcher } from './dispatcher.js';
import type { GatewayMetrics } from './metrics.js';
import { queryToJsonInput } from './qs-input.js';
import { collectBody } from '../common/body.js';
import { probeAnswer, type Readiness } from '../common/lifecycle.js';
import { attachFastPath, FastPath } from './http-fast.js';

export interface HttpLimits {
  /** request headers must be complete this long after the request's first byte (a new connection's: its accept) */
  headerTimeoutMs: number;
  /** the whole request must be in within headerTimeoutMs + bodyTimeoutMs of its first byte; 0: no body deadline */
  bodyTimeoutMs: number;
  /** a connection with no request in progress, or a response that makes no progress, is closed after this; 0: never */
  idleTimeoutMs: number;
  /** accepted connections at once; more are closed at accept, unread; 0: no cap */
  maxConnections: number;
  /** request line + headers (Nightcore's http_parser limit: 80 KiB) */
  maxHeaderBytes: number;
}

export const HTTP_LIMITS: HttpLimits = {
  headerTimeoutMs: 10_000, bodyTimeoutMs: 30_000, idleTimeoutMs: 60_000, maxConnections: 1024, maxHeaderBytes: 80 * 1024,
};

/** Answers a connection may owe before we stop reading it (bounds what one pipelining peer can queue). */
export const MAX_PIPELINED = 32;

const STATUS_TEXT: Record<number, string> = {
  200: 'OK', 400: 'Bad Request', 404: 'Not Found', 408: 'Request Timeout', 413: 'Payload Too Large',
  431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const EMPTY = Buffer.alloc(0);

let cachedDate = '';
let cachedSecond = -1;
/** RFC 1123 with a numeric zone, as Nightcore's gateway writes it: "Sun, 15 Aug 2021 10:11:12 +0000". */
export function nightcoreDate(now = Date.now()): string {
  const sec = Math.floor(now / 1000);
  if (sec !== cachedSecond) {
    const d = new Date(sec * 1000);
    const p = (n: number) => String(n).padStart(2, '0');
    cachedDate = `${DAYS[d.getUTCDay()]}, ${p(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ` +
      `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
    cachedSecond = sec;
  }
  return cachedDate;
}

/** Nightcore's header block, in its order; `Connection: close` only where the connection ends after the answer. */
function headerBlock(keepAlive: boolean, contentType: string, length: number): string[] {
  return ['Date', nightcoreDate(), 'Server', 'FaaS/0.1', 'Connection', keepAlive ? 'Keep-Alive' : 'close',
    'Content-Type', contentType, 'Content-Length', String(length)];
}

export function sendPlain(res: http.ServerResponse, status: number, body: Buffer | string, contentType = 'text/plain'): void {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  res.sendDate = false;
  // shouldKeepAlive is node's reading of the request: false for `Connection: close` and for HTTP/1.0 without keep-alive.
  res.writeHead(status, STATUS_TEXT[status] ?? '', headerBlock(res.shouldKeepAlive, contentType, b.length));
  res.end(b);
}

/** The same block as raw bytes, for answers written where node has no response object (parse errors, timeouts). */
function rawAnswer(status: number, text: string): string {
  const h = headerBlock(false, 'text/plain', Buffer.byteLength(text));
  let out = `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\n`;
  for (let i = 0; i < h.length; i += 2) out += `${h[i]}: ${h[i + 1]}\r\n`;
  return `${out}\r\n${text}`;
}

export function outcomeStatus(o: CallOutcome): number {
  switch (o.kind) {
    case 'ok': return 200;
    case 'timeout': return 504;
    default: return 500;
  }
}

export interface HttpFrontendOptions {
  config: FuncConfig;
  dispatcher: Dispatcher;
  metrics: GatewayMetrics;
  log: Logger;
  maxBodyBytes: number;
  limits?: Partial<HttpLimits>;
  /** other routes (admin API, …): return true when handled */
  extraRoutes?: (req: http.IncomingMessage, res: http.ServerResponse, path: string, query: string) => boolean;
  /** for GET /readyz; absent: always ready */
  ready?: () => Readiness;
  /** false while the gateway drains: function calls then go to extraRoutes' refusal, not the fast path */
  acceptingCalls?: () => boolean;
}

export function createHttpFrontend(o: HttpFrontendOptions): http.Server {
  const l = { ...HTTP_LIMITS, ...o.limits };
  const shortest = Math.min(...[l.headerTimeoutMs, l.bodyTimeoutMs].filter((t) => t > 0), 4000);
  const server = http.createServer({
    maxHeaderSize: l.maxHeaderBytes,
    requireHostHeader: false, // Nightcore ignores request headers; node would answer 400 itself
    headersTimeout: l.headerTimeoutMs,
    requestTimeout: l.bodyTimeoutMs > 0 ? l.headerTimeoutMs + l.bodyTimeoutMs : 0,
    keepAliveTimeout: l.idleTimeoutMs,
    // node checks both deadlines for all connections in one sweep: this is their resolution
    connectionsCheckingInterval: Math.max(10, Math.floor(shortest / 4)),
  }, (req, res) => handle(o, req, res));
  // One inactivity timer per socket (node's): idle keep-alive (node adds 1 s to it) and stalled response writes.
  server.timeout = l.idleTimeoutMs;
  server.on('timeout', (socket: Sock) => {
    const pending = socket._httpMessage;
    // waiting for the function (the request is in, nothing written yet): --call_timeout_ms bounds that
    if (pending && pending.req.complete && !pending.headersSent) socket.setTimeout(l.idleTimeoutMs);
    else socket.destroy();
  });
  if (l.maxConnections > 0) server.maxConnections = l.maxConnections;
  // Plain function calls take the fast path; it hands every other connection to node:http (http-fast.ts).
  const nodeListeners = server.listeners('connection') as ((s: net.Socket) => void)[];
  server.removeAllListeners('connection');
  const fast = new FastPath({
    config: o.config, dispatcher: o.dispatcher, metrics: o.metrics, maxBodyBytes: o.maxBodyBytes, limits: l, accepting: o.acceptingCalls,
    handOff: (s) => { for (const f of nodeListeners) f.call(server, s); },
  });
  server.on('connection', (s: net.Socket) => fast.accept(s));
  attachFastPath(server, fast);
  const closeAll = server.closeAllConnections.bind(server);
  server.closeAllConnections = () => {
    fast.closeAll();
    closeAll();
  };
  const closeIdle = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {
    fast.closeIdle();
    closeIdle();
  };
  server.on('drop', (d?: { remoteAddress?: string }) => o.log.debug({ peer: d?.remoteAddress, max: l.maxConnections }, 'HTTP connection refused: over --max_connections'));
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Sock) => onClientError(o.log, l, err, socket));
  return server;
}

const kConn = Symbol('nightfuse.httpConn');

/** What we keep per connection, made only once a connection pipelines or fails. */
interface ConnState {
  queued: number;
  failed: boolean;
  /** requests parsed past MAX_PIPELINED (node parses a whole read at once): run as earlier answers go out */
  deferred: (() => void)[];
}

/** The node internals this module leans on, in one place (a future parser replaces them). */
type Sock = net.Socket & {
  [kConn]?: ConnState;
  _httpMessage?: http.ServerResponse | null;
  _paused?: boolean;
  parser?: { resume(): void } | null;
};

function connState(s: Sock): ConnState {
  return (s[kConn] ??= { queued: 0, failed: false, deferred: [] });
}

// node's own pipelining backpressure flag: set, node does not resume the socket behind our back.
function stopReading(s: Sock): void {
  if (s._paused) return;
  s._paused = true;
  s.pause();
}

function startReading(s: Sock): void {
  if (!s._paused) return;
  s._paused = false;
  s.parser?.resume();
  s.resume();
}

/**
 * A request parsed while an earlier one on its connection is unanswered.
 * Returns false when it must wait: `run` is called once an earlier answer is out.
 */
function pipelined(sock: Sock, res: http.ServerResponse, run: () => void): boolean {
  const st = connState(sock);
  const now = ++st.queued <= MAX_PIPELINED;
  if (!now) st.deferred.push(run);
  if (st.queued >= MAX_PIPELINED) stopReading(sock);
  res.once('close', () => {
    st.queued--;
    st.deferred.shift()?.();
    if (st.queued < MAX_PIPELINED && !st.failed) startReading(sock);
  });
  return now;
}

/**
 * A parse error or timeout. Answers still owed on the connection go out first,
 * in order; then the error answer (none after `Connection: close`: the socket
 * is already closing and the data that follows is ignored) and the socket closes.
 */
function onClientError(log: Logger, l: HttpLimits, err: NodeJS.ErrnoException, socket: Sock): void {
  const st = connState(socket);
  if (st.failed) return;
  st.failed = true;
  stopReading(socket);
  log.debug({ err: err.code ?? err.message }, 'HTTP connection error');
  const finish = () => {
    const owed = socket._httpMessage;
    // owed: the answer to a request received whole; the request that failed (incomplete) is owed the error instead
    if (owed && (owed.req.complete || owed.headersSent)) {
      owed.once('finish', finish); // node hands the socket to the next queued answer before this runs
      return;
    }
    if (!socket.writable) return void socket.destroySoon(); // after `Connection: close` node is already closing it
    socket.write(errorAnswer(l, err));
    socket.destroySoon();
    const t = setTimeout(() => socket.destroy(), 1000).unref(); // a peer that does not read gets no longer
    socket.once('close', () => clearTimeout(t));
  };
  finish();
}

export function errorAnswer(l: HttpLimits, err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return rawAnswer(408, `request not received in time: headers within ${l.headerTimeoutMs} ms` +
        (l.bodyTimeoutMs > 0 ? `, the whole request within ${l.headerTimeoutMs + l.bodyTimeoutMs} ms` : '') + '\n');
    case 'HPE_HEADER_OVERFLOW':
      return rawAnswer(431, `request line and headers over the limit of ${l.maxHeaderBytes} bytes\n`);
    default:
      return rawAnswer(400, `malformed HTTP request (${err.code ?? 'parse error'})\n`);
  }
}

function splitTarget(url: string): { path: string; query: string } {
  let target = url;
  if (!target.startsWith('/')) {
    // absolute-form: http://host:port/path?query
    const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?#]*/.exec(target);
    target = m ? target.slice(m[0].length) || '/' : target;
  }
  const hash = target.indexOf('#');
  if (hash >= 0) target = target.slice(0, hash);
  const q = target.indexOf('?');
  return q >= 0 ? { path: target.slice(0, q), query: target.slice(q + 1) } : { path: target, query: '' };
}

function handle(o: HttpFrontendOptions, req: http.IncomingMessage, res: http.ServerResponse): void {
  // node queues this answer behind an unanswered one
  if (res.socket === null && !pipelined(req.socket as Sock, res, () => res.destroyed || serve(o, req, res))) return;
  serve(o, req, res);
}

function serve(o: HttpFrontendOptions, req: http.IncomingMessage, res: http.ServerResponse): void {
  const { path, query } = splitTarget(req.url ?? '/');
  const method = req.method ?? '';
  if (o.extraRoutes?.(req, res, path, query)) return;
  if (method === 'GET' && path === '/metrics') {
    void o.metrics.render().then((text) => sendPlain(res, 200, text, 'text/plain; version=0.0.4'));
    return;
  }
  const probe = method === 'GET' ? probeAnswer(path, o.ready ?? (() => ({ ok: true, reason: 'serving' }))) : undefined;
  if (probe) {
    sendPlain(res, probe.status, probe.body);
    return;
  }
  const notFound = () => {
    req.resume();
    sendPlain(res, 404, EMPTY);
  };
  if ((method !== 'GET' && method !== 'POST') || !path.startsWith('/function/')) return notFound();
  const name = path.slice('/function/'.length);
  const entry = o.config.byName.get(name);
  if (!entry || (method === 'GET' && !entry.allowHttpGet)) return notFound();

  const declared = Number(req.headers['content-length'] ?? 0);
  if (o.maxBodyBytes > 0 && declared > o.maxBodyBytes) {
    o.metrics.request(name, 413, 0);
    sendPlain(res, 413, `request body of ${declared} bytes exceeds the limit of ${o.maxBodyBytes}\n`);
    req.resume();
    return;
  }
  void collectBody(req, o.maxBodyBytes, { early: true }).then((r) => {
    if (!r.ok) {
      o.metrics.request(name, 413, 0);
      sendPlain(res, 413, `request body exceeds the limit of ${o.maxBodyBytes} bytes\n`);
      return;
    }
    const body = r.body;
    let input = body;
    if (entry.qsAsInput) {
      if (body.length > 0) o.log.debug({ func: name }, 'qsAsInput: request body ignored');
      input = queryToJsonInput(query);
    }
    const started = process.hrtime.bigint();
    const { promise, discard } = o.dispatcher.call(entry.funcId, 0, input);
    res.on('close', () => {
      if (!res.writableFinished) discard();
    });
    void promise.then((out) => {
      const status = outcomeStatus(out);
      o.metrics.request(name, status, Number(process.hrtime.bigint() - started) / 1e9);
      if (res.destroyed) return;
      sendPlain(res, status, out.kind === 'ok' ? out.output : EMPTY);
    });
  }, () => {
    if (!res.destroyed) res.destroy();
  });
}
