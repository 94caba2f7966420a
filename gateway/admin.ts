/**
 * The gateway's admin API (JSON over HTTP under /admin/v1, on the HTTP port),
 * the merge policy it distributes, and the cluster view it keeps.
 *
 * Auth: `Authorization: Bearer <token>` with the token from --admin_token or
 * NIGHTFUSE_ADMIN_TOKEN. Without a configured token the API is refused (403).
 *
 *   GET    /admin/v1/status                 functions, nodes, merges, policy summary
 *   GET    /admin/v1/functions | nodes | edges | merges | events
 *   POST   /admin/v1/merges                 {caller, callee, isolation?}: returns once in force in every worker
 *   DELETE /admin/v1/merges/<caller>/<callee>
 *   GET    /admin/v1/policy                 the policy text and where it came from
 *   POST   /admin/v1/policy/validate        body: policy (JSON or YAML) -> 200 {ok} | 400 {errors}
 *   PUT    /admin/v1/policy                 validate, then replace and push to every launcher
 */
import { timingSafeEqual } from 'node:crypto';
import { unwatchFile, watchFile } from 'node:fs';
import type http from 'node:http';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import { DEFAULT_POLICY, loadPolicy, parsePolicy, type Policy, PolicyError } from '../common/policy.js';
import type { MergeEventMsg } from '../proto/control.js';
import type { ControlServer } from './control-server.js';
import type { DesiredState } from './desired-state.js';
import type { MetricFamily } from './metrics.js';
import { collectBody } from '../common/body.js';

export const ADMIN_PREFIX = '/admin/v1';
const MAX_ADMIN_BODY = 1 << 20;

export class PolicyStore {
  policy: Policy = DEFAULT_POLICY;
  source = 'built-in defaults';
  lastError = '';
  loadedAt = Date.now();
  reloads = { ok: 0, refused: 0 };
  private watching = false;

  constructor(private readonly log: Logger, private readonly onChange: (p: Policy) => void, readonly path = '') {}

  /** At start: an invalid file is fatal (throws PolicyError). */
  init(): void {
    if (!this.path) return;
    this.policy = loadPolicy(this.path);
    this.source = this.path;
    this.watchFileChanges();
  }

  private watchFileChanges(): void {
    if (this.watching) return;
    this.watching = true;
    watchFile(this.path, { interval: 500 }, (cur, prev) => {
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size) this.reloadFile('file changed');
    });
  }

  /** Reload from the file; an invalid file keeps the old policy and says why. */
  reloadFile(why: string): { ok: boolean; errors?: string[] } {
    if (!this.path) return { ok: false, errors: ['no --merge_policy_file to reload'] };
    try {
      return this.replace(loadPolicy(this.path), this.path, why);
    } catch (err) {
      return this.refuse(err, why);
    }
  }

  replaceText(text: string, source: string): { ok: boolean; errors?: string[] } {
    try {
      return this.replace(parsePolicy(text, source), source, 'replaced through the admin API');
    } catch (err) {
      return this.refuse(err, 'admin API');
    }
  }

  private replace(p: Policy, source: string, why: string): { ok: true } {
    this.policy = p;
    this.source = source;
    this.loadedAt = Date.now();
    this.lastError = '';
    this.reloads.ok++;
    this.log.info({ source, why }, 'merge policy replaced');
    this.onChange(p);
    return { ok: true };
  }

  private refuse(err: unknown, why: string): { ok: false; errors: string[] } {
    const errors = err instanceof PolicyError ? err.errors : [(err as Error).message];
    this.lastError = errors.join('; ');
    this.reloads.refused++;
    this.log.error({ why, errors }, 'merge policy reload refused; the old policy stays in force');
    return { ok: false, errors };
  }

  close(): void {
    if (this.watching) unwatchFile(this.path);
  }
}

export interface AdminOptions {
  token: string;
  config: FuncConfig;
  control: ControlServer | undefined;
  policy: PolicyStore;
  log: Logger;
  /** manual merges the gateway re-applies to launchers that (re)attach */
  desired?: DesiredState;
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const b = Buffer.from(JSON.stringify(body, null, 1) + '\n');
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': b.length });
  res.end(b);
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const r = await collectBody(req, MAX_ADMIN_BODY);
  if (!r.ok) throw new Error(`admin request body of ${r.size} bytes is over ${MAX_ADMIN_BODY}`);
  return r.body.toString('utf8');
}

export class AdminApi {
  readonly events: (MergeEventMsg & { node: number })[] = [];

  constructor(private readonly o: AdminOptions) {
    if (o.control) o.control.onMergeEvent = (node, e) => {
      this.events.push({ ...e, node });
      if (this.events.length > 500) this.events.shift();
    };
  }

