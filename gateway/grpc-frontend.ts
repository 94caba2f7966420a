/**
 * gRPC front end (spec §3.3): cleartext HTTP/2 with prior knowledge,
 * `/<Service>/<Method>` -> the `grpc:<Service>` entry with method_id =
 * index of Method in grpcMethods. The request message bytes are the input;
 * the output is returned as the response message. Header and framing rules,
 * status codes and the always-sent (possibly empty) response message follow
 * Nightcore's gateway. Additions: a grpc-message trailer on errors,
 * RESOURCE_EXHAUSTED over the body limit, DEADLINE_EXCEEDED on our timeout,
 * and short first DATA chunks are buffered (Nightcore's gateway aborts).
 *
 * Hostile peers (GrpcLimits): sessions end on protocol errors (node destroys them) and
 * dropped when the preface and SETTINGS do not arrive in time, when no stream
 * is open for the idle timeout (this also ends sessions nghttp2 stopped
 * reading after answering an error with GOAWAY, which node does not report),
 * and streams whose request is not in within the stream timeout are reset.
 * Streams per session are capped by the SETTINGS we send (32, as Nightcore),
 * request bytes buffered per session by a budget of one maximal message,
 * nghttp2's own state by maxSessionMemory. One sweep per server checks the
 * deadlines: no timer per stream.
 */
import http2 from 'node:http2';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import type { CallOutcome, Dispatcher } from './dispatcher.js';
import type { GatewayMetrics } from './metrics.js';
import { ByteBudget, collectBody } from '../common/body.js';

export const GrpcStatus = { OK: 0, UNKNOWN: 2, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, RESOURCE_EXHAUSTED: 8 } as const;

const ALLOWED_PSEUDO = new Set([':method', ':scheme', ':path', ':authority']);

export interface GrpcLimits {
  /** the client's preface and SETTINGS must arrive this long after accept */
  settingsTimeoutMs: number;
  /** a session with no open stream is closed (GOAWAY) after this; 0: never */
  idleTimeoutMs: number;
  /** a stream's request (headers to END_STREAM) must be in within this; 0: no deadline */
  streamTimeoutMs: number;
  /** accepted connections at once; more are closed at accept, unread; 0: no cap */
  maxConnections: number;
}

export const GRPC_LIMITS: GrpcLimits = { settingsTimeoutMs: 10_000, idleTimeoutMs: 60_000, streamTimeoutMs: 30_000, maxConnections: 1024 };

/** Nightcore's SETTINGS_MAX_CONCURRENT_STREAMS: the only setting our SETTINGS frame carries. */
const MAX_STREAMS = 32;

export interface GrpcFrontendOptions {
  config: FuncConfig;
  dispatcher: Dispatcher;
  metrics: GatewayMetrics;
  log: Logger;
  maxBodyBytes: number;
  limits?: Partial<GrpcLimits>;
}

/** Per session: what the sweep needs. */
interface SessionState {
  openedAt: number;
  settled: boolean;
  open: number;
  idleSince: number;
  closing: boolean;
  /** streams whose request is still arriving, with when it started */
  receiving: Map<http2.ServerHttp2Stream, number>;
  budget: ByteBudget;
}

function badRequest(stream: http2.ServerHttp2Stream): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ':status': 400, 'content-type': 'application/grpc' }, { endStream: true });
}

function checkHeaders(h: http2.IncomingHttpHeaders): { service: string; method: string } | string {
  for (const k of Object.keys(h)) if (k.startsWith(':') && !ALLOWED_PSEUDO.has(k)) return `pseudo-header ${k}`;
  if (h[':scheme'] !== 'http') return `:scheme ${h[':scheme']}`;
  if (h[':method'] !== 'POST') return `:method ${h[':method']}`;
  const ct = h['content-type'];
  if (ct !== undefined && ct !== 'application/grpc') return `content-type ${ct}`;
  if (h.te !== undefined && h.te !== 'trailers') return `te ${h.te}`;
  const enc = h['grpc-encoding'];
  if (enc !== undefined && enc !== 'identity') return `grpc-encoding ${enc}`;
  const parts = String(h[':path'] ?? '').split('/').filter((s) => s.length > 0);
  if (parts.length !== 2) return `:path ${h[':path']}`;
  return { service: parts[0], method: parts[1] };
}

function statusOf(o: CallOutcome): number {
  switch (o.kind) {
    case 'ok': return GrpcStatus.OK;
    case 'timeout': return GrpcStatus.DEADLINE_EXCEEDED;
    default: return GrpcStatus.UNKNOWN;
  }
}

const MESSAGES: Record<number, string> = {
  [GrpcStatus.UNKNOWN]: 'function failed or no node available',
  [GrpcStatus.DEADLINE_EXCEEDED]: 'call timed out in the gateway',
  [GrpcStatus.NOT_FOUND]: 'unknown service or method',
  [GrpcStatus.RESOURCE_EXHAUSTED]: 'request message too large',
};

/** Response: headers, one (maybe empty) length-prefixed message, then the status trailer. */
function reply(stream: http2.ServerHttp2Stream, status: number, message: Buffer): void {
  if (stream.destroyed || stream.closed) return;
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
  stream.on('wantTrailers', () => {
    const t: Record<string, string> = { 'grpc-status': String(status) };
    if (status !== 0 && MESSAGES[status]) t['grpc-message'] = MESSAGES[status];
    stream.sendTrailers(t);
  });
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  stream.write(prefix);
  stream.end(message);
}

