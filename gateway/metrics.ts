/**
 * GET /metrics (Prometheus text format): the gateway's own request metrics,
 * the default process_* and nodejs_* metrics of the gateway process, build
 * info, and the cluster view the launchers report over the control plane
 * (functions, the call graph's edges with latency histograms, merges),
 * rendered from their latest snapshots at scrape time.
 *
 * The request path only adds to plain numbers (request()); families, labels
 * and cumulative buckets are built when /metrics is read. Histograms share
 * one bucket layout, powers of two of microseconds (proto/control.ts).
 */
import client from 'prom-client';
import { EDGE_BUCKET_SLOTS, edgeBucket, edgeBucketLe, type Stats } from '../proto/control.js';
import { VERSION } from '../common/version.js';

export interface ClusterView {
  /** latest Stats per node id */
  nodeStats(): Map<number, Stats>;
  /** merge policy reloads at the gateway */
  policyReloads?(): { ok: number; refused: number };
  /** more families rendered at scrape time (the cluster links' counters) */
  extra?(): MetricFamily[];
}

type Labels = Record<string, string | number>;

export interface MetricFamily {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  /** counters and gauges */
  samples: { labels: Labels; value: number }[];
  /** histograms: per-slot (not cumulative) counts in the proto/control.ts layout, and the sum in seconds */
  histograms?: { labels: Labels; slots: ArrayLike<number>; sum: number }[];
}

/** gRPC status codes by number, for the grpc_code label (as grpc-ecosystem's exporters name them). */
const GRPC_CODE_NAMES = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
  'UNAUTHENTICATED',
];

/** Calls of one function over one protocol: status counts and a latency histogram. */
interface RequestCounts {
  byCode: Map<number, number>;
  slots: Float64Array;
  sumSeconds: number;
}

const OTHER_FUNCTION = '(unknown)';

function esc(v: string | number): string {
  return String(v).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(labels: Labels, extra = ''): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${esc(v)}"`);
  if (extra) parts.push(extra);
  return parts.length ? `{${parts.join(',')}}` : '';
}

