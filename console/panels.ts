/** The console's tables: merges, edges, nodes, and the decision log; with the merge and unmerge actions. */
import { call } from './api.js';
import { $, h, setCells, syncRows } from './dom.js';
import { fmt, pairId, type AdminEvent, type ClusterNode, type Merge, type PairView, type Snapshot } from './model.js';

const MAX_EVENTS_SHOWN = 200;

/** Runs an admin action with its button disabled, and says how it went. */
async function act(button: HTMLButtonElement, what: string, run: () => ReturnType<typeof call>): Promise<void> {
  const status = $('action-status');
  button.disabled = true;
  status.dataset.state = 'busy';
  status.textContent = `${what}…`;
  try {
    const r = await run();
    const errors: string[] = r.data.errors?.map((e: { field: string; message: string }) => `${e.field} ${e.message}`)
      ?? r.data.results?.filter((x: { ok: boolean }) => !x.ok).map((x: { node: number; error: string }) => `node ${x.node}: ${x.error}`) ?? [];
    const ok = r.status === 200;
    status.dataset.state = ok ? 'ok' : 'error';
    status.textContent = ok ? `${what}: done` : `${what}: refused (HTTP ${r.status}) ${errors.length ? errors.join('; ') : r.data.error ?? ''}`;
  } catch (err) {
    status.dataset.state = 'error';
    status.textContent = `${what}: ${(err as Error).message}`;
  } finally {
    button.disabled = false;
  }
}

export function merge(button: HTMLButtonElement, caller: string, callee: string, isolation: string): Promise<void> {
  return act(button, `merge ${callee} into ${caller}${isolation ? ` (${isolation})` : ''}`, () =>
    call('POST', '/merges', JSON.stringify({ caller, callee, ...(isolation ? { isolation } : {}) })));
}

export function unmerge(button: HTMLButtonElement, caller: string, callee: string): Promise<void> {
  return act(button, `unmerge ${callee} from ${caller}`, () =>
    call('DELETE', `/merges/${encodeURIComponent(caller)}/${encodeURIComponent(callee)}`));
}

const isolationSelect = () => h('select', { 'aria-label': 'isolation', 'data-role': 'isolation' },
  h('option', { value: '' }, 'policy'), h('option', {}, 'inline'), h('option', {}, 'stack'), h('option', {}, 'thread'));

export function renderEdges(list: PairView[]): void {
  const sorted = [...list].sort((a, b) => b.rate - a.rate || a.id.localeCompare(b.id));
  syncRows($('edges').querySelector('tbody')!, sorted, (e) => e.id, (e) => {
    const mergeBtn = h('button', { type: 'button', 'data-action': 'merge' }, 'Merge');
    const unmergeBtn = h('button', { type: 'button', 'data-action': 'unmerge' }, 'Unmerge');
    const sel = isolationSelect();
    mergeBtn.addEventListener('click', () => void merge(mergeBtn, e.caller, e.callee, sel.value));
    unmergeBtn.addEventListener('click', () => void unmerge(unmergeBtn, e.caller, e.callee));
    return h('tr', { 'data-edge': e.id }, h('td'), h('td', {}, h('span', { class: 'path' })), h('td'), h('td'), h('td'), h('td'), h('td'), h('td'),
      h('td', { class: 'actions' }, sel, mergeBtn, unmergeBtn));
  }, (row, e) => {
    setCells(row, [`${e.caller} → ${e.callee}`]);
    const badge = row.cells[1].firstElementChild as HTMLElement;
    const text = e.path === 'ipc' ? 'IPC' : `${e.path}${e.isolation ? ` · ${e.isolation}` : ''}`;
    if (badge.textContent !== text) badge.textContent = text;
    badge.dataset.path = e.path;
    row.dataset.path = e.path;
    for (const [i, t] of [fmt.rate(e.rate), fmt.rate(e.ipcRate), fmt.rate(e.localRate), fmt.us(e.avgRpcUs), fmt.us(e.avgCalleeUs), String(e.failures)].entries()) {
      const c = row.cells[i + 2];
      if (c.textContent !== t) c.textContent = t;
    }
    (row.querySelector('[data-action=unmerge]') as HTMLButtonElement).hidden = e.path === 'ipc';
  }, 9, 'no calls between functions yet: put some load on a function that calls another');
}

