/**
 * The console's link to the admin API: the token (tab-only), JSON calls, and
 * the live stream read with fetch() so the token travels in a header, never
 * in a URL (EventSource cannot set headers).
 */
import type { AdminEvent, Snapshot } from './model.js';

const KEY = 'nightfuse.adminToken';
const API = '/admin/v1';

/**
 * `nightfuse up` prints /ui/#token=…: the fragment never reaches the server.
 * Move it to sessionStorage (this tab only) and clear it from the address bar
 * and history, so it is not bookmarked, shared or shown.
 */
export function takeTokenFromFragment(): void {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  let token = '';
  try {
    token = decodeURIComponent(m[1]);
  } catch {
    token = '';
  }
  if (token) sessionStorage.setItem(KEY, token);
  history.replaceState(null, '', location.pathname + location.search);
}

export const token = {
  get: () => sessionStorage.getItem(KEY) ?? '',
  set: (t: string) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

export class AuthError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface ApiResult {
  status: number;
  data: any;
}

/** Called when the gateway refuses the token (401/403) on any call. */
export const refused: { handler: ((status: number, why: string) => void) | undefined } = { handler: undefined };

/** One admin call; on 401/403 (the token was refused) tells `refused.handler` and throws AuthError. */
export async function call(method: string, path: string, body?: string): Promise<ApiResult> {
  const r = await fetch(API + path, {
    method, body, cache: 'no-store', credentials: 'omit',
    headers: { Authorization: `Bearer ${token.get()}`, ...(body !== undefined ? { 'Content-Type': path.startsWith('/policy') ? 'application/yaml' : 'application/json' } : {}) },
  });
  const text = await r.text();
  let data: any;
  try {
    data = JSON.parse(text);
  } catch {
    data = { error: text || r.statusText };
  }
  if (r.status === 401 || r.status === 403) {
    refused.handler?.(r.status, data.error ?? r.statusText);
    throw new AuthError(r.status, data.error ?? r.statusText);
  }
  return { status: r.status, data };
}

export interface StreamHandlers {
  snapshot(s: Snapshot): void;
  events(e: AdminEvent[]): void;
  state(s: 'connecting' | 'live' | 'retrying' | 'refused', detail?: string): void;
}

/**
 * Reads GET /admin/v1/stream until it ends, then reconnects with backoff
 * (1 s doubling to 10 s) — unless the token is refused, which stops it.
 */
export function openStream(h: StreamHandlers): { close(): void } {
  let closed = false;
  let ctl: AbortController | undefined;
  let backoff = 1000;
  const run = async () => {
    while (!closed) {
      h.state('connecting');
      ctl = new AbortController();
      try {
        const r = await fetch(`${API}/stream`, { headers: { Authorization: `Bearer ${token.get()}` }, cache: 'no-store', credentials: 'omit', signal: ctl.signal });
        if (r.status === 401 || r.status === 403) {
          let why = r.statusText;
          try {
            why = ((await r.json()) as { error?: string }).error ?? why;
          } catch { /* keep the status text */ }
          h.state('refused', `HTTP ${r.status}: ${why}`);
          return;
        }
        if (r.status !== 200 || !r.body) throw new Error(`HTTP ${r.status}`);
        await readEvents(r.body, (event, data) => {
          backoff = 1000;
          h.state('live');
          if (event === 'snapshot') h.snapshot(JSON.parse(data) as Snapshot);
          else if (event === 'events') h.events(JSON.parse(data) as AdminEvent[]);
        });
        if (!closed) h.state('retrying', 'the stream ended');
      } catch (err) {
        if (closed) return;
        h.state('retrying', (err as Error).message);
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(10_000, backoff * 2);
    }
  };
  void run();
  return {
    close() {
      closed = true;
      ctl?.abort();
    },
  };
}

/** A text/event-stream parser: `event:` and `data:` lines, frames split by a blank line, comments ignored. */
async function readEvents(body: ReadableStream<Uint8Array>, on: (event: string, data: string) => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        const v = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
        if (field === 'event') event = v;
        else if (field === 'data') data.push(v);
      }
      if (data.length) on(event, data.join('\n'));
    }
  }
}
