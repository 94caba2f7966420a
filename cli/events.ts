/**
 * `nightfuse events [--follow]`: the launchers' merge decision log as the
 * gateway keeps it (GET /admin/v1/events): each decision, merge, unmerge,
 * failure and fault with its reason and the numbers behind it.
 */
import { AdminClient, type GatewayOptions } from './admin-api.js';
import { EXIT } from './exit.js';
import { untilInterrupted } from './table.js';

export interface AdminEvent {
  seq: number;
  at_ms: number;
  node: number;
  kind: string;
  caller: string;
  callee: string;
  isolation: string;
  reason: string;
  detail_json: string;
  /** parsed detail_json, when the gateway sends it */
  detail?: Record<string, unknown>;
}

export const POLL_INTERVAL_MS = 1000;

/**
 * Every event after `since`, as it happens, until `signal` aborts. The one
 * place that knows how events travel: it polls GET /events?since=<seq>; a
 * server-sent-events stream can replace this body without touching callers.
 * While the gateway is unreachable it keeps trying and reports through
 * `onGap` (once when lost, once when back).
 */
export async function* eventStream(
  api: AdminClient, since: number, signal: AbortSignal, o: { intervalMs?: number; onGap?: (lost: boolean, why: string) => void } = {},
): AsyncGenerator<AdminEvent> {
  let cursor = since;
  let lost = false;
  while (!signal.aborted) {
    try {
      const events = await api.get<AdminEvent[]>(`/events?since=${cursor}`, signal);
      if (lost) o.onGap?.((lost = false), '');
      for (const e of events) {
        if (e.seq <= cursor) continue;
        cursor = e.seq;
        yield e;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (!lost) o.onGap?.((lost = true), (err as Error).message);
    }
    await new Promise<void>((r) => {
      const wake = () => {
        clearTimeout(t);
        signal.removeEventListener('abort', wake);
        r();
      };
      const t = setTimeout(wake, o.intervalMs ?? POLL_INTERVAL_MS);
      signal.addEventListener('abort', wake, { once: true });
    });
  }
}

function time(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** One line for people: when, what, which pair (caller -> callee), how, why. */
export function formatEvent(e: AdminEvent): string {
  const what = e.kind === 'decision' ? `decided to ${detail(e).action ?? 'act'}` : e.kind.replace('_', ' ');
  return `${time(e.at_ms)}  node ${e.node}  ${what.padEnd(18)} ${`${e.caller} -> ${e.callee}`.padEnd(24)} ${(e.isolation || '-').padEnd(7)} ${e.reason}`;
}

function detail(e: AdminEvent): Record<string, unknown> {
  if (e.detail && typeof e.detail === 'object') return e.detail;
  try {
    return e.detail_json ? JSON.parse(e.detail_json) : {};
  } catch {
    return {};
  }
}

export function eventJson(e: AdminEvent): string {
  const { detail_json: _, ...rest } = e;
  return JSON.stringify({ ...rest, at: new Date(e.at_ms).toISOString(), detail: detail(e) });
}

export async function runEvents(o: GatewayOptions & { follow?: boolean; json?: boolean; interval?: number }): Promise<number> {
  const api = AdminClient.from(o);
  const print = (e: AdminEvent) => process.stdout.write((o.json ? eventJson(e) : formatEvent(e)) + '\n');
  const past = await api.get<AdminEvent[]>('/events');
  for (const e of past) print(e);
  if (!o.follow) {
    if (past.length === 0 && !o.json) process.stderr.write('(no merge events yet)\n');
    return EXIT.OK;
  }
  const stop = new AbortController();
  void untilInterrupted().then(() => stop.abort());
  const since = past.length ? past[past.length - 1].seq : 0;
  const onGap = (lost: boolean, why: string) =>
    process.stderr.write(lost ? `nightfuse events: ${why}; retrying\n` : `nightfuse events: the gateway at ${api.base} answers again\n`);
  for await (const e of eventStream(api, since, stop.signal, { intervalMs: (o.interval ?? POLL_INTERVAL_MS / 1000) * 1000, onGap })) print(e);
  return EXIT.OK;
}