export function renderMerges(list: Merge[]): void {
  syncRows($('merges').querySelector('tbody')!, list, (m) => `${m.node}/${pairId(m.caller, m.callee)}`, (m) => {
    const btn = h('button', { type: 'button', 'data-action': 'unmerge' }, 'Unmerge');
    btn.addEventListener('click', () => void unmerge(btn, m.caller, m.callee));
    return h('tr', { 'data-merge': pairId(m.caller, m.callee) }, h('td'), h('td'), h('td'), h('td'), h('td'), h('td'), h('td', { class: 'actions' }, btn));
  }, (row, m) => {
    row.dataset.state = m.state;
    setCells(row, [m.node, `${m.caller} → ${m.callee}`, m.isolation, m.state, `${m.workersMerged}/${m.workersTotal}`, fmt.age(m.since)]);
  }, 7, 'nothing merged');
}

export function renderNodes(list: ClusterNode[]): void {
  syncRows($('nodes').querySelector('tbody')!, list, (n) => String(n.nodeId), () => h('tr', {}, h('td'), h('td'), h('td', {}, h('span', { class: 'health' })), h('td'), h('td'), h('td'), h('td')), (row, n) => {
    const badge = row.cells[2].firstElementChild as HTMLElement;
    badge.dataset.health = n.health;
    if (badge.textContent !== n.health) badge.textContent = n.health;
    const decisions = Object.entries(n.decisions).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ') || '–';
    setCells(row, [n.nodeId, n.hostname ? `${n.hostname} (pid ${n.pid})` : '–']);
    for (const [i, t] of [String(n.engineConnections), String(n.inflight), n.reportAgeMs === null ? 'never' : `${(n.reportAgeMs / 1000).toFixed(1)} s ago`,
      decisions + (n.policyError ? ` · policy refused: ${n.policyError}` : '')].entries()) {
      const c = row.cells[i + 3];
      if (c.textContent !== t) c.textContent = t;
    }
  }, 7, 'no node attached');
}

/** The decision log, newest first; events arrive once each (deduplicated by seq). */
export class EventLog {
  private readonly seen = new Set<number>();

  add(events: AdminEvent[]): void {
    const list = $('events');
    for (const e of events) {
      if (this.seen.has(e.seq)) continue;
      this.seen.add(e.seq);
      const numbers = Object.entries(e.detail)
        .filter(([, v]) => v !== null && (typeof v !== 'object' || (Array.isArray(v) && v.length <= 8)))
        .map(([k, v]) => `${k}=${Array.isArray(v) ? v.map((x) => (typeof x === 'number' ? x.toFixed(1) : String(x))).join(',') : String(v)}`);
      const li = h('li', { 'data-kind': e.kind, 'data-seq': String(e.seq) },
        h('time', { datetime: e.at }, new Date(e.at).toLocaleTimeString()), ' ',
        h('span', { class: 'kind' }, e.kind), ' ',
        h('strong', {}, `${e.caller} → ${e.callee}`), e.isolation ? ` (${e.isolation})` : '', ` node ${e.node}: `,
        h('span', { class: 'reason' }, e.reason),
        numbers.length ? h('div', { class: 'numbers' }, numbers.join('  ')) : null);
      list.prepend(li);
    }
    while (list.children.length > MAX_EVENTS_SHOWN) list.lastElementChild!.remove();
    if (list.children.length === 0) list.append(h('li', { class: 'none' }, 'no merge decisions yet'));
    else list.querySelector(':scope > li.none')?.remove();
  }
}

/** The merge form's function lists follow the functions in the snapshot. */
export function renderMergeForm(s: Snapshot): void {
  const names = s.functions.filter((f) => !f.grpc).map((f) => f.name);
  for (const id of ['mf-caller', 'mf-callee']) {
    const sel = $(id) as HTMLSelectElement;
    const have = Array.from(sel.options).map((o) => o.value);
    if (have.join('\n') === names.join('\n')) continue;
    const keep = sel.value;
    sel.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
    if (names.includes(keep)) sel.value = keep;
    else if (id === 'mf-callee' && names.length > 1) sel.value = names[1];
  }
}

export function wireMergeForm(): void {
  const form = $('merge-form') as HTMLFormElement;
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = (id: string) => ($(id) as HTMLSelectElement).value;
    void merge(form.querySelector('button')!, v('mf-caller'), v('mf-callee'), v('mf-isolation'));
  });
}
