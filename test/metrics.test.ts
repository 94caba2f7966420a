// Metrics by Prometheus conventions: the bucket layout, histogram rendering, the gateway's request
// metrics, edge statistics, and a real stack's /metrics checked against the conventions and against
// every query of the Grafana dashboard (deploy/grafana/nightfuse.json).
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GatewayMetrics, renderFamilies } from '../gateway/metrics.js';
import { EdgeStats } from '../launcher/edge-stats.js';
import { EDGE_BUCKET_BOUNDS, EDGE_BUCKET_SLOTS, edgeBucket, edgeBucketLe } from '../proto/control.js';
import { post, request, ROOT, startStack, waitFor, type Stack } from './helpers.js';

t.test('edge bucket layout: slot i holds 2^(i-1) <= t < 2^i µs; the last slot the rest', async (t) => {
  t.equal(EDGE_BUCKET_SLOTS, EDGE_BUCKET_BOUNDS + 1);
  const cases: [number, number][] = [[0, 0], [0.5, 0], [1, 1], [1.99, 1], [2, 2], [3, 2], [4, 3], [1000, 10], [2 ** 23, 24], [2 ** 24 - 1, 24], [2 ** 24, 25], [1e12, 25]];
  for (const [us, slot] of cases) t.equal(edgeBucket(us), slot, `${us} µs -> slot ${slot}`);
  for (let us = 0; us < 3e7; us = us * 1.37 + 0.3) {
    const i = edgeBucket(us);
    t.ok(us / 1e6 < edgeBucketLe(i) && (i === 0 || us / 1e6 >= edgeBucketLe(i - 1)), `${us.toFixed(2)} µs within slot ${i}`);
  }
  t.equal(edgeBucketLe(EDGE_BUCKET_BOUNDS), Infinity);
});

