/** Small DOM helpers. Text always goes in as text (never as HTML): names and reasons come from the cluster. */
export function $(id: string): HTMLElement {
  const e = document.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e;
}

type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string | boolean | undefined> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(typeof c === 'number' ? String(c) : c);
  return e;
}

/**
 * Keeps a table body in step with `items` by key: rows are created once and
 * updated in place, so a button or a select in a row survives the updates
 * the stream brings several times a second.
 */
export function syncRows<T>(
  tbody: HTMLElement, items: T[], key: (x: T) => string, create: (x: T) => HTMLTableRowElement,
  update: (row: HTMLTableRowElement, x: T) => void, cols: number, none = 'none yet',
): void {
  const old = new Map<string, HTMLTableRowElement>();
  for (const r of Array.from(tbody.children)) if (r instanceof HTMLTableRowElement && r.dataset.key) old.set(r.dataset.key, r);
  const rows: HTMLTableRowElement[] = items.map((x) => {
    const k = key(x);
    let r = old.get(k);
    if (!r) {
      r = create(x);
      r.dataset.key = k;
    }
    update(r, x);
    return r;
  });
  if (rows.length === 0) rows.push(h('tr', { class: 'none' }, h('td', { colspan: String(cols) }, none)));
  // Only touch the DOM where the order changed (moving a focused row would lose its focus).
  rows.forEach((r, i) => {
    if (tbody.children[i] !== r) tbody.insertBefore(r, tbody.children[i] ?? null);
  });
  while (tbody.children.length > rows.length) tbody.lastElementChild!.remove();
}

/** Sets the texts of a row's cells (by index) where they differ. */
export function setCells(row: HTMLTableRowElement, texts: (string | number)[]): void {
  texts.forEach((t, i) => {
    const c = row.cells[i];
    if (c && c.textContent !== String(t)) c.textContent = String(t);
  });
}
