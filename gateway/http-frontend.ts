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
 */
import http from 'node:http';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import type { CallOutcome, Dispatcher } from './dispatcher.js';
import type { GatewayMetrics } from './metrics.js';
import { queryToJsonInput } from './qs-input.js';
import { collectBody } from '../common/body.js';
import { probeAnswer, type Readiness } from '../common/lifecycle.js';

const STATUS_TEXT: Record<number, string> = {
  200: 'OK', 400: 'Bad Request', 404: 'Not Found', 413: 'Payload Too Large', 500: 'Internal Server Error',
  503: 'Service Unavailable', 504: 'Gateway Timeout',
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

export function sendPlain(res: http.ServerResponse, status: number, body: Buffer | string, contentType = 'text/plain'): void {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  res.sendDate = false;
  res.writeHead(status, STATUS_TEXT[status] ?? '', [
    'Date', nightcoreDate(), 'Server', 'FaaS/0.1', 'Connection', 'Keep-Alive', 'Content-Type', contentType,
    'Content-Length', String(b.length),
  ]);
  res.end(b);
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
  /** other routes (admin API, …): return true when handled */
  extraRoutes?: (req: http.IncomingMessage, res: http.ServerResponse, path: string, query: string) => boolean;
  /** for GET /readyz; absent: always ready */
  ready?: () => Readiness;
}

export function createHttpFrontend(o: HttpFrontendOptions): http.Server {
  const server = http.createServer({ maxHeaderSize: 80 * 1024, keepAliveTimeout: 120_000, requestTimeout: 0 }, (req, res) => {
    handle(o, req, res);
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 60_000;
  server.on('clientError', (err, socket) => {
    o.log.debug({ err: err.message }, 'malformed HTTP request');
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  return server;
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
  void collectBody(req, o.maxBodyBytes).then((r) => {
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
