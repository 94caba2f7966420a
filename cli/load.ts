/**
 * `nightfuse load <function>`: puts a function under load through the
 * gateway (autocannon, keep-alive connections), checks every answer, and
 * shows latency second by second with the merge events that happen meanwhile
 * (from the admin API, when a token is at hand), then a summary: req/s, p50,
 * p99, errors and wrong answers, for the whole run and before/after each
 * merge or unmerge. A wrong answer is a 200 whose body differs from --expect,
 * or from the first answer when --expect is not given.
 */
import autocannon from 'autocannon';
import { AdminClient, resolveGateway, type GatewayOptions } from './admin-api.js';
import { eventStream, type AdminEvent } from './events.js';
import { CliError, EXIT } from './exit.js';
import { formatMs, LatencyHistogram } from './latency.js';

export interface LoadOptions extends GatewayOptions {
  connections: number;
  /** seconds */
  duration: number;
  body: string;
  expect?: string;
  json?: boolean;
  /** follow merge events (needs a token; default on) */
  events?: boolean;
}

/** A stretch of the run between two merge events. */
interface Segment {
  label: string;
  startMs: number;
  endMs: number;
  hist: LatencyHistogram;
  errors: number;
  wrong: number;
}

const MERGE_KINDS = new Set(['merged', 'unmerged', 'fault']);

async function probe(url: string, body: string): Promise<{ status: number; text: string }> {
  try {
    const r = await fetch(url, { method: 'POST', body, signal: AbortSignal.timeout(15000) });
    return { status: r.status, text: await r.text() };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    throw new CliError(`cannot reach the gateway at ${new URL(url).origin}: ${cause?.code ?? (err as Error).message}`, EXIT.UNREACHABLE);
  }
}

function segmentStats(s: Segment) {
  const seconds = Math.max(0.001, (s.endMs - s.startMs) / 1000);
  return {
    label: s.label, seconds: Number(seconds.toFixed(2)), requests: s.hist.count, reqPerSec: Math.round(s.hist.count / seconds),
    p50Ms: Number(s.hist.percentile(50).toFixed(3)), p99Ms: Number(s.hist.percentile(99).toFixed(3)),
    meanMs: Number(s.hist.meanMs.toFixed(3)), maxMs: Number(s.hist.maxMs.toFixed(3)), errors: s.errors, wrongAnswers: s.wrong,
  };
}

