/**
 * The gateway's admin API (JSON over HTTP under /admin/v1, on the HTTP port),
 * the merge policy it distributes, and the cluster view it keeps.
 *
 * Auth: `Authorization: Bearer <token>` with the token from --admin_token or
 * NIGHTFUSE_ADMIN_TOKEN. Without a configured token the API is refused (403).
 * The routes below are the whole API: the router answers from this table and
 * the OpenAPI document (GET /admin/v1/openapi.json) is generated from it.
 */
import { readFileSync, statSync, unwatchFile, watchFile } from 'node:fs';
import { join } from 'node:path';
import type http from 'node:http';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import { PACKAGE_ROOT } from '../common/paths.js';
import { DEFAULT_POLICY, loadPolicy, parsePolicy, type Policy, PolicyError } from '../common/policy.js';
import { openApiDocument } from './admin-openapi.js';
import { AdminRouter, type Reply, type Route } from './admin-router.js';
import { MAX_STREAMS, AdminStream } from './admin-stream.js';
import { AdminView } from './admin-view.js';
import type { ControlServer } from './control-server.js';
import type { DesiredState } from './desired-state.js';
import type { EngineServer } from './engine-server.js';

export const ADMIN_PREFIX = '/admin/v1';

/** How long a changed policy file must stay unchanged before it is read. */
const SETTLE_MS = 1000;

export class PolicyStore {
  policy: Policy = DEFAULT_POLICY;
  source = 'built-in defaults';
  lastError = '';
  loadedAt = Date.now();
  reloads = { ok: 0, refused: 0 };
  private watching = false;
  private settleTimer: NodeJS.Timeout | undefined;

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
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size) this.reloadWhenSettled(cur);
    });
  }

  /**
   * A file seen changing may be half written (truncated, then filled: an empty or cut policy would
   * parse, and be applied): it is read only once it has stopped changing for SETTLE_MS. SIGHUP and
   * the admin API reload at once: the operator says the file is ready.
   */
  private reloadWhenSettled(seen: { mtimeMs: number; size: number }): void {
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      let now: { mtimeMs: number; size: number } | undefined;
      try {
        now = statSync(this.path);
      } catch {
        now = undefined;
      }
      if (now && (now.mtimeMs !== seen.mtimeMs || now.size !== seen.size)) return this.reloadWhenSettled(now);
      this.reloadFile('file changed');
    }, SETTLE_MS);
    this.settleTimer.unref();
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
    clearTimeout(this.settleTimer);
    if (this.watching) unwatchFile(this.path);
  }
}

export interface AdminOptions {
  token: string;
  config: FuncConfig;
  control: ControlServer | undefined;
  engines?: EngineServer;
  policy: PolicyStore;
  log: Logger;
  /** manual merges the gateway re-applies to launchers that (re)attach */
  desired?: DesiredState;
}

export const MAX_ADMIN_BODY = 1 << 20;
export const ADMIN_BODY_TIMEOUT_MS = 10_000;
const COMMAND_TIMEOUT_MS = 60_000;

const POLICY_EXAMPLE = 'defaults:\n  mode: auto\n  isolation: thread\nrules:\n  - caller: Foo\n    callee: Bar\n    isolation: stack\n';
const policyBody = { kind: 'text', schema: 'MergePolicy', mediaTypes: ['application/yaml', 'application/json', 'text/plain'], example: POLICY_EXAMPLE } as const;
const fnParams = { caller: 'FunctionName', callee: 'FunctionName' };
const ok = (body: unknown): Reply => ({ status: 200, body });

export class AdminApi {
  readonly view: AdminView;
  readonly stream: AdminStream;
  readonly routes: Route[];
  private readonly router: AdminRouter;
  private openapi: Record<string, unknown> | undefined;

  constructor(private readonly o: AdminOptions) {
    this.view = new AdminView(o.config, o.control, o.engines, o.policy);
    this.stream = new AdminStream(this.view, o.log);
    if (o.control) o.control.onMergeEvent = (node, e) => this.view.addEvent(node, e);
    this.routes = this.routeTable();
    this.router = new AdminRouter(this.routes, { prefix: ADMIN_PREFIX, token: o.token, log: o.log, maxBodyBytes: MAX_ADMIN_BODY, bodyTimeoutMs: ADMIN_BODY_TIMEOUT_MS });
  }

