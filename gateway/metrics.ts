/**
 * GET /metrics: the gateway's own request metrics (prom-client), plus the
 * cluster view the launchers report over the control plane (per-function
 * worker counts and counters, and the call graph's edges), rendered from
 * their latest snapshots with the right Prometheus types.
 */
import client from 'prom-client';
import type { Stats } from '../proto/control.js';

export interface ClusterView {
  /** latest Stats per node id */
  nodeStats(): Map<number, Stats>;
  /** extra families (merge metrics) */
  extra?(): MetricFamily[];
}

export interface MetricFamily {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  samples: { labels: Record<string, string | number>; value: number }[];
}

function esc(v: string | number): string {
  return String(v).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

export function renderFamilies(fams: MetricFamily[]): string {
  let out = '';
  for (const f of fams) {
    out += `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${esc(v)}"`).join(',');
      out += `${f.name}${labels ? `{${labels}}` : ''} ${Number.isFinite(s.value) ? s.value : 0}\n`;
    }
  }
  return out;
}

export class GatewayMetrics {
  readonly registry = new client.Registry();
  private readonly requests: client.Counter<'function' | 'protocol' | 'status'>;
  private readonly duration: client.Histogram<'function' | 'protocol'>;
  private readonly children = new Map<string, { c: client.Counter.Internal; h: client.Histogram.Internal<'function' | 'protocol'> }>();
  cluster: ClusterView | undefined;

  constructor(gauges: { running: () => number; queued: () => number; nodes: () => number }) {
    this.requests = new client.Counter({
      name: 'nightfuse_gateway_requests_total',
      help: 'External calls by function, protocol and status (HTTP status code, or gRPC status for grpc)',
      labelNames: ['function', 'protocol', 'status'],
      registers: [this.registry],
    });
    this.duration = new client.Histogram({
      name: 'nightfuse_gateway_request_duration_seconds',
      help: 'External call latency seen by the gateway',
      labelNames: ['function', 'protocol'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers: [this.registry],
    });
    const gauge = (name: string, help: string, f: () => number) =>
      new client.Gauge({ name, help, registers: [this.registry], collect() { this.set(f()); } });
    gauge('nightfuse_gateway_running_calls', 'Calls dispatched and not yet answered', gauges.running);
    gauge('nightfuse_gateway_queued_calls', 'Calls waiting for --max_running_requests', gauges.queued);
    gauge('nightfuse_gateway_connected_nodes', 'Nodes with at least one engine connection', gauges.nodes);
  }

  request(func: string, status: number, seconds: number, protocol: 'http' | 'grpc' = 'http'): void {
    const key = `${protocol}\u0000${func}\u0000${status}`;
    let ch = this.children.get(key);
    if (!ch) {
      ch = { c: this.requests.labels(func, protocol, String(status)), h: this.duration.labels(func, protocol) };
      this.children.set(key, ch);
    }
    ch.c.inc();
    if (seconds > 0) ch.h.observe(seconds);
  }

  private clusterFamilies(): MetricFamily[] {
    const stats = this.cluster?.nodeStats() ?? new Map<number, Stats>();
    const fam = (name: string, help: string, type: 'counter' | 'gauge'): MetricFamily => ({ name, help, type, samples: [] });
    const fCalls = fam('nightfuse_function_calls_total', 'Calls (external and nested) received by a function on a node', 'counter');
    const fFail = fam('nightfuse_function_failures_total', 'Failed calls of a function on a node', 'counter');
    const fRestarts = fam('nightfuse_function_worker_restarts_total', 'Worker processes of a function that exited and were replaced', 'counter');
    const fWorkers = fam('nightfuse_function_workers', 'Worker processes of a function by state', 'gauge');
    const fQueued = fam('nightfuse_function_queued_calls', 'Calls waiting in the launcher for a free worker', 'gauge');
    const eCalls = fam('nightfuse_edge_calls_total', 'Nested calls caller -> callee (IPC and merged)', 'counter');
    const eLocal = fam('nightfuse_edge_local_calls_total', 'Nested calls served in the caller process by a merged callee', 'counter');
    const eFail = fam('nightfuse_edge_failures_total', 'Failed nested calls caller -> callee', 'counter');
    const eIn = fam('nightfuse_edge_input_bytes_total', 'Input bytes of nested calls', 'counter');
    const eOut = fam('nightfuse_edge_output_bytes_total', 'Output bytes of nested calls', 'counter');
    const eDelay = fam('nightfuse_edge_dispatch_delay_seconds_total', 'Sum of dispatch delays (launcher send -> callee receive)', 'counter');
    const eProc = fam('nightfuse_edge_processing_seconds_total', 'Sum of callee processing times', 'counter');
    const eRpc = fam('nightfuse_edge_rpc_seconds_total', 'Sum of round trips through the launcher (INVOKE received -> result forwarded)', 'counter');
    const eRate = fam('nightfuse_edge_calls_per_second', 'Decayed call rate of the edge (5 s time constant)', 'gauge');
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
        eCalls.samples.push({ labels: l, value: e.calls });
        eLocal.samples.push({ labels: l, value: e.local_calls });
        eFail.samples.push({ labels: l, value: e.failures });
        eIn.samples.push({ labels: l, value: e.input_bytes });
        eOut.samples.push({ labels: l, value: e.output_bytes });
        eDelay.samples.push({ labels: l, value: e.dispatch_delay_us / 1e6 });
        eProc.samples.push({ labels: l, value: e.processing_us / 1e6 });
        eRpc.samples.push({ labels: l, value: e.rpc_us / 1e6 });
        eRate.samples.push({ labels: l, value: e.rate_per_sec });
      }
    }
    return [fCalls, fFail, fRestarts, fWorkers, fQueued, eCalls, eLocal, eFail, eIn, eOut, eDelay, eProc, eRpc, eRate, ...(this.cluster?.extra?.() ?? [])];
  }

  async render(): Promise<string> {
    return (await this.registry.metrics()) + renderFamilies(this.clusterFamilies());
  }
}