export function createGrpcFrontend(o: GrpcFrontendOptions): http2.Http2Server {
  const l = { ...GRPC_LIMITS, ...o.limits };
  const server = http2.createServer({
    settings: { maxConcurrentStreams: MAX_STREAMS },
    maxSessionMemory: 10, // MiB of nghttp2 state per session (node's default, stated)
    maxSessionInvalidFrames: 100,
    maxSessionRejectedStreams: 100,
  });
  if (l.maxConnections > 0) server.maxConnections = l.maxConnections;
  const sessions = new Map<http2.ServerHttp2Session, SessionState>();
  const messageLimit = o.maxBodyBytes > 0 ? o.maxBodyBytes + 5 : 0;
  server.on('session', (session) => {
    const now = Date.now();
    const st: SessionState = {
      openedAt: now, settled: false, open: 0, idleSince: now, closing: false, receiving: new Map(),
      budget: new ByteBudget(messageLimit || 0x7fffffff),
    };
    sessions.set(session, st);
    session.once('remoteSettings', () => (st.settled = true));
    session.once('close', () => sessions.delete(session));
  });
  // node destroys a session on the errors it reports; the rest end at the idle timeout (sweep)
  server.on('sessionError', (err) => o.log.debug({ err: err.message }, 'gRPC session error: closed'));
  server.on('drop', (d?: { remoteAddress?: string }) => o.log.debug({ peer: d?.remoteAddress, max: l.maxConnections }, 'gRPC connection refused: over --max_connections'));
  const shortest = Math.min(...[l.settingsTimeoutMs, l.idleTimeoutMs, l.streamTimeoutMs].filter((t) => t > 0), 4000);
  const sweep = setInterval(() => sweepSessions(sessions, l), Math.max(10, Math.floor(shortest / 4)));
  sweep.unref();
  server.once('close', () => clearInterval(sweep));

  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const st = sessions.get(stream.session as http2.ServerHttp2Session);
    if (st) {
      st.open++;
      st.receiving.set(stream, Date.now());
      stream.once('close', () => {
        st.receiving.delete(stream);
        if (--st.open === 0) st.idleSince = Date.now();
      });
    }
    const target = checkHeaders(headers);
    if (typeof target === 'string') {
      o.log.debug({ why: target }, 'gRPC request refused');
      stream.resume();
      badRequest(stream);
      return;
    }
    void collectBody(stream, messageLimit, { early: true, budget: st?.budget }).then((r) => {
      const name = `grpc:${target.service}`;
      if (!r.ok) {
        o.log.debug({ func: name, why: r.why, size: r.size }, 'gRPC request message over the limit');
        o.metrics.request(name, GrpcStatus.RESOURCE_EXHAUSTED, 0, 'grpc');
        reply(stream, GrpcStatus.RESOURCE_EXHAUSTED, Buffer.alloc(0));
        return;
      }
      st?.receiving.delete(stream);
      const body = r.body;
      let input: Buffer = Buffer.alloc(0);
      if (body.length > 0) {
        if (body.length < 5 || body[0] !== 0 || body.readUInt32BE(1) !== body.length - 5) {
          badRequest(stream);
          return;
        }
        input = body.subarray(5);
      }
      const entry = o.config.byName.get(name);
      const methodId = entry?.isGrpc ? entry.grpcMethods.indexOf(target.method) : -1;
      if (!entry || methodId < 0) {
        o.metrics.request(name, GrpcStatus.NOT_FOUND, 0, 'grpc');
        reply(stream, GrpcStatus.NOT_FOUND, Buffer.alloc(0));
        return;
      }
      const started = process.hrtime.bigint();
      const { promise, discard } = o.dispatcher.call(entry.funcId, methodId, input);
      stream.on('close', () => {
        if (!stream.headersSent) discard();
      });
      void promise.then((out) => {
        const st = statusOf(out);
        o.metrics.request(name, st, Number(process.hrtime.bigint() - started) / 1e9, 'grpc');
        reply(stream, st, out.kind === 'ok' ? out.output : Buffer.alloc(0));
      });
    }, () => stream.destroy());
  });
  return server;
}

function sweepSessions(sessions: Map<http2.ServerHttp2Session, SessionState>, l: GrpcLimits): void {
  const now = Date.now();
  for (const [session, st] of sessions) {
    if (st.closing || (!st.settled && now - st.openedAt > l.settingsTimeoutMs)) {
      // no preface/SETTINGS in time, or a GOAWAY'd session still there one sweep later
      session.destroy();
      continue;
    }
    if (st.open === 0 && l.idleTimeoutMs > 0 && now - st.idleSince > l.idleTimeoutMs) {
      st.closing = true;
      session.close();
      continue;
    }
    if (l.streamTimeoutMs > 0) {
      for (const [stream, since] of st.receiving) {
        if (now - since <= l.streamTimeoutMs) continue;
        st.receiving.delete(stream);
        stream.close(http2.constants.NGHTTP2_CANCEL);
      }
    }
  }
}
