/**
 * The admin API's router: a table of routes (method, path template, schemas,
 * responses, handler) that both answers requests and, through
 * admin-openapi.ts, is the OpenAPI document — so a route cannot exist
 * undocumented, and a documented rule is the rule that runs.
 *
 * Order of checks, each with its own status: a bad percent-escape in the path
 * (400), no route for the path (404), not this method (405 with Allow), the
 * token (403 when the API is disabled, 401 when missing or wrong), path and
 * query parameters (400 naming the field), the body (413 over the limit, 408
 * when not received in time, 400 naming the field), then the handler.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import type { Logger } from '../common/log.js';
import { check, type FieldError } from './admin-schemas.js';

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
export const METHODS: readonly Method[] = ['GET', 'POST', 'PUT', 'DELETE'];

export interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

export interface RouteContext {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  params: Record<string, string>;
  query: Record<string, number | string>;
  /** parsed JSON for json bodies, the text for text bodies */
  body: unknown;
}

export interface ResponseSpec {
  description: string;
  /** a schema name from admin-schemas.ts; absent for streams */
  schema?: string;
  mediaType?: string;
}

export interface QuerySpec {
  /** a schema name from admin-schemas.ts (numbers in the query are given to it as numbers) */
  schema: string;
  description: string;
}

export interface Route {
  method: Method;
  /** OpenAPI template under the prefix, e.g. /merges/{caller}/{callee} */
  path: string;
  operationId: string;
  summary: string;
  /** no token needed (documentation, nothing that acts or reveals the cluster) */
  public?: boolean;
  /** path parameter -> schema name */
  params?: Record<string, string>;
  query?: Record<string, QuerySpec>;
  body?: { kind: 'json' | 'text'; schema: string; mediaTypes: readonly string[]; example: unknown };
  responses: Record<number, ResponseSpec>;
  /** returns the reply, or undefined when it answered on ctx.res itself (streams) */
  handler(ctx: RouteContext): Promise<Reply | undefined> | Reply | undefined;
}

export interface RouterOptions {
  prefix: string;
  token: string;
  log: Logger;
  maxBodyBytes: number;
  bodyTimeoutMs: number;
}

/** Past the body limit we keep reading (and dropping) this much more, so the client sees the 413 instead of a reset. */
const DRAIN_AFTER_LIMIT = 8 << 20;

/** One JSON answer, never cached. */
export function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const b = Buffer.from(JSON.stringify(body, null, 1) + '\n');
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(b.length), 'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff', ...headers,
  });
  res.end(b);
}

function invalid(where: string, errors: FieldError[]): Reply {
  return { status: 400, body: { error: `invalid ${where}: ${errors.map((e) => `${e.field} ${e.message}`).join('; ')}`, errors } };
}

type BodyOutcome = { ok: true; body: Buffer } | { ok: false; status: 408 | 413; error: string };

/** Reads the body up to `limit` bytes within `timeoutMs`; past the limit answers early and keeps draining a bounded amount. */
function readBody(req: http.IncomingMessage, limit: number, timeoutMs: number): Promise<BodyOutcome> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (o: BodyOutcome) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(o);
    };
    const timer = setTimeout(() => finish({ ok: false, status: 408, error: `the request body did not arrive within ${timeoutMs} ms` }), timeoutMs);
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit + DRAIN_AFTER_LIMIT) return void req.destroy();
      if (done) return;
      if (size > limit) {
        chunks.length = 0;
        finish({ ok: false, status: 413, error: `the request body is over the limit of ${limit} bytes` });
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => finish({ ok: true, body: Buffer.concat(chunks) }));
    req.on('error', () => finish({ ok: false, status: 408, error: 'the request body was cut short' }));
    req.on('close', () => {
      if (!req.complete) finish({ ok: false, status: 408, error: 'the request body was cut short' });
    });
  });
}

function drain(req: http.IncomingMessage, cap: number): void {
  let size = 0;
  req.on('data', (c: Buffer) => {
    size += c.length;
    if (size > cap) req.destroy();
  });
}

interface Matched {
  route: Route | undefined;
  allowed: Method[];
  params: Record<string, string>;
}

export class AdminRouter {
  private readonly tokenDigest: Buffer | undefined;

  constructor(readonly routes: Route[], private readonly o: RouterOptions) {
    this.tokenDigest = o.token ? createHash('sha256').update(o.token).digest() : undefined;
  }

  /** Constant time whatever the lengths: compares digests of the presented and the configured token. */
  private authorized(req: http.IncomingMessage): boolean {
    const m = /^Bearer ([\x21-\x7e]+)$/.exec(req.headers.authorization ?? '');
    if (!m || !this.tokenDigest) return false;
    return timingSafeEqual(createHash('sha256').update(m[1]).digest(), this.tokenDigest);
  }