export function renderFamilies(fams: MetricFamily[]): string {
  let out = '';
  for (const f of fams) {
    out += `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) out += `${f.name}${labelText(s.labels)} ${Number.isFinite(s.value) ? s.value : 0}\n`;
    for (const h of f.histograms ?? []) {
      let cum = 0;
      for (let i = 0; i < h.slots.length; i++) {
        cum += Number(h.slots[i]) || 0;
        const le = edgeBucketLe(i);
        out += `${f.name}_bucket${labelText(h.labels, `le="${le === Infinity ? '+Inf' : le}"`)} ${cum}\n`;
      }
      out += `${f.name}_sum${labelText(h.labels)} ${Number.isFinite(h.sum) ? h.sum : 0}\n`;
      out += `${f.name}_count${labelText(h.labels)} ${cum}\n`;
    }
  }
  return out;
}

const family = (name: string, help: string, type: MetricFamily['type']): MetricFamily => ({ name, help, type, samples: [], histograms: [] });

export interface GatewayMetricsOptions {
  running: () => number;
  queued: () => number;
  nodes: () => number;
  /** the functions of func_config.json: other names (unknown gRPC services) are counted as "(unknown)" */
  functions?: readonly string[];
}

export class GatewayMetrics {
  readonly registry = new client.Registry();
  private readonly http = new Map<string, RequestCounts>();
  private readonly grpc = new Map<string, RequestCounts>();
  private readonly known: Set<string> | undefined;
  cluster: ClusterView | undefined;

  constructor(o: GatewayMetricsOptions) {
    this.known = o.functions ? new Set(o.functions) : undefined;
    client.collectDefaultMetrics({ register: this.registry });
    const gauge = (name: string, help: string, f: () => number) =>
      new client.Gauge({ name, help, registers: [this.registry], collect() { this.set(f()); } });
    gauge('nightfuse_gateway_running_calls', 'Calls dispatched and not yet answered', o.running);
    gauge('nightfuse_gateway_queued_calls', 'Calls waiting for --max_running_requests', o.queued);
    gauge('nightfuse_gateway_connected_nodes', 'Nodes with at least one engine connection', o.nodes);
    new client.Gauge({
      name: 'nightfuse_build_info', help: 'Always 1; the labels say which Nightfuse and Node.js run the gateway',
      labelNames: ['version', 'nodejs'], registers: [this.registry],
    }).labels(VERSION, process.versions.node).set(1);
  }

  /** One external call answered (the request path: a map lookup and a few additions). */
  request(func: string, status: number, seconds: number, protocol: 'http' | 'grpc' = 'http'): void {
    const byFn = protocol === 'grpc' ? this.grpc : this.http;
    let r = byFn.get(func);
    if (!r) {
      if (this.known && !this.known.has(func) && func !== OTHER_FUNCTION) return this.request(OTHER_FUNCTION, status, seconds, protocol);
      r = { byCode: new Map(), slots: new Float64Array(EDGE_BUCKET_SLOTS), sumSeconds: 0 };
      byFn.set(func, r);
    }
    r.byCode.set(status, (r.byCode.get(status) ?? 0) + 1);
    if (seconds > 0) {
      r.slots[edgeBucket(seconds * 1e6)]++;
      r.sumSeconds += seconds;
    }
  }

  private requestFamilies(): MetricFamily[] {
    const http = family('nightfuse_gateway_http_requests_total', 'HTTP calls of /function/<name> by function and HTTP status code', 'counter');
    const grpc = family('nightfuse_gateway_grpc_requests_total', 'gRPC calls by function (grpc:<Service>) and gRPC status code', 'counter');
    const duration = family('nightfuse_gateway_request_duration_seconds', 'External call latency seen by the gateway (dispatch to answer)', 'histogram');
    for (const [fn, r] of this.http) {
      for (const [code, n] of r.byCode) http.samples.push({ labels: { function: fn, code }, value: n });
      duration.histograms!.push({ labels: { function: fn, protocol: 'http' }, slots: r.slots, sum: r.sumSeconds });
    }
    for (const [fn, r] of this.grpc) {
      for (const [code, n] of r.byCode) grpc.samples.push({ labels: { function: fn, grpc_code: GRPC_CODE_NAMES[code] ?? String(code) }, value: n });
      duration.histograms!.push({ labels: { function: fn, protocol: 'grpc' }, slots: r.slots, sum: r.sumSeconds });
    }
    return [http, grpc, duration];
  }

  private clusterFamilies(): MetricFamily[] {
    const stats = this.cluster?.nodeStats() ?? new Map<number, Stats>();
    const fCalls = family('nightfuse_function_calls_total', 'Calls (external and nested) received by a function on a node', 'counter');
    const fFail = family('nightfuse_function_failures_total', 'Failed calls of a function on a node', 'counter');
    const fRestarts = family('nightfuse_function_worker_restarts_total', 'Worker processes of a function that exited and were replaced', 'counter');
    const fWorkers = family('nightfuse_function_workers', 'Worker processes of a function by state', 'gauge');
    const fQueued = family('nightfuse_function_queued_calls', 'Calls waiting in the launcher for a free worker', 'gauge');
    const eIpc = family('nightfuse_edge_ipc_calls_total', 'Nested calls caller -> callee that crossed IPC through the launcher', 'counter');
    const eLocal = family('nightfuse_edge_local_calls_total', 'Nested calls caller -> callee served in the caller process by a merged callee', 'counter');
    const eIpcFail = family('nightfuse_edge_ipc_failures_total', 'Failed nested calls over IPC', 'counter');
    const eLocalFail = family('nightfuse_edge_local_failures_total', 'Failed nested calls served in process', 'counter');
    const eIn = family('nightfuse_edge_input_bytes_total', 'Input bytes of nested calls over IPC', 'counter');
    const eOut = family('nightfuse_edge_output_bytes_total', 'Output bytes of nested calls over IPC', 'counter');
    const eRpc = family('nightfuse_edge_rpc_duration_seconds', 'Round trip of a nested call through the launcher (INVOKE received -> result forwarded), IPC calls', 'histogram');
    const eCallee = family('nightfuse_edge_callee_duration_seconds', 'Time the callee spent in its handler, successful IPC calls', 'histogram');
    const eDelay = family('nightfuse_edge_dispatch_delay_seconds_total', 'Sum of dispatch delays of IPC calls (launcher send -> callee receive)', 'counter');
    const eQueue = family('nightfuse_edge_queue_seconds_total', 'Sum of the time IPC calls waited in the launcher for a free callee worker', 'counter');
    const eLocalSec = family('nightfuse_edge_local_callee_seconds_total', 'Sum of callee time of calls served in process', 'counter');
    const mWorkers = family('nightfuse_merge_workers', 'Worker processes of the caller in which the callee is merged and its route is in force (0 while being applied)', 'gauge');
    const mDecisions = family('nightfuse_merge_decisions_total', 'Merge decisions taken by a launcher, by kind', 'counter');
    for (const [node, s] of stats) {
      for (const f of s.functions) {
        const l = { node, function: f.name };
        fCalls.samples.push({ labels: l, value: f.calls });
        fFail.samples.push({ labels: l, value: f.failures });
        fRestarts.samples.push({ labels: l, value: f.restarts });
        fWorkers.samples.push({ labels: { ...l, state: 'idle' }, value: f.idle });
        fWorkers.samples.push({ labels: { ...l, state: 'busy' }, value: f.busy });
        fQueued.samples.push({ labels: l, value: f.queued });
      }
      for (const e of s.edges) {
        const l = { node, caller: e.caller, callee: e.callee };
        const localFailures = e.local_failures ?? 0;
        eIpc.samples.push({ labels: l, value: e.calls - e.local_calls });
        eLocal.samples.push({ labels: l, value: e.local_calls });
        eIpcFail.samples.push({ labels: l, value: e.failures - localFailures });
        eLocalFail.samples.push({ labels: l, value: localFailures });
        eIn.samples.push({ labels: l, value: e.input_bytes });
        eOut.samples.push({ labels: l, value: e.output_bytes });
        if (e.rpc_us_buckets?.length) eRpc.histograms!.push({ labels: l, slots: e.rpc_us_buckets, sum: e.rpc_us / 1e6 });
        if (e.processing_us_buckets?.length) {
          eCallee.histograms!.push({ labels: l, slots: e.processing_us_buckets, sum: (e.processing_us - (e.local_processing_us ?? 0)) / 1e6 });
        }
        eDelay.samples.push({ labels: l, value: e.dispatch_delay_us / 1e6 });
        eQueue.samples.push({ labels: l, value: e.queue_us / 1e6 });
        eLocalSec.samples.push({ labels: l, value: (e.local_processing_us ?? 0) / 1e6 });
      }
      for (const m of s.merges) {
        mWorkers.samples.push({ labels: { node, caller: m.caller, callee: m.callee, isolation: m.isolation }, value: m.workers_merged });
      }
      for (const [kind, v] of Object.entries(s.decisions ?? {})) mDecisions.samples.push({ labels: { node, kind }, value: Number(v) });
    }
    const fams = [fCalls, fFail, fRestarts, fWorkers, fQueued, eIpc, eLocal, eIpcFail, eLocalFail, eIn, eOut, eRpc, eCallee, eDelay, eQueue, eLocalSec, mWorkers, mDecisions];
    const reloads = this.cluster?.policyReloads?.();
    if (reloads) {
      const r = family('nightfuse_policy_reloads_total', 'Merge policy reloads at the gateway, applied or refused', 'counter');
      r.samples.push({ labels: { result: 'ok' }, value: reloads.ok }, { labels: { result: 'refused' }, value: reloads.refused });
      fams.push(r);
    }
    return [...fams, ...(this.cluster?.extra?.() ?? [])];
  }

  async render(): Promise<string> {
    return (await this.registry.metrics()) + renderFamilies([...this.requestFamilies(), ...this.clusterFamilies()]);
  }
}