  private authorized(req: http.IncomingMessage): boolean {
    const h = req.headers.authorization ?? '';
    const m = /^Bearer (.+)$/.exec(h);
    if (!m || !this.o.token) return false;
    const a = Buffer.from(m[1]);
    const b = Buffer.from(this.o.token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  /** The route hook for the HTTP front end: true when it handled the request. */
  handle = (req: http.IncomingMessage, res: http.ServerResponse, path: string): boolean => {
    if (path !== ADMIN_PREFIX && !path.startsWith(ADMIN_PREFIX + '/')) return false;
    if (!this.o.token) {
      req.resume();
      send(res, 403, { error: 'the admin API is disabled: start the gateway with --admin_token or NIGHTFUSE_ADMIN_TOKEN' });
      return true;
    }
    if (!this.authorized(req)) {
      req.resume();
      send(res, 401, { error: 'missing or wrong admin token (Authorization: Bearer <token>)' });
      return true;
    }
    this.route(req, res, path.slice(ADMIN_PREFIX.length) || '/').catch((err: Error) => {
      this.o.log.error({ path, err: err.message }, 'admin request failed');
      if (!res.headersSent) send(res, 500, { error: err.message });
    });
    return true;
  };

  private async route(req: http.IncomingMessage, res: http.ServerResponse, path: string): Promise<void> {
    const m = req.method ?? 'GET';
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const [head, a, b] = parts;
    if (m === 'GET' && head === 'status') return send(res, 200, this.status());
    if (m === 'GET' && head === 'functions') return send(res, 200, this.functions());
    if (m === 'GET' && head === 'nodes') return send(res, 200, this.nodes());
    if (m === 'GET' && head === 'edges') return send(res, 200, this.edges());
    if (m === 'GET' && head === 'merges' && !a) return send(res, 200, this.merges());
    if (m === 'GET' && head === 'events') return send(res, 200, this.events.slice(-200));
    if (m === 'POST' && head === 'merges' && !a) return this.merge(req, res);
    if (m === 'DELETE' && head === 'merges' && a && b) return this.unmerge(res, a, b);
    if (head === 'policy') {
      if (m === 'GET' && !a) {
        const p = this.o.policy;
        return send(res, 200, { source: p.source, loadedAt: new Date(p.loadedAt).toISOString(), lastError: p.lastError, reloads: p.reloads, text: p.policy.text, effective: { defaults: p.policy.settings, limits: p.policy.limits, rules: p.policy.doc.rules ?? [], trustGroups: p.policy.doc.trustGroups ?? {} } });
      }
      if (m === 'POST' && a === 'validate') {
        const text = await readBody(req);
        try {
          parsePolicy(text, 'request body');
          return send(res, 200, { ok: true });
        } catch (err) {
          return send(res, 400, { ok: false, errors: err instanceof PolicyError ? err.errors : [(err as Error).message] });
        }
      }
      if (m === 'PUT' && !a) {
        const r = this.o.policy.replaceText(await readBody(req), 'admin API');
        return send(res, r.ok ? 200 : 400, r);
      }
    }
    req.resume();
    send(res, 404, { error: `no admin route ${m} ${ADMIN_PREFIX}${path}` });
  }

  private nodeStats() {
    return [...(this.o.control?.nodes.values() ?? [])];
  }

  status() {
    return {
      functions: this.functions(),
      nodes: this.nodes(),
      merges: this.merges(),
      policy: { source: this.o.policy.source, lastError: this.o.policy.lastError },
    };
  }

  functions() {
    return this.o.config.entries.map((e) => {
      let workers = 0, calls = 0, failures = 0, queued = 0;
      for (const n of this.nodeStats()) {
        const f = n.stats?.functions.find((x) => x.name === e.funcName);
        if (f) {
          workers += f.workers;
          calls += f.calls;
          failures += f.failures;
          queued += f.queued;
        }
      }
      return { name: e.funcName, funcId: e.funcId, grpc: e.isGrpc, trustGroup: this.o.policy.policy.trustGroup(e.funcName), workers, calls, failures, queued };
    });
  }

  nodes() {
    return this.nodeStats().map((n) => ({
      nodeId: n.hello.node_id, hostname: n.hello.hostname, pid: n.hello.pid, attachedAt: new Date(n.attachedAt).toISOString(),
      lastReport: n.stats ? new Date(n.stats.at_ms).toISOString() : null, decisions: n.stats?.decisions ?? {}, policyError: n.stats?.policy_error ?? '',
    }));
  }

  edges() {
    const out = [];
    for (const n of this.nodeStats()) {
      for (const e of n.stats?.edges ?? []) {
        const ipc = e.calls - e.local_calls;
        out.push({
          node: n.hello.node_id, caller: e.caller, callee: e.callee, calls: e.calls, localCalls: e.local_calls, failures: e.failures,
          callsPerSec: Number(e.rate_per_sec.toFixed(2)), avgRpcUs: ipc > 0 ? Number((e.rpc_us / ipc).toFixed(1)) : null,
          avgCalleeUs: ipc > 0 ? Number((e.processing_us / ipc).toFixed(1)) : null, inputBytes: e.input_bytes, outputBytes: e.output_bytes,
        });
      }
    }
    return out;
  }

  merges() {
    const out = [];
    for (const n of this.nodeStats()) {
      for (const m of n.stats?.merges ?? []) {
        out.push({
          node: n.hello.node_id, caller: m.caller, callee: m.callee, isolation: m.isolation, state: m.state,
          workersMerged: m.workers_merged, workersTotal: m.workers_total, ageSec: Math.round((Date.now() - m.since_ms) / 1000),
        });
      }
    }
    return out;
  }

  /** Runs a command on every node that runs `caller`; 200 if all succeeded. Resolves to whether any node succeeded. */
  private async onNodes(res: http.ServerResponse, caller: string, body: Parameters<ControlServer['command']>[1]): Promise<boolean> {
    if (!this.o.control) {
      send(res, 503, { error: 'the control plane is off (--control_port=-1)' });
      return false;
    }
    const nodes = this.nodeStats().filter((n) => n.stats?.functions.some((f) => f.name === caller && f.workers > 0));
    if (nodes.length === 0) {
      send(res, 409, { error: `no node runs a worker of ${caller}` });
      return false;
    }
    const results = await Promise.all(nodes.map(async (n) => {
      const r = await this.o.control!.command(n.hello.node_id, body, 60000);
      return { node: n.hello.node_id, ok: r.ok, error: r.error || undefined, detail: r.detail_json ? JSON.parse(r.detail_json) : undefined };
    }));
    const ok = results.every((r) => r.ok);
    send(res, ok ? 200 : 409, { ok, results });
    return results.some((r) => r.ok);
  }

  private async merge(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let body: { caller?: unknown; callee?: unknown; isolation?: unknown };
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return send(res, 400, { error: 'body must be JSON: {"caller": "...", "callee": "...", "isolation": "inline|stack|thread"}' });
    }
    const { caller, callee, isolation } = body;
    if (typeof caller !== 'string' || typeof callee !== 'string') return send(res, 400, { error: 'caller and callee are required strings' });
    if (isolation !== undefined && !['inline', 'stack', 'thread'].includes(String(isolation))) {
      return send(res, 400, { error: 'isolation must be one of inline, stack, thread' });
    }
    for (const f of [caller, callee]) if (!this.o.config.byName.has(f)) return send(res, 404, { error: `unknown function ${f}` });
    const iso = (isolation as string) ?? '';
    // Desired state: a merge that took effect somewhere is re-applied to nodes that (re)attach.
    if (await this.onNodes(res, caller, { merge: { caller, callee, isolation: iso } })) this.o.desired?.setMerge(caller, callee, iso);
  }

  private async unmerge(res: http.ServerResponse, caller: string, callee: string): Promise<void> {
    this.o.desired?.deleteMerge(caller, callee);
    await this.onNodes(res, caller, { unmerge: { caller, callee } });
  }

  /** Merge metrics from the launchers' reports. */
  metricFamilies(): MetricFamily[] {
    const merges: MetricFamily = { name: 'nightfuse_merges', help: 'Merged callees: workers of the caller the merge is in force in', type: 'gauge', samples: [] };
    const decisions: MetricFamily = { name: 'nightfuse_merge_decisions_total', help: 'Merge decisions taken by launchers, by kind', type: 'counter', samples: [] };
    for (const n of this.nodeStats()) {
      for (const m of n.stats?.merges ?? []) {
        merges.samples.push({ labels: { node: n.hello.node_id, caller: m.caller, callee: m.callee, isolation: m.isolation, state: m.state }, value: m.workers_merged });
      }
      for (const [kind, v] of Object.entries(n.stats?.decisions ?? {})) decisions.samples.push({ labels: { node: n.hello.node_id, kind }, value: Number(v) });
    }
    const reloads: MetricFamily = { name: 'nightfuse_policy_reloads_total', help: 'Merge policy reloads, applied or refused', type: 'counter', samples: [
      { labels: { result: 'ok' }, value: this.o.policy.reloads.ok }, { labels: { result: 'refused' }, value: this.o.policy.reloads.refused },
    ] };
    return [merges, decisions, reloads];
  }
}
