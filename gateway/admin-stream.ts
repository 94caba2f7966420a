/**
 * GET /admin/v1/stream: the live view as server-sent events, for the console.
 *
 *   event: snapshot   data: Snapshot (functions, nodes, edges, merges, policy)
 *   event: events     data: Event[] (new decision-log entries, oldest first)
 *   : keepalive       (a comment every 15 s, so proxies and the page see a live stream)
 *
 * On connect: one snapshot and the last events. Then, at most every
 * FLUSH_MS, a snapshot if anything changed and the events received
 * meanwhile — one serialisation shared by every client, and no work at all
 * while nobody listens. The stream count is capped; a client that stops
 * reading is dropped once its unsent backlog passes MAX_BACKLOG.
 */
import type http from 'node:http';
import type { Logger } from '../common/log.js';
import type { AdminEvent, AdminView } from './admin-view.js';

const FLUSH_MS = 500;
const KEEPALIVE_MS = 15_000;
const MAX_BACKLOG = 4 << 20;
const MAX_EVENTS_PER_FLUSH = 200;
export const MAX_STREAMS = 32;

const frame = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
/** The snapshot without its timestamp: what "changed" compares. */
const content = (s: ReturnType<AdminView['snapshot']>) => JSON.stringify({ ...s, at: undefined });

export class AdminStream {
  private readonly clients = new Set<http.ServerResponse>();
  private pending: AdminEvent[] = [];
  private last = '';
  private flushTimer: NodeJS.Timeout | undefined;
  private keepaliveTimer: NodeJS.Timeout | undefined;

  constructor(private readonly view: AdminView, private readonly log: Logger) {
    view.onEvent = (e) => {
      if (this.clients.size === 0) return;
      this.pending.push(e);
      if (this.pending.length > MAX_EVENTS_PER_FLUSH) this.pending.shift();
    };
  }

  get size(): number {
    return this.clients.size;
  }

  /** Takes over the response; false (nothing written) when the cap is reached. */
  open(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (this.clients.size >= MAX_STREAMS) return false;
    req.socket.setNoDelay(true);
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff',
      'X-Accel-Buffering': 'no',
    });
    const snap = this.view.snapshot();
    res.write(frame('snapshot', snap) + frame('events', this.view.eventsSince(0)));
    this.clients.add(res);
    const gone = () => {
      this.clients.delete(res);
      if (this.clients.size === 0) this.stopTimers();
    };
    res.on('close', gone);
    res.on('error', gone);
    this.startTimers();
    return true;
  }

  private startTimers(): void {
    this.flushTimer ??= setInterval(() => this.flush(), FLUSH_MS);
    this.keepaliveTimer ??= setInterval(() => this.broadcast(': keepalive\n\n'), KEEPALIVE_MS);
  }

  private stopTimers(): void {
    clearInterval(this.flushTimer);
    clearInterval(this.keepaliveTimer);
    this.flushTimer = this.keepaliveTimer = undefined;
    this.pending = [];
    this.last = '';
  }

  private flush(): void {
    let out = '';
    const snap = this.view.snapshot();
    const c = content(snap);
    if (c !== this.last) {
      this.last = c;
      out += frame('snapshot', snap);
    }
    if (this.pending.length) {
      out += frame('events', this.pending);
      this.pending = [];
    }
    if (out) this.broadcast(out);
  }

  private broadcast(text: string): void {
    for (const res of this.clients) {
      if (res.writableLength > MAX_BACKLOG) {
        this.log.warn({ backlog: res.writableLength }, 'admin stream client is not reading; dropping it');
        res.destroy();
        continue;
      }
      res.write(text);
    }
  }

  close(): void {
    for (const res of this.clients) res.end();
    this.clients.clear();
    this.stopTimers();
  }
}
