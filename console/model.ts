/**
 * What the console reads from the admin API (the shapes are defined by the
 * schemas in gateway/admin-schemas.ts and published at /admin/v1/openapi.json;
 * these are the fields the page uses).
 */
export interface Fn {
  name: string; funcId: number; grpc: boolean; trustGroup: string; workers: number; calls: number; failures: number; queued: number;
  callsPerSec: number | null; failuresPerSec: number | null;
}

export interface ClusterNode {
  nodeId: number; hostname: string; pid: number; lastReport: string | null; reportAgeMs: number | null;
  decisions: Record<string, number>; policyError: string; controlPlane: boolean; engineConnections: number; inflight: number;
  health: 'ok' | 'stale' | 'draining' | 'no-engine-link' | 'no-control-plane';
}

export interface Edge {
  node: number; caller: string; callee: string; calls: number; localCalls: number; failures: number; callsPerSec: number;
  avgRpcUs: number | null; avgCalleeUs: number | null; path: 'ipc' | 'merged' | 'merging' | 'unmerging'; isolation: string | null;
  recent: {
    windowSec: number | null; callsPerSec: number | null; ipcCallsPerSec: number | null; localCallsPerSec: number | null;
    failuresPerSec: number | null; avgRpcUs: number | null; avgCalleeUs: number | null;
  };
}

export interface Merge {
  node: number; caller: string; callee: string; isolation: string; state: string; workersMerged: number; workersTotal: number; since: string;
}

export interface Snapshot {
  at: string; functions: Fn[]; nodes: ClusterNode[]; edges: Edge[]; merges: Merge[];
  policy: { source: string; lastError: string; loadedAt: string };
}

export interface AdminEvent {
  seq: number; node: number; at: string; kind: string; caller: string; callee: string; isolation: string; reason: string;
  detail: Record<string, unknown>;
}

/** One caller -> callee edge over every node (what the graph draws). */
export interface PairView {
  id: string; caller: string; callee: string; rate: number; ipcRate: number; localRate: number; failures: number; calls: number;
  path: 'ipc' | 'merged' | 'partly merged' | 'changing'; isolation: string; avgRpcUs: number | null; avgCalleeUs: number | null;
}

export const pairId = (caller: string, callee: string) => `${caller}->${callee}`;

/** Folds the per-node edges into one per pair. */
export function pairs(s: Snapshot): PairView[] {
  const by = new Map<string, Edge[]>();
  for (const e of s.edges) {
    const id = pairId(e.caller, e.callee);
    by.set(id, [...(by.get(id) ?? []), e]);
  }
  return [...by.entries()].map(([id, es]) => {
    const sum = (f: (e: Edge) => number | null) => es.reduce((a, e) => a + (f(e) ?? 0), 0);
    const paths = new Set(es.map((e) => e.path));
    const path: PairView['path'] = paths.has('merging') || paths.has('unmerging') ? 'changing'
      : paths.size === 1 && paths.has('merged') ? 'merged' : paths.has('merged') ? 'partly merged' : 'ipc';
    const weighted = (f: (e: Edge) => number | null, w: (e: Edge) => number | null) => {
      let num = 0, den = 0;
      for (const e of es) {
        const v = f(e);
        const k = w(e) ?? 0;
        if (v !== null && k > 0) {
          num += v * k;
          den += k;
        }
      }
      return den > 0 ? num / den : (es.length === 1 ? f(es[0]) : null);
    };
    return {
      id, caller: es[0].caller, callee: es[0].callee,
      rate: sum((e) => e.recent.callsPerSec ?? e.callsPerSec), ipcRate: sum((e) => e.recent.ipcCallsPerSec), localRate: sum((e) => e.recent.localCallsPerSec),
      failures: sum((e) => e.failures), calls: sum((e) => e.calls), path,
      isolation: [...new Set(es.map((e) => e.isolation).filter((x): x is string => !!x))].join('/'),
      avgRpcUs: weighted((e) => e.recent.avgRpcUs, (e) => e.recent.ipcCallsPerSec),
      avgCalleeUs: weighted((e) => e.recent.avgCalleeUs, (e) => e.recent.callsPerSec),
    };
  });
}

export const fmt = {
  rate: (x: number | null | undefined) => (x === null || x === undefined ? '–' : x >= 100 ? x.toFixed(0) : x.toFixed(1)),
  us: (x: number | null | undefined) => (x === null || x === undefined ? '–' : x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(0)} µs`),
  age: (sinceIso: string) => {
    const s = Math.max(0, Math.round((Date.now() - Date.parse(sinceIso)) / 1000));
    return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  },
};
