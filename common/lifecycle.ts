/**
 * What orchestrators need from a long-running process: probes and a drain.
 *
 * Liveness (`/healthz`) says only that the process answers; readiness
 * (`/readyz`) says it should get work now, with the reason when not (a
 * readiness probe that fails must say why, or operators guess). Draining is
 * "stop taking new work, finish what is in flight, up to a deadline".
 */
import http from 'node:http';
import type net from 'node:net';
import type { Logger } from './log.js';

export interface Readiness {
  ok: boolean;
  /** why not ready (or what makes it ready) */
  reason: string;
}

/** Polls `cond` until it holds or `timeoutMs` passes; resolves with whether it held. */
export async function waitUntil(cond: () => boolean, timeoutMs: number, pollMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, Math.min(pollMs, Math.max(1, deadline - Date.now()))));
  }
}

/** Resolves with the promise's value, or `undefined` after `ms` (the promise is left to settle on its own). */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<undefined>((r) => {
      timer = setTimeout(() => r(undefined), ms);
    }),
  ]);
}

/** The body and status of a probe answer, shared by the gateway's front end and the launcher's probe port. */
export function probeAnswer(path: string, ready: () => Readiness): { status: number; body: string } | undefined {
  if (path === '/healthz') return { status: 200, body: 'ok\n' };
  if (path === '/readyz') {
    const r = ready();
    return r.ok ? { status: 200, body: `ok: ${r.reason}\n` } : { status: 503, body: `not ready: ${r.reason}\n` };
  }
  return undefined;
}

/**
 * A probe-only HTTP server (the launcher's --probe_port): GET /healthz and
 * /readyz, nothing else. It is reachable by whoever reaches the address, so it
 * accepts no body, small headers only, and holds no connection for long.
 */
export function createProbeServer(ready: () => Readiness, log: Logger): http.Server {
  const server = http.createServer({ maxHeaderSize: 8 * 1024, requestTimeout: 5000, headersTimeout: 5000, keepAliveTimeout: 5000 }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const a = req.method === 'GET' || req.method === 'HEAD' ? probeAnswer(path, ready) : undefined;
    const status = a?.status ?? (req.method === 'GET' || req.method === 'HEAD' ? 404 : 405);
    const body = a?.body ?? 'probe port: GET /healthz or /readyz\n';
    // A request body is never read: close rather than drain whatever a client sends.
    const hasBody = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
    res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body), ...(hasBody ? { Connection: 'close' } : {}) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.maxRequestsPerSocket = 100;
  server.on('clientError', (err, socket) => {
    log.debug({ err: err.message }, 'malformed probe request');
    socket.destroy();
  });
  return server;
}

/** Listens on host:port; resolves with the port (for port 0). */
export function listenOn(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, backlog: 64 }, () => {
      server.off('error', reject);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}