export async function runLoad(fn: string, o: LoadOptions): Promise<number> {
  const g = resolveGateway(o, process.env, true);
  const url = `${g.base}/function/${encodeURIComponent(fn)}`;
  const first = await probe(url, o.body);
  if (first.status === 404) throw new CliError(`the gateway at ${g.base} has no function ${fn} that takes POST (HTTP 404)`);
  if (first.status !== 200) throw new CliError(`${fn} answered the first call with HTTP ${first.status}: ${first.text.trim().slice(0, 200)}`);
  const expected = o.expect ?? first.text;
  // `--expect 'text'` is hard to give with a final newline in a shell: without one, an answer's final newline is ignored.
  const matches = o.expect !== undefined && !o.expect.endsWith('\n')
    ? (body: string) => body === expected || (body.endsWith('\n') && body.slice(0, -1) === expected)
    : (body: string) => body === expected;
  const out = process.stderr; // the live view; stdout gets the summary (or its JSON)
  const tty = out.isTTY === true;

  const t0 = Date.now();
  const segments: Segment[] = [{ label: 'whole run', startMs: t0, endMs: t0, hist: new LatencyHistogram(), errors: 0, wrong: 0 }];
  const whole = segments[0];
  let current: Segment = { label: 'before any merge event', startMs: t0, endMs: t0, hist: new LatencyHistogram(), errors: 0, wrong: 0 };
  const phases: Segment[] = [current];
  let second = new LatencyHistogram();
  let secondErrors = 0;
  let secondWrong = 0;
  const events: AdminEvent[] = [];

  let barShown = false;
  const say = (line: string) => {
    out.write(`${barShown ? '\r\x1b[K' : ''}${line}\n`);
    barShown = false;
  };

  const stopEvents = new AbortController();
  const watching = o.events !== false && g.token
    ? (async () => {
      const api = new AdminClient(g.base, g.token);
      let since = 0;
      try {
        const past = await api.get<AdminEvent[]>('/events', stopEvents.signal);
        since = past.length ? past[past.length - 1].seq : 0;
      } catch (err) {
        say(`(not following merge events: ${(err as Error).message})`);
        return;
      }
      for await (const e of eventStream(api, since, stopEvents.signal, { intervalMs: 500 })) {
        if (!MERGE_KINDS.has(e.kind)) continue;
        events.push(e);
        const now = Date.now();
        current.endMs = now;
        current = { label: `after ${e.caller} -> ${e.callee} ${e.kind.replace('_', ' ')}`, startMs: now, endMs: now, hist: new LatencyHistogram(), errors: 0, wrong: 0 };
        phases.push(current);
        say(`  ── ${((now - t0) / 1000).toFixed(1)} s: ${e.kind} ${e.caller} -> ${e.callee}${e.isolation ? ` (${e.isolation})` : ''}: ${e.reason}`);
      }
    })()
    : Promise.resolve();
  {
    out.write(`Loading ${fn} at ${url}: ${o.connections} connection(s) for ${o.duration} s; answers checked against ${o.expect !== undefined ? '--expect' : 'the first answer'}` +
      `${g.token && o.events !== false ? '; merge events shown as they happen' : ''}\n`);
  }

  let instance!: autocannon.Instance;
  const finished = new Promise<autocannon.Result>((resolve, reject) => {
    instance = autocannon({
    url, connections: o.connections, duration: o.duration, timeout: 10,
    requests: [{
      method: 'POST', body: o.body,
      onResponse: (status: number, body: string) => {
        if (status >= 200 && status < 300 && !matches(body)) {
          whole.wrong++;
          current.wrong++;
          secondWrong++;
        }
      },
    }],
    } as autocannon.Options, (err, r) => (err ? reject(err) : resolve(r)));
  });
  instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
    whole.hist.record(ms);
    current.hist.record(ms);
    second.record(ms);
    if (status < 200 || status >= 300) {
      whole.errors++;
      current.errors++;
      secondErrors++;
    }
  });
  const onError = () => {
    whole.errors++;
    current.errors++;
    secondErrors++;
  };
  instance.on('reqError', onError);

  const drawBar = () => {
    if (!tty) return;
    const elapsed = Math.min(o.duration, (Date.now() - t0) / 1000);
    const width = 24;
    const filled = Math.round((elapsed / o.duration) * width);
    out.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${elapsed.toFixed(0)}/${o.duration} s  ` +
      `${whole.hist.count} requests  errors ${whole.errors}  wrong ${whole.wrong}`);
    barShown = true;
  };
  let tick = 0;
  const timer = setInterval(() => {
    tick++;
    if (tick % 4 === 0) {
      say(`  ${String(tick / 4).padStart(3)} s  ${String(second.count).padStart(7)} req/s  p50 ${formatMs(second.percentile(50)).padStart(9)}  ` +
        `p99 ${formatMs(second.percentile(99)).padStart(9)}  errors ${secondErrors}  wrong ${secondWrong}`);
      second = new LatencyHistogram();
      secondErrors = secondWrong = 0;
    }
    drawBar();
  }, 250);
  const stopRun = () => instance.stop();
  process.once('SIGINT', stopRun);
  let result: autocannon.Result;
  try {
    result = await finished;
  } finally {
    clearInterval(timer);
    process.off('SIGINT', stopRun);
    stopEvents.abort();
  }
  await watching;
  const end = Date.now();
  whole.endMs = current.endMs = end;
  if (barShown) out.write('\r\x1b[K');

  const summary = {
    function: fn, url, connections: o.connections, durationSec: o.duration,
    expected: o.expect !== undefined ? '--expect' : 'first answer',
    ...segmentStats(whole), timeouts: result.timeouts,
    phases: phases.length > 1 ? phases.map(segmentStats) : [],
    events: events.map((e) => ({ atSec: Number(((e.at_ms - t0) / 1000).toFixed(2)), kind: e.kind, caller: e.caller, callee: e.callee, isolation: e.isolation, reason: e.reason })),
  };
  if (o.json) {
    process.stdout.write(JSON.stringify(summary, null, 1) + '\n');
  } else {
    const rows = [whole, ...(phases.length > 1 ? phases : [])].map(segmentStats);
    const w = Math.max(...rows.map((r) => r.label.length));
    const line = (r: ReturnType<typeof segmentStats>) =>
      `  ${r.label.padEnd(w)}  ${String(r.requests).padStart(9)}  ${String(r.reqPerSec).padStart(7)}  ${formatMs(r.p50Ms).padStart(9)}  ` +
      `${formatMs(r.p99Ms).padStart(9)}  ${String(r.errors).padStart(6)}  ${String(r.wrongAnswers).padStart(6)}`;
    process.stdout.write(
      `\nSummary: ${fn}, ${o.connections} connection(s), ${((end - t0) / 1000).toFixed(1)} s\n` +
      `  ${''.padEnd(w)}  ${'requests'.padStart(9)}  ${'req/s'.padStart(7)}  ${'p50'.padStart(9)}  ${'p99'.padStart(9)}  ${'errors'.padStart(6)}  ${'wrong'.padStart(6)}\n` +
      rows.map(line).join('\n') + '\n' +
      (whole.wrong ? `  wrong answers: 200 responses whose body differs from ${summary.expected === '--expect' ? '--expect' : `the first answer (${JSON.stringify(expected.slice(0, 80))})`}\n` : '') +
      (result.timeouts ? `  ${result.timeouts} request(s) timed out after 10 s\n` : ''),
    );
  }
  return whole.errors || whole.wrong ? EXIT.FAILED : EXIT.OK;
}