  private match(segments: string[], method: string): Matched {
    const allowed: Method[] = [];
    let found: Matched | undefined;
    for (const r of this.routes) {
      const tpl = r.path.split('/').slice(1);
      if (tpl.length !== segments.length) continue;
      const params: Record<string, string> = {};
      const ok = tpl.every((t, i) => {
        if (t.startsWith('{')) {
          params[t.slice(1, -1)] = segments[i];
          return segments[i] !== '';
        }
        return t === segments[i];
      });
      if (!ok) continue;
      allowed.push(r.method);
      if (r.method === method && !found) found = { route: r, allowed, params };
    }
    return found ?? { route: undefined, allowed, params: {} };
  }

  /** The route hook for the HTTP front end: true when the path is the API's. */
  handle = (req: http.IncomingMessage, res: http.ServerResponse, path: string, rawQuery: string): boolean => {
    const p = this.o.prefix;
    if (path !== p && !path.startsWith(p + '/')) return false;
    this.dispatch(req, res, path.slice(p.length + 1), rawQuery).then((reply) => {
      if (reply) this.answer(req, res, reply.status, reply.body, reply.headers);
    }, (err: Error) => {
      this.o.log.error({ path, method: req.method, err: err.message }, 'admin request failed');
      this.answer(req, res, 500, { error: `internal error: ${err.message}` });
    });
    return true;
  };

  /** Answers; a body nobody read is drained (bounded) so the client sees the answer rather than a reset. */
  private answer(req: http.IncomingMessage, res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    if (!req.complete && req.listenerCount('data') === 0) drain(req, this.o.maxBodyBytes + DRAIN_AFTER_LIMIT);
    sendJson(res, status, body, headers);
  }

  private async dispatch(req: http.IncomingMessage, res: http.ServerResponse, rest: string, rawQuery: string): Promise<Reply | undefined> {
    const method = req.method ?? '';
    const segments: string[] = [];
    for (const [i, s] of rest.split('/').entries()) {
      try {
        segments.push(decodeURIComponent(s));
      } catch {
        return invalid('path', [{ field: `path[${i}]`, message: `"${s.slice(0, 80)}" has a bad percent-escape` }]);
      }
    }
    const { route, allowed, params } = this.match(segments, method);
    const shown = `${this.o.prefix}/${rest.slice(0, 200)}`;
    if (!route && allowed.length === 0) return { status: 404, body: { error: `no admin route ${shown}` } };
    if (!route) return { status: 405, body: { error: `${method.slice(0, 20)} is not allowed on ${shown} (allowed: ${allowed.join(', ')})` }, headers: { Allow: allowed.join(', ') } };
    if (!route.public) {
      if (!this.tokenDigest) return { status: 403, body: { error: 'the admin API is disabled: start the gateway with --admin_token or NIGHTFUSE_ADMIN_TOKEN' } };
      if (!this.authorized(req)) return { status: 401, body: { error: 'missing or wrong admin token (Authorization: Bearer <token>)' } };
    }
    for (const [name, schema] of Object.entries(route.params ?? {})) {
      const errors = check(schema, params[name], `path.${name}`);
      if (errors) return invalid('path', errors);
    }
    const query: Record<string, number | string> = {};
    if (route.query) {
      const q = new URLSearchParams(rawQuery);
      for (const [name, spec] of Object.entries(route.query)) {
        const v = q.get(name);
        if (v === null) continue;
        const value = /^-?\d{1,15}$/.test(v) ? Number(v) : v;
        const errors = check(spec.schema, value, `query.${name}`);
        if (errors) return invalid('query', errors);
        query[name] = value;
      }
    }
    let body: unknown;
    if (route.body) {
      const declared = Number(req.headers['content-length'] ?? 0);
      if (declared > this.o.maxBodyBytes + DRAIN_AFTER_LIMIT) {
        return { status: 413, body: { error: `the request body (${declared} bytes declared) is over the limit of ${this.o.maxBodyBytes} bytes` } };
      }
      const r = await readBody(req, this.o.maxBodyBytes, this.o.bodyTimeoutMs);
      // A body that is late stays late: close the connection after the answer.
      if (!r.ok) return { status: r.status, body: { error: r.error }, headers: r.status === 408 ? { Connection: 'close' } : {} };
      const text = r.body.toString('utf8');
      if (route.body.kind === 'json') {
        try {
          body = JSON.parse(text);
        } catch (err) {
          return invalid('body', [{ field: 'body', message: `is not valid JSON (${(err as Error).message.slice(0, 120)})` }]);
        }
        const errors = check(route.body.schema, body, 'body');
        if (errors) return invalid('body', errors);
      } else body = text;
    }
    return route.handler({ req, res, params, query, body });
  }
}
