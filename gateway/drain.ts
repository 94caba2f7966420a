/**
 * The gateway's readiness and its drain on SIGTERM.
 *
 * Ready: not draining, and at least one node connected that is not itself
 * draining (a gateway without nodes answers every call with 500, so a load
 * balancer should not send it any).
 *
 * Drain: readiness goes false, the HTTP and gRPC listeners stop accepting
 * connections, HTTP/2 sessions get GOAWAY (their open streams finish), a new
 * call on a kept-alive HTTP connection gets 503 with `Connection: close`, and
 * the calls already taken (running or queued) finish, up to the deadline. The
 * engine link and the control plane stay open throughout: the results of
 * those calls come back over them.
 */
import type http from 'node:http';
import type http2 from 'node:http2';
import { type Readiness, waitUntil } from '../common/lifecycle.js';
import type { Logger } from '../common/log.js';
import type { Dispatcher } from './dispatcher.js';
import type { EngineServer, Node } from './engine-server.js';

/** Nodes that may be given calls (a launcher that announced its drain may not). */
function serving(n: Node): boolean {
  return n.conns.length > 0 && !n.draining;
}

export class GatewayDrain {
  draining = false;
  private readonly sessions = new Set<http2.ServerHttp2Session>();

  constructor(
    private readonly engines: EngineServer,
    private readonly dispatcher: Dispatcher,
    private readonly servers: { http: http.Server; grpc: http2.Http2Server },
    private readonly log: Logger,
  ) {
    servers.grpc.on('session', (s: http2.ServerHttp2Session) => {
      this.sessions.add(s);
      s.once('close', () => this.sessions.delete(s));
    });
  }

  readiness(): Readiness {
    if (this.draining) return { ok: false, reason: 'draining' };
    const nodes = [...this.engines.nodes.values()].filter(serving).length;
    return nodes > 0 ? { ok: true, reason: `${nodes} node(s) serving` } : { ok: false, reason: 'no node connected' };
  }

  /** An HTTP route placed before the function routes: refuses new calls while draining. */
  readonly refuse = (req: http.IncomingMessage, res: http.ServerResponse, path: string): boolean => {
    if (!this.draining || !path.startsWith('/function/')) return false;
    req.resume();
    const body = 'gateway is shutting down\n';
    res.writeHead(503, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body), Connection: 'close', 'Retry-After': '1' });
    res.end(body);
    return true;
  };

  /** Stops taking calls and waits for those taken; resolves with how many were left when the deadline passed. */
  async drain(timeoutMs: number): Promise<number> {
    this.draining = true;
    const inFlight = this.dispatcher.runningCount;
    this.log.info({ inFlight, timeoutMs }, 'draining: no new calls; waiting for the calls in flight');
    this.servers.http.close();
    this.servers.http.closeIdleConnections();
    this.servers.grpc.close();
    for (const s of this.sessions) if (!s.closed && !s.destroyed) s.close();
    const done = await waitUntil(() => this.dispatcher.runningCount === 0, timeoutMs);
    const left = this.dispatcher.runningCount;
    if (done) this.log.info({ finished: inFlight }, 'drained: every call in flight finished');
    else this.log.warn({ left, timeoutMs }, 'drain deadline passed with calls in flight; they fail now');
    return left;
  }
}
