/**
 * The cluster as the admin API and the console see it, built from the
 * launchers' control-plane reports and the engine links: functions, nodes and
 * their health, the call graph's edges with how their calls travel now, the
 * merges, and the decision log.
 *
 * Reports carry cumulative counters; recent rates and latencies come from a
 * short history of them (sampled each second, kept for WINDOW_MS), so an edge
 * that just got merged shows its new latency within seconds instead of being
 * averaged over its whole life.
 */
import type { FuncConfig } from '../common/func-config.js';
import type { MergeEventMsg, Stats } from '../proto/control.js';
import type { ControlServer } from './control-server.js';
import type { EngineServer } from './engine-server.js';
import type { PolicyStore } from './admin.js';

const WINDOW_MS = 5000;
const SAMPLE_MS = 1000;
const STALE_MS = 3000;
const MAX_EVENTS = 500;

export interface AdminEvent extends MergeEventMsg {
  seq: number;
  node: number;
  at: string;
  detail: Record<string, unknown>;
}

interface Sample {
  atMs: number;
  fns: Map<string, { calls: number; failures: number }>;
  edges: Map<string, { calls: number; local: number; failures: number; rpcUs: number; procUs: number }>;
}

const edgeKey = (caller: string, callee: string) => `${caller}\u0000${callee}`;
const round = (x: number, digits = 1) => Number(x.toFixed(digits));
const perSec = (d: number, dtMs: number) => (dtMs > 0 ? round((d * 1000) / dtMs, 2) : null);

function sampleOf(s: Stats): Sample {
  return {
    atMs: s.at_ms,
    fns: new Map(s.functions.map((f) => [f.name, { calls: f.calls, failures: f.failures }])),
    edges: new Map(s.edges.map((e) => [edgeKey(e.caller, e.callee), {
      calls: e.calls, local: e.local_calls, failures: e.failures, rpcUs: e.rpc_us, procUs: e.processing_us,
    }])),
  };
}

export class AdminView {
  readonly events: AdminEvent[] = [];
  /** Event ids start from the clock, so a follower's `since` cursor keeps working across gateway restarts. */
  private seq = Date.now() * 1000;
  private readonly history = new Map<number, Sample[]>();
  private readonly timer: NodeJS.Timeout;
  /** called for every event the gateway receives (the live stream) */
  onEvent: ((e: AdminEvent) => void) | undefined;

  constructor(
    private readonly config: FuncConfig,
    private readonly control: ControlServer | undefined,
    private readonly engines: EngineServer | undefined,
    private readonly policy: PolicyStore,
  ) {
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
  }

  addEvent(node: number, e: MergeEventMsg): AdminEvent {
    let detail: Record<string, unknown> = {};
    try {
      const d: unknown = e.detail_json ? JSON.parse(e.detail_json) : {};
      if (d && typeof d === 'object' && !Array.isArray(d)) detail = d as Record<string, unknown>;
    } catch {
      detail = { unparsed: e.detail_json.slice(0, 200) };
    }
    const at = Number.isFinite(e.at_ms) && e.at_ms > 0 && e.at_ms < 8.64e15 ? e.at_ms : Date.now();
    const ev: AdminEvent = { ...e, at_ms: at, seq: ++this.seq, node, at: new Date(at).toISOString(), detail };
    this.events.push(ev);
    if (this.events.length > MAX_EVENTS) this.events.shift();
    this.onEvent?.(ev);
    return ev;
  }

  /** Events after `since` (a seq), the newest `limit` of them. */
  eventsSince(since = 0, limit = 200): AdminEvent[] {
    const after = this.events.filter((e) => e.seq > since);
    return after.slice(-limit);
  }

  private attached() {
    return [...(this.control?.nodes.values() ?? [])];
  }

  private sample(now = Date.now()): void {
    const live = new Set<number>();
    for (const n of this.attached()) {
      if (!n.stats) continue;
      const id = n.hello.node_id;
      live.add(id);
      const h = this.history.get(id) ?? [];
      if (h.length === 0 || h[h.length - 1].atMs !== n.stats.at_ms) h.push(sampleOf(n.stats));
      while (h.length > 2 && h[1].atMs <= now - WINDOW_MS) h.shift();
      this.history.set(id, h);
    }
    for (const id of this.history.keys()) if (!live.has(id)) this.history.delete(id);
  }

  /** Oldest and newest sample of a node's recent history (the newest is its latest report). */
  private window(node: number, latest: Stats): { old: Sample | undefined; cur: Sample } {
    this.sample();
    const h = this.history.get(node) ?? [];
    const cur = h[h.length - 1]?.atMs === latest.at_ms ? h[h.length - 1] : sampleOf(latest);
    const old = h.find((s) => s.atMs < cur.atMs);
    return { old, cur };
  }