  /** The route hook for the HTTP front end: true when it handled the request. */
  handle = (req: http.IncomingMessage, res: http.ServerResponse, path: string, query = ''): boolean => this.router.handle(req, res, path, query);

  openApi(): Record<string, unknown> {
    return (this.openapi ??= openApiDocument(this.routes, ADMIN_PREFIX, (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version));
  }

  close(): void {
    this.stream.close();
    this.view.close();
  }

  private routeTable(): Route[] {
    const v = this.view;
    const list = (schema: string, description: string) => ({ 200: { description, schema } });
    return [
      { method: 'GET', path: '/openapi.json', operationId: 'openapi', summary: 'this document', public: true,
        responses: list('OpenApiDocument', 'the OpenAPI document'), handler: () => ok(this.openApi()) },
      { method: 'GET', path: '/status', operationId: 'status', summary: 'functions, nodes, merges and the policy in force',
        responses: list('Status', 'the cluster'), handler: () => ok(v.status()) },
      { method: 'GET', path: '/functions', operationId: 'functions', summary: 'functions with workers, calls and recent rates',
        responses: { 200: { description: 'every function of func_config.json', schema: 'FunctionList' } }, handler: () => ok(v.functions()) },
      { method: 'GET', path: '/nodes', operationId: 'nodes', summary: 'nodes (launchers) and their health',
        responses: { 200: { description: 'nodes seen on the control plane or the engine link', schema: 'NodeList' } }, handler: () => ok(v.nodes()) },
      { method: 'GET', path: '/edges', operationId: 'edges', summary: 'the call graph: caller -> callee edges with rates, latencies and path',
        responses: { 200: { description: 'one entry per node and edge', schema: 'EdgeList' } }, handler: () => ok(v.edges()) },
      { method: 'GET', path: '/merges', operationId: 'listMerges', summary: 'merged pairs with isolation, workers in force and age',
        responses: { 200: { description: 'one entry per node and pair', schema: 'MergeList' } }, handler: () => ok(v.merges()) },
      { method: 'POST', path: '/merges', operationId: 'merge', summary: 'merge callee into every worker of caller; answers once in force everywhere',
        body: { kind: 'json', schema: 'MergeRequest', mediaTypes: ['application/json'], example: { caller: 'Foo', callee: 'Bar', isolation: 'thread' } },
        responses: {
          200: { description: 'in force on every node that runs the caller', schema: 'CommandResults' },
          409: { description: 'refused or failed on some node (see results), or no node runs the caller', schema: 'CommandResults' },
          503: { description: 'the control plane is off', schema: 'Error' },
        },
        handler: async (c) => {
          const b = c.body as { caller: string; callee: string; isolation?: string };
          const iso = b.isolation ?? '';
          const r = await this.onNodes(b.caller, b.callee, { merge: { caller: b.caller, callee: b.callee, isolation: iso } });
          // Desired state: a merge that took effect somewhere is re-applied to nodes that (re)attach.
          if ((r.body as { results?: { ok: boolean }[] }).results?.some((x) => x.ok)) this.o.desired?.setMerge(b.caller, b.callee, iso);
          return r;
        } },
      { method: 'DELETE', path: '/merges/{caller}/{callee}', operationId: 'unmerge', summary: 'undo a merge on every node', params: fnParams,
        responses: {
          200: { description: 'unmerged on every node that runs the caller', schema: 'CommandResults' },
          409: { description: 'not merged, or failed on some node (see results)', schema: 'CommandResults' },
          503: { description: 'the control plane is off', schema: 'Error' },
        },
        handler: (c) => {
          const { caller, callee } = c.params;
          if (this.o.config.byName.has(caller) && this.o.config.byName.has(callee)) this.o.desired?.deleteMerge(caller, callee);
          return this.onNodes(caller, callee, { unmerge: { caller, callee } });
        } },
      { method: 'GET', path: '/events', operationId: 'events', summary: 'the decision log: merges, unmerges, failures, faults, with reasons and numbers',
        query: { since: { schema: 'EventSeq', description: 'only events with a larger seq' }, limit: { schema: 'EventLimit', description: 'the newest this many (default 200)' } },
        responses: { 200: { description: 'oldest first', schema: 'EventList' } },
        handler: (c) => ok(v.eventsSince(Number(c.query.since ?? 0), Number(c.query.limit ?? 200))) },
      { method: 'GET', path: '/stream', operationId: 'stream', summary: 'live view as server-sent events: `snapshot` (Snapshot), `events` (Event[]), keepalive comments',
        responses: {
          200: { description: 'text/event-stream; a snapshot and the recent events at once, then changes at most twice a second', mediaType: 'text/event-stream' },
          503: { description: `already ${MAX_STREAMS} streams open`, schema: 'Error' },
        },
        handler: (c) => (this.stream.open(c.req, c.res) ? undefined : { status: 503, body: { error: `too many admin streams open (limit ${MAX_STREAMS})` } }) },
      { method: 'GET', path: '/policy', operationId: 'getPolicy', summary: 'the policy in force: its text, where it came from, the effective settings',
        responses: list('Policy', 'the policy'), handler: () => ok(this.policyView()) },
      { method: 'POST', path: '/policy/validate', operationId: 'validatePolicy', summary: 'validate a policy (JSON or YAML) without applying it', body: policyBody,
        responses: { 200: { description: 'valid', schema: 'PolicyResult' }, 400: { description: 'invalid: every problem, naming the field and rule', schema: 'PolicyResult' } },
        handler: (c) => {
          try {
            parsePolicy(c.body as string, 'request body');
            return ok({ ok: true });
          } catch (err) {
            return { status: 400, body: { ok: false, errors: err instanceof PolicyError ? err.errors : [(err as Error).message] } };
          }
        } },
      { method: 'PUT', path: '/policy', operationId: 'applyPolicy', summary: 'validate, then replace the policy and push it to every launcher', body: policyBody,
        responses: { 200: { description: 'in force', schema: 'PolicyResult' }, 400: { description: 'invalid: the old policy stays in force', schema: 'PolicyResult' } },
        handler: (c) => {
          const r = this.o.policy.replaceText(c.body as string, 'admin API');
          return { status: r.ok ? 200 : 400, body: r };
        } },
    ];
  }

  private policyView() {
    const p = this.o.policy;
    return {
      source: p.source, loadedAt: new Date(p.loadedAt).toISOString(), lastError: p.lastError, reloads: p.reloads, text: p.policy.text,
      effective: { defaults: p.policy.settings, limits: p.policy.limits, rules: p.policy.doc.rules ?? [], trustGroups: p.policy.doc.trustGroups ?? {} },
    };
  }

  /** Runs a command on every node that runs `caller`; 200 if all succeeded. */
  private async onNodes(caller: string, callee: string, body: Parameters<ControlServer['command']>[1]): Promise<Reply> {
    for (const f of [caller, callee]) if (!this.o.config.byName.has(f)) return { status: 404, body: { error: `unknown function ${f}` } };
    const control = this.o.control;
    if (!control) return { status: 503, body: { error: 'the control plane is off (--control_port=-1)' } };
    const nodes = [...control.nodes.values()].filter((n) => n.stats?.functions.some((f) => f.name === caller && f.workers > 0));
    if (nodes.length === 0) return { status: 409, body: { ok: false, results: [], error: `no node runs a worker of ${caller}` } };
    const results = await Promise.all(nodes.map(async (n) => {
      const r = await control.command(n.hello.node_id, body, COMMAND_TIMEOUT_MS);
      let detail: unknown;
      try {
        detail = r.detail_json ? JSON.parse(r.detail_json) : undefined;
      } catch {
        detail = undefined;
      }
      return { node: n.hello.node_id, ok: r.ok, ...(r.error ? { error: r.error } : {}), ...(detail !== undefined ? { detail } : {}) };
    }));
    const allOk = results.every((r) => r.ok);
    return { status: allOk ? 200 : 409, body: { ok: allOk, results } };
  }

  private nodeStats() {
    return [...(this.o.control?.nodes.values() ?? [])];
  }
}
