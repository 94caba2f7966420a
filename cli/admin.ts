/**
 * The admin commands that read or change the cluster through the gateway's
 * admin API: status, merges, edges (tables, --json, --watch), merge, unmerge.
 */
import { AdminClient, refusal, type GatewayOptions } from './admin-api.js';
import { EXIT } from './exit.js';
import { table, untilInterrupted, watch } from './table.js';

export interface ViewOptions extends GatewayOptions {
  json?: boolean;
  watch?: boolean;
  /** seconds between redraws */
  interval?: number;
}

const MERGE_COLS = ['node', 'caller', 'callee', 'isolation', 'state', 'workersMerged', 'workersTotal', 'ageSec'];
const EDGE_COLS = ['node', 'caller', 'callee', 'path', 'callsPerSec', 'calls', 'localCalls', 'failures', 'avgRpcUs', 'avgCalleeUs'];

/** A read-only view: how to fetch it and how to show it. */
interface View {
  path: string;
  title: string;
  render(data: any): string;
}

export const VIEWS = {
  status: {
    path: '/status',
    title: 'nightfuse status',
    render: (d: any) =>
      `Functions\n${table(d.functions, ['name', 'funcId', 'trustGroup', 'workers', 'calls', 'failures', 'queued'])}\n` +
      `Nodes\n${table(d.nodes, ['nodeId', 'hostname', 'attachedAt', 'lastReport'])}\n` +
      `Merges\n${table(d.merges, MERGE_COLS)}\n` +
      `Policy: ${d.policy.source}${d.policy.lastError ? ` (last reload refused: ${d.policy.lastError})` : ''}\n`,
  },
  merges: { path: '/merges', title: 'nightfuse merges', render: (d: any) => table(d, MERGE_COLS) },
  edges: { path: '/edges', title: 'nightfuse edges', render: (d: any) => table(d, EDGE_COLS) },
} satisfies Record<string, View>;

export async function runView(name: keyof typeof VIEWS, o: ViewOptions): Promise<number> {
  const view: View = VIEWS[name];
  const api = AdminClient.from(o);
  const once = async () => {
    const d = await api.get(view.path);
    return o.json ? JSON.stringify(d, null, 1) + '\n' : view.render(d);
  };
  const first = await once(); // unreachable or refused: fail at once, with the exit code that says so
  if (!o.watch) {
    process.stdout.write(first);
    return EXIT.OK;
  }
  let pending: string | undefined = first;
  await watch(async () => {
    const f = pending ?? (await once());
    pending = undefined;
    return f;
  }, { intervalMs: (o.interval ?? 2) * 1000, title: view.title, until: untilInterrupted() });
  return EXIT.OK;
}

export async function runMerge(caller: string, callee: string, o: GatewayOptions & { json?: boolean; isolation?: string }): Promise<number> {
  const api = AdminClient.from(o);
  const r = await api.call('POST', '/merges', JSON.stringify({ caller, callee, ...(o.isolation ? { isolation: o.isolation } : {}) }));
  return report(r, `merge ${callee} into ${caller}`, o.json, (d) => `merged ${callee} into ${caller} (${isolationOf(d)}) on ${d.results.length} node(s)\n`);
}

export async function runUnmerge(caller: string, callee: string, o: GatewayOptions & { json?: boolean }): Promise<number> {
  const api = AdminClient.from(o);
  const r = await api.call('DELETE', `/merges/${encodeURIComponent(caller)}/${encodeURIComponent(callee)}`);
  return report(r, `unmerge ${callee} from ${caller}`, o.json, (d) => `unmerged ${callee} from ${caller} on ${d.results.length} node(s)\n`);
}

function isolationOf(d: any): string {
  const isos = new Set((d.results ?? []).map((x: any) => x.detail?.isolation).filter(Boolean));
  return isos.size ? [...isos].join(', ') : 'policy isolation';
}

function report(r: { status: number; data: any }, what: string, json: boolean | undefined, human: (d: any) => string): number {
  if (json) process.stdout.write(JSON.stringify(r.data, null, 1) + '\n');
  if (r.status !== 200) throw refusal(what, r);
  if (!json) process.stdout.write(human(r.data));
  return EXIT.OK;
}