  functions() {
    return this.config.entries.map((e) => {
      let workers = 0, calls = 0, failures = 0, queued = 0, dCalls = 0, dFail = 0, dt = 0;
      for (const n of this.attached()) {
        const f = n.stats?.functions.find((x) => x.name === e.funcName);
        if (!f || !n.stats) continue;
        workers += f.workers;
        calls += f.calls;
        failures += f.failures;
        queued += f.queued;
        const { old, cur } = this.window(n.hello.node_id, n.stats);
        const before = old?.fns.get(e.funcName);
        if (old && before) {
          dt = Math.max(dt, cur.atMs - old.atMs);
          dCalls += f.calls - before.calls;
          dFail += f.failures - before.failures;
        }
      }
      return {
        name: e.funcName, funcId: e.funcId, grpc: e.isGrpc, trustGroup: this.policy.policy.trustGroup(e.funcName),
        workers, calls, failures, queued, callsPerSec: perSec(dCalls, dt), failuresPerSec: perSec(dFail, dt),
      };
    });
  }

  nodes() {
    const now = Date.now();
    const ids = new Set<number>([...this.attached().map((n) => n.hello.node_id), ...(this.engines?.nodes.keys() ?? [])]);
    return [...ids].sort((a, b) => a - b).map((id) => {
      const n = this.control?.nodes.get(id);
      const eng = this.engines?.nodes.get(id);
      const reportAgeMs = n?.stats ? Math.max(0, now - n.stats.at_ms) : null;
      const engineConnections = eng?.conns.length ?? 0;
      const health = !n ? 'no-control-plane' : engineConnections === 0 ? 'no-engine-link' : eng?.draining ? 'draining'
        : reportAgeMs === null || reportAgeMs > STALE_MS ? 'stale' : 'ok';
      return {
        nodeId: id, hostname: n?.hello.hostname ?? '', pid: n?.hello.pid ?? 0,
        attachedAt: n ? new Date(n.attachedAt).toISOString() : null,
        lastReport: n?.stats ? new Date(n.stats.at_ms).toISOString() : null, reportAgeMs,
        decisions: n?.stats?.decisions ?? {}, policyError: n?.stats?.policy_error ?? '',
        controlPlane: n !== undefined, engineConnections, inflight: eng?.inflight ?? 0, health,
      };
    });
  }

  merges() {
    const out = [];
    for (const n of this.attached()) {
      for (const m of n.stats?.merges ?? []) {
        out.push({
          node: n.hello.node_id, caller: m.caller, callee: m.callee, isolation: m.isolation, state: m.state,
          workersMerged: m.workers_merged, workersTotal: m.workers_total, ageSec: Math.max(0, Math.round((Date.now() - m.since_ms) / 1000)),
          since: new Date(m.since_ms).toISOString(),
        });
      }
    }
    return out;
  }

  edges() {
    const out = [];
    for (const n of this.attached()) {
      if (!n.stats) continue;
      const id = n.hello.node_id;
      const { old, cur } = this.window(id, n.stats);
      const dt = old ? cur.atMs - old.atMs : 0;
      for (const e of n.stats.edges) {
        const ipc = e.calls - e.local_calls;
        const m = n.stats.merges.find((x) => x.caller === e.caller && x.callee === e.callee);
        const path = !m ? 'ipc' : m.state === 'merged' && m.workers_merged > 0 ? 'merged' : m.state === 'unmerging' ? 'unmerging' : 'merging';
        const a = old?.edges.get(edgeKey(e.caller, e.callee)) ?? (old ? { calls: 0, local: 0, failures: 0, rpcUs: 0, procUs: 0 } : undefined);
        let recent = { windowSec: null, callsPerSec: null, ipcCallsPerSec: null, localCallsPerSec: null, failuresPerSec: null, avgRpcUs: null, avgCalleeUs: null } as Record<string, number | null>;
        if (a && dt > 0) {
          const dCalls = e.calls - a.calls;
          const dLocal = e.local_calls - a.local;
          const dIpc = dCalls - dLocal;
          recent = {
            windowSec: round(dt / 1000, 2), callsPerSec: perSec(dCalls, dt), ipcCallsPerSec: perSec(dIpc, dt), localCallsPerSec: perSec(dLocal, dt),
            failuresPerSec: perSec(e.failures - a.failures, dt),
            avgRpcUs: dIpc > 0 ? round((e.rpc_us - a.rpcUs) / dIpc) : null,
            avgCalleeUs: dCalls > 0 ? round((e.processing_us - a.procUs) / dCalls) : null,
          };
        }
        out.push({
          node: id, caller: e.caller, callee: e.callee, calls: e.calls, localCalls: e.local_calls, failures: e.failures,
          callsPerSec: round(e.rate_per_sec, 2), avgRpcUs: ipc > 0 ? round(e.rpc_us / ipc) : null,
          avgCalleeUs: ipc > 0 ? round(e.processing_us / ipc) : null, inputBytes: e.input_bytes, outputBytes: e.output_bytes,
          path, isolation: m?.isolation ?? null, recent,
        });
      }
    }
    return out;
  }

  policySummary() {
    const p = this.policy;
    return { source: p.source, lastError: p.lastError, loadedAt: new Date(p.loadedAt).toISOString() };
  }

  status() {
    return { functions: this.functions(), nodes: this.nodes(), merges: this.merges(), policy: this.policySummary() };
  }

  snapshot() {
    return {
      at: new Date().toISOString(), functions: this.functions(), nodes: this.nodes(), edges: this.edges(), merges: this.merges(),
      policy: this.policySummary(),
    };
  }
}