t.test('histograms render cumulative buckets, +Inf = _count, and _sum', async (t) => {
  const slots = new Array(EDGE_BUCKET_SLOTS).fill(0);
  slots[0] = 1;
  slots[3] = 2;
  slots[EDGE_BUCKET_BOUNDS] = 1;
  const text = renderFamilies([{ name: 'x_seconds', help: 'h', type: 'histogram', samples: [], histograms: [{ labels: { a: 'q"uote' }, slots, sum: 20.5 }] }]);
  t.match(text, /^# HELP x_seconds h\n# TYPE x_seconds histogram\n/);
  t.match(text, /^x_seconds_bucket\{a="q\\"uote",le="0.000001"\} 1$/m);
  t.match(text, /^x_seconds_bucket\{a="q\\"uote",le="0.000004"\} 1$/m);
  t.match(text, /^x_seconds_bucket\{a="q\\"uote",le="0.000008"\} 3$/m);
  t.match(text, /^x_seconds_bucket\{a="q\\"uote",le="16.777216"\} 3$/m);
  t.match(text, /^x_seconds_bucket\{a="q\\"uote",le="\+Inf"\} 4$/m);
  t.match(text, /^x_seconds_sum\{a="q\\"uote"\} 20.5$/m);
  t.match(text, /^x_seconds_count\{a="q\\"uote"\} 4$/m);
});

t.test('gateway metrics: HTTP and gRPC status apart, unknown names folded, defaults and build info', async (t) => {
  const m = new GatewayMetrics({ running: () => 3, queued: () => 0, nodes: () => 1, functions: ['Foo', 'grpc:S'] });
  m.request('Foo', 200, 0.0003);
  m.request('Foo', 200, 0.0005);
  m.request('Foo', 500, 0.002);
  m.request('grpc:S', 0, 0.001, 'grpc');
  m.request('grpc:S', 5, 0, 'grpc');
  for (let i = 0; i < 50; i++) m.request(`grpc:Junk${i}`, 5, 0, 'grpc');
  const text = await m.render();
  t.match(text, /^nightfuse_gateway_http_requests_total\{function="Foo",code="200"\} 2$/m);
  t.match(text, /^nightfuse_gateway_http_requests_total\{function="Foo",code="500"\} 1$/m);
  t.match(text, /^nightfuse_gateway_grpc_requests_total\{function="grpc:S",grpc_code="OK"\} 1$/m);
  t.match(text, /^nightfuse_gateway_grpc_requests_total\{function="grpc:S",grpc_code="NOT_FOUND"\} 1$/m);
  t.match(text, /^nightfuse_gateway_grpc_requests_total\{function="\(unknown\)",grpc_code="NOT_FOUND"\} 50$/m, 'client-chosen names do not grow the series');
  t.notMatch(text, /Junk/);
  t.match(text, /^nightfuse_gateway_request_duration_seconds_count\{function="Foo",protocol="http"\} 3$/m);
  t.match(text, /^nightfuse_gateway_request_duration_seconds_bucket\{function="Foo",protocol="http",le="0.000512"\} 2$/m);
  t.match(text, /^nightfuse_gateway_running_calls 3$/m);
  t.match(text, /^nightfuse_build_info\{version="\d+\.\d+\.\d+[^"]*",nodejs="\d+\.\d+\.\d+"\} 1$/m);
  t.match(text, /^process_cpu_user_seconds_total /m);
  t.match(text, /^nodejs_eventloop_lag_seconds /m);
});

t.test('edge statistics: sums and buckets per call, rate only when read', async (t) => {
  const e = new EdgeStats();
  const sample = { inputBytes: 10, outputBytes: 20, dispatchDelayUs: 5, processingUs: 3, rpcUs: 40, queueUs: 0, failed: false };
  e.record('A', 'B', sample);
  e.record('A', 'B', { ...sample, rpcUs: 3000 });
  e.record('A', 'B', { ...sample, failed: true, processingUs: 999 });
  e.recordLocal('A', 'B', 7, 1, 70);
  const t0 = Date.now();
  const [s] = e.snapshot(t0);
  t.match(s, { calls: 10, failures: 2, localCalls: 7, localFailures: 1, rpcUs: 40 + 3000 + 40, processingUs: 3 + 3 + 70, localProcessingUs: 70 });
  t.equal(s.rpcBuckets[edgeBucket(40)], 2);
  t.equal(s.rpcBuckets[edgeBucket(3000)], 1);
  t.equal(s.processingBuckets.reduce((a, b) => a + b, 0), 2, 'callee time of successful IPC calls only');
  t.ok(s.ratePerSec > 1.9 && s.ratePerSec <= 2, `10 calls against a 5 s time constant: ${s.ratePerSec}`);
  const later = e.snapshot(t0 + 5000)[0].ratePerSec;
  t.ok(Math.abs(later - s.ratePerSec / Math.E) < 0.01, `decays by e per 5 s: ${later}`);
  s.rpcBuckets[0] = 99;
  t.equal(e.snapshot()[0].rpcBuckets[0], 0, 'snapshots are copies');
  t.equal(e.localProcessingOf('B'), 70);
});

/** Metric names in an exposition: families, with _bucket/_sum/_count for histograms. */
function exported(text: string): Map<string, string> {
  const names = new Map<string, string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.set(m[1], m[2]);
    if (m[2] === 'histogram' || m[2] === 'summary') for (const s of ['_bucket', '_sum', '_count']) names.set(m[1] + s, m[2]);
  }
  return names;
}

const PROMQL_FUNCTIONS = new Set(['rate', 'irate', 'increase', 'sum', 'avg', 'min', 'max', 'count', 'topk', 'bottomk', 'histogram_quantile',
  'label_values', 'abs', 'clamp_min', 'clamp_max', 'delta', 'deriv', 'avg_over_time', 'max_over_time', 'sum_over_time', 'absent', 'vector', 'time']);
const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset']);

/** The metric names a PromQL expression reads (functions checked against a known list, labels and strings skipped). */
function metricNames(expr: string): string[] {
  const e = expr
    .replace(/label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)/g, '$1')
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  const out: string[] = [];
  for (const m of e.matchAll(/[A-Za-z_:][\w:]*/g)) {
    const after = e.slice(m.index! + m[0].length).trimStart();
    if (after.startsWith('(')) {
      if (!PROMQL_FUNCTIONS.has(m[0])) throw new Error(`unknown PromQL function ${m[0]} in ${expr}`);
      continue;
    }
    if (PROMQL_WORDS.has(m[0]) || /^\d/.test(m[0]) || /^e\d+$/.test(m[0])) continue;
    out.push(m[0]);
  }
  return out;
}

t.test('metricNames reads PromQL', async (t) => {
  t.same(metricNames('sum by (le, caller) (rate(a_bucket{job=~"$job",x="y{z}"}[$__rate_interval])) / 1e9'), ['a_bucket']);
  t.same(metricNames('label_values(nightfuse_build_info, job)'), ['nightfuse_build_info']);
  t.same(metricNames('x_total / ignoring(code) y_total'), ['x_total', 'y_total']);
  t.throws(() => metricNames('rat(x[1m])'), /unknown PromQL function rat/);
});

let stack: Stack;
t.test('a real stack: /metrics follows the conventions and serves every dashboard query', async (t) => {
  stack = await startStack();
  t.teardown(() => stack.stop());
  for (let i = 0; i < 30; i++) await post(stack.httpPort, '/function/Foo', `m-${i}`);
  await waitFor(async () => /^nightfuse_edge_ipc_calls_total\{[^}]*caller="Foo",callee="Bar"\} ([3-9]\d|\d{3,})$/m.test((await request(stack.httpPort, 'GET', '/metrics')).body.toString()), 10000, 'edge reported');
  const text = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
  const names = exported(text);
  for (const [name, type] of names) {
    if (type === 'counter') t.match(name, /_total$/, `counter ${name} ends in _total`);
    t.notMatch(name, /per_second|_rate$/, `${name}: no pre-computed rates`);
  }
  t.equal(names.get('nightfuse_edge_rpc_duration_seconds'), 'histogram');
  t.equal(names.get('nightfuse_edge_callee_duration_seconds'), 'histogram');
  t.equal(names.get('nightfuse_merge_workers'), 'gauge');
  t.ok([...names.keys()].some((n) => n.startsWith('process_')) && [...names.keys()].some((n) => n.startsWith('nodejs_')), 'default process and nodejs metrics');
  // Every histogram series: buckets rise with le and end at +Inf = _count.
  const series = new Map<string, { le: number; v: number }[]>();
  for (const m of text.matchAll(/^(\w+)_bucket\{(.*),le="([^"]+)"\} (\S+)$/gm)) {
    const k = `${m[1]}{${m[2]}}`;
    if (!series.has(k)) series.set(k, []);
    series.get(k)!.push({ le: m[3] === '+Inf' ? Infinity : Number(m[3]), v: Number(m[4]) });
  }
  const counts = new Map([...text.matchAll(/^(\w+)_count(\{.*\}) (\S+)$/gm)].map((m) => [`${m[1]}${m[2]}`, Number(m[3])]));
  t.ok(series.size >= 3, `${series.size} histogram series`);
  for (const [k, b] of series) {
    const rising = b.every((x, i) => i === 0 || (x.le > b[i - 1].le && x.v >= b[i - 1].v));
    if (!rising || b[b.length - 1].le !== Infinity || b[b.length - 1].v !== counts.get(k)) t.fail(`${k}: buckets not cumulative, or +Inf != _count (${counts.get(k)})`);
  }
  const foo = [...series.entries()].find(([k]) => k.startsWith('nightfuse_edge_rpc_duration_seconds{') && k.includes('caller="Foo",callee="Bar"'))![1];
  t.ok(foo[foo.length - 1].v >= 30, 'every Foo -> Bar IPC call observed');
  // The dashboard.
  const dash = JSON.parse(readFileSync(join(ROOT, 'deploy', 'grafana', 'nightfuse.json'), 'utf8'));
  const queries: string[] = [
    ...dash.panels.flatMap((p: any) => p.targets.map((x: any) => x.expr)),
    ...dash.templating.list.filter((v: any) => v.type === 'query').map((v: any) => v.query.query ?? v.query),
  ];
  t.ok(queries.length >= 20, `${queries.length} queries`);
  const missing = new Set<string>();
  for (const q of queries) for (const n of metricNames(q)) if (!names.has(n)) missing.add(n);
  t.same([...missing], [], 'every metric the dashboard queries is exported');
  t.ok(dash.panels.every((p: any) => p.datasource?.uid === '${datasource}'), 'panels use the dashboard\'s data source variable');
});
