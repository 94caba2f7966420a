/**
 * gRPC front end (spec §3.3): cleartext HTTP/2 with prior knowledge,
 * `/<Service>/<Method>` -> the `grpc:<Service>` entry with method_id =
 * index of Method in grpcMethods. The request message bytes are the input;
 * the output is returned as the response message. Header and framing rules,
 * status codes and the always-sent (possibly empty) response message follow
 * Nightcore's gateway. Additions: a grpc-message trailer on errors,
 * RESOURCE_EXHAUSTED over the body limit, DEADLINE_EXCEEDED on our timeout,
 * and short first DATA chunks are buffered (Nightcore's gateway aborts).
 */
import http2 from 'node:http2';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import type { CallOutcome, Dispatcher } from './dispatcher.js';
import type { GatewayMetrics } from './metrics.js';
import { collectBody } from '../common/body.js';

export const GrpcStatus = { OK: 0, UNKNOWN: 2, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, RESOURCE_EXHAUSTED: 8 } as const;

const ALLOWED_PSEUDO = new Set([':method', ':scheme', ':path', ':authority']);

export interface GrpcFrontendOptions {
  config: FuncConfig;
  dispatcher: Dispatcher;
  metrics: GatewayMetrics;
  log: Logger;
  maxBodyBytes: number;
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
  const server = http2.createServer({ settings: { maxConcurrentStreams: 32 } });
  server.on('sessionError', (err) => o.log.debug({ err: err.message }, 'gRPC session error'));
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const target = checkHeaders(headers);
    if (typeof target === 'string') {
      o.log.debug({ why: target }, 'gRPC request refused');
      stream.resume();
      badRequest(stream);
      return;
    }
    void collectBody(stream, o.maxBodyBytes > 0 ? o.maxBodyBytes + 5 : 0).then((r) => {
      const name = `grpc:${target.service}`;
      if (!r.ok) {
        o.metrics.request(name, GrpcStatus.RESOURCE_EXHAUSTED, 0, 'grpc');
        reply(stream, GrpcStatus.RESOURCE_EXHAUSTED, Buffer.alloc(0));
        return;
      }
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
