/**
 * The admin commands of `nightfuse`: a client of the gateway's admin API.
 * The gateway and token come from --gateway / --admin_token or
 * NIGHTFUSE_GATEWAY / NIGHTFUSE_ADMIN_TOKEN. Tables for people, --json for
 * scripts; exit status 1 on refusal or failure, 2 on usage errors.
 */
import { readFileSync } from 'node:fs';
import { FlagError, parseFlags, type FlagSpecs } from '../common/flags.js';
import { parsePolicy, PolicyError } from '../common/policy.js';

const FLAGS = {
  gateway: { type: 'string', default: '', help: 'gateway HTTP address, e.g. http://127.0.0.1:8080 (or NIGHTFUSE_GATEWAY)' },
  admin_token: { type: 'string', default: '', help: 'admin token (or NIGHTFUSE_ADMIN_TOKEN)' },
  json: { type: 'bool', default: false, help: 'print JSON' },
  isolation: { type: 'string', default: '', help: 'merge: inline, stack or thread (default: the policy\'s)' },
} satisfies FlagSpecs;

export const ADMIN_USAGE = `  status                   functions, nodes and merges
  merges                   merged pairs with isolation, workers and age
  edges                    the call graph with live rates
  merge CALLER CALLEE      merge by hand [--isolation inline|stack|thread]; returns once in force in every worker
  unmerge CALLER CALLEE    undo a merge
  policy check FILE        validate a policy file (locally)
  policy apply FILE        replace the gateway's policy (validated there too)
  (admin commands take --gateway URL --admin_token T --json, or NIGHTFUSE_GATEWAY / NIGHTFUSE_ADMIN_TOKEN)`;

function table(rows: Record<string, unknown>[], cols: string[]): string {
  if (rows.length === 0) return '(none)\n';
  const cells = [cols, ...rows.map((r) => cols.map((c) => (r[c] === null || r[c] === undefined ? '-' : String(r[c]))))];
  const w = cols.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n') + '\n';
}

class Api {
  constructor(private readonly base: string, private readonly token: string) {}
  async call(method: string, path: string, body?: string): Promise<{ status: number; data: any }> {
    let r: Response;
    try {
      r = await fetch(`${this.base}/admin/v1${path}`, { method, body, headers: { Authorization: `Bearer ${this.token}` } });
    } catch (err) {
      throw new Error(`cannot reach the gateway at ${this.base}: ${(err as Error).cause ? String((err as { cause: Error }).cause.message) : (err as Error).message}`);
    }
    const text = await r.text();
    let data: any;
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text };
    }
    return { status: r.status, data };
  }
}

export async function runAdmin(cmd: string, argv: string[]): Promise<number> {
  const { values: f, rest } = parseFlags(FLAGS, argv, { positional: true });
  const out = (x: unknown, human: () => string) => process.stdout.write(f.json ? JSON.stringify(x, null, 1) + '\n' : human());
  if (cmd === 'policy' && rest[0] === 'check') {
    if (!rest[1]) throw new FlagError('usage: nightfuse policy check FILE');
    try {
      const p = parsePolicy(readFileSync(rest[1], 'utf8'), rest[1]);
      out({ ok: true }, () => `${rest[1]}: valid (${p.doc.rules?.length ?? 0} rules, ${Object.keys(p.doc.trustGroups ?? {}).length} trust groups)\n`);
      return 0;
    } catch (err) {
      const errors = err instanceof PolicyError ? err.errors : [(err as Error).message];
      out({ ok: false, errors }, () => `${rest[1]}: invalid\n  ${errors.join('\n  ')}\n`);
      return 1;
    }
  }
  const base = (f.gateway || process.env.NIGHTFUSE_GATEWAY || 'http://127.0.0.1:8080').replace(/\/$/, '');
  const token = f.admin_token || process.env.NIGHTFUSE_ADMIN_TOKEN || '';
  if (!token) throw new FlagError('no admin token: give --admin_token or set NIGHTFUSE_ADMIN_TOKEN');
  const api = new Api(base.includes('://') ? base : `http://${base}`, token);
  const fail = (r: { status: number; data: any }) => {
    const errors = r.data.errors ?? (r.data.results ? r.data.results.filter((x: any) => !x.ok).map((x: any) => `node ${x.node}: ${x.error}`) : [r.data.error]);
    if (f.json) process.stdout.write(JSON.stringify(r.data, null, 1) + '\n');
    else process.stderr.write(`nightfuse ${cmd}: refused (HTTP ${r.status})\n  ${errors.join('\n  ')}\n`);
    return 1;
  };
  switch (cmd) {
    case 'status': {
      const r = await api.call('GET', '/status');
      if (r.status !== 200) return fail(r);
      out(r.data, () => `Functions\n${table(r.data.functions, ['name', 'funcId', 'trustGroup', 'workers', 'calls', 'failures', 'queued'])}\n` +
        `Nodes\n${table(r.data.nodes, ['nodeId', 'hostname', 'attachedAt', 'lastReport'])}\n` +
        `Merges\n${table(r.data.merges, ['node', 'caller', 'callee', 'isolation', 'state', 'workersMerged', 'workersTotal', 'ageSec'])}\n` +
        `Policy: ${r.data.policy.source}${r.data.policy.lastError ? ` (last reload refused: ${r.data.policy.lastError})` : ''}\n`);
      return 0;
    }
    case 'merges': {
      const r = await api.call('GET', '/merges');
      if (r.status !== 200) return fail(r);
      out(r.data, () => table(r.data, ['node', 'caller', 'callee', 'isolation', 'state', 'workersMerged', 'workersTotal', 'ageSec']));
      return 0;
    }
    case 'edges': {
      const r = await api.call('GET', '/edges');
      if (r.status !== 200) return fail(r);
      out(r.data, () => table(r.data, ['node', 'caller', 'callee', 'callsPerSec', 'calls', 'localCalls', 'failures', 'avgRpcUs', 'avgCalleeUs']));
      return 0;
    }
    case 'merge':
    case 'unmerge': {
      if (rest.length !== 2) throw new FlagError(`usage: nightfuse ${cmd} CALLER CALLEE`);
      const [caller, callee] = rest;
      const r = cmd === 'merge'
        ? await api.call('POST', '/merges', JSON.stringify({ caller, callee, ...(f.isolation ? { isolation: f.isolation } : {}) }))
        : await api.call('DELETE', `/merges/${encodeURIComponent(caller)}/${encodeURIComponent(callee)}`);
      if (r.status !== 200) return fail(r);
      out(r.data, () => `${cmd === 'merge' ? `merged ${callee} into ${caller}` : `unmerged ${callee} from ${caller}`} on ${r.data.results.length} node(s)\n`);
      return 0;
    }
    case 'policy': {
      if (rest[0] !== 'apply' || !rest[1]) throw new FlagError('usage: nightfuse policy check|apply FILE');
      const r = await api.call('PUT', '/policy', readFileSync(rest[1], 'utf8'));
      if (r.status !== 200) return fail(r);
      out(r.data, () => `policy from ${rest[1]} is in force\n`);
      return 0;
    }
  }
  throw new FlagError(`unknown command ${cmd}`);
}
