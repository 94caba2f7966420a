/**
 * The call graph: functions as nodes (workers, calls/s, failures), calls as
 * edges — width by call rate, style by path: dashed grey over IPC, solid and
 * coloured by isolation level when merged, dotted while changing. Latency and
 * rates on hover. Laid out by ELK (layered, left to right) only when the set
 * of nodes or edges changes, so live updates do not move things around.
 */
import cytoscape from 'cytoscape';
import elk from 'cytoscape-elk';
import { fmt, type Fn, type PairView } from './model.js';

cytoscape.use(elk);

const ISOLATION_COLOURS: Record<string, string> = { inline: '#f5a524', stack: '#c678dd', thread: '#3fb950' };

const STYLE: cytoscape.StylesheetJson = [
  {
    selector: 'node',
    style: {
      shape: 'round-rectangle', 'background-color': '#1f2d3a', 'border-width': 2, 'border-color': '#4fb3bf',
      label: 'data(label)', color: '#e6edf3', 'font-size': 11, 'text-wrap': 'wrap', 'text-valign': 'center', 'text-halign': 'center',
      width: 'data(w)', height: 52, 'font-family': 'system-ui, sans-serif',
    },
  },
  { selector: 'node.idle', style: { 'border-color': '#56636f', color: '#8b98a5' } },
  { selector: 'node.failing', style: { 'border-color': '#f85149' } },
  {
    selector: 'edge',
    style: {
      width: 'data(width)', 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'line-color': '#8b98a5', 'target-arrow-color': '#8b98a5',
      'line-style': 'dashed', 'line-dash-pattern': [8, 5], label: 'data(label)', 'font-size': 10, color: '#c9d1d9',
      'text-background-color': '#0d1117', 'text-background-opacity': 0.85, 'text-background-padding': '2px', 'text-rotation': 'autorotate',
      'arrow-scale': 1.2, 'font-family': 'system-ui, sans-serif',
    },
  },
  { selector: 'edge.merged', style: { 'line-style': 'solid', 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)' } },
  { selector: 'edge.partly', style: { 'line-style': 'dashed', 'line-dash-pattern': [14, 3], 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)' } },
  { selector: 'edge.changing', style: { 'line-style': 'dotted', 'line-color': '#d29922', 'target-arrow-color': '#d29922' } },
  { selector: ':selected', style: { 'overlay-color': '#58a6ff', 'overlay-opacity': 0.2 } },
];

const edgeWidth = (rate: number) => Math.min(14, 1.5 + 2.2 * Math.log10(1 + Math.max(0, rate)));

export class Graph {
  readonly cy: cytoscape.Core;
  private shape = '';
  onSelectEdge: ((id: string) => void) | undefined;

  constructor(container: HTMLElement, private readonly tooltip: HTMLElement) {
    this.cy = cytoscape({ container, style: STYLE, minZoom: 0.3, maxZoom: 2.5, wheelSensitivity: 0.3, boxSelectionEnabled: false });
    this.cy.on('mouseover', 'node, edge', (e) => this.showTip(e.target as cytoscape.SingularElementReturnValue, e.renderedPosition));
    this.cy.on('mousemove', 'node, edge', (e) => this.moveTip(e.renderedPosition));
    this.cy.on('mouseout', 'node, edge', () => (this.tooltip.hidden = true));
    this.cy.on('tap', 'edge', (e) => this.onSelectEdge?.((e.target as cytoscape.EdgeSingular).id()));
  }

  update(fns: Fn[], edges: PairView[]): void {
    const cy = this.cy;
    const used = new Set(edges.flatMap((e) => [e.caller, e.callee]));
    // Functions with no workers anywhere and no calls stay out of the picture.
    const shown = fns.filter((f) => f.workers > 0 || used.has(f.name));
    const shape = JSON.stringify([shown.map((f) => f.name).sort(), edges.map((e) => e.id).sort()]);
    cy.batch(() => {
      const keep = new Set([...shown.map((f) => `fn:${f.name}`), ...edges.map((e) => e.id)]);
      cy.elements().forEach((el) => {
        if (!keep.has(el.id())) cy.remove(el);
      });
      for (const f of shown) {
        const id = `fn:${f.name}`;
        const label = `${f.name}\n${f.workers} worker${f.workers === 1 ? '' : 's'} · ${fmt.rate(f.callsPerSec)}/s${f.failures ? ` · ${f.failures} failed` : ''}`;
        const data = { id, name: f.name, fn: f, label, w: Math.max(120, 7 * Math.max(...label.split('\n').map((l) => l.length)) + 20) };
        const n = cy.getElementById(id);
        if (n.empty()) cy.add({ group: 'nodes', data });
        else n.data(data);
        const el = cy.getElementById(id);
        el.toggleClass('idle', f.workers === 0);
        el.toggleClass('failing', (f.failuresPerSec ?? 0) > 0);
      }
      for (const e of edges) {
        const colour = ISOLATION_COLOURS[e.isolation] ?? '#3fb950';
        const label = e.path === 'ipc' ? `IPC · ${fmt.rate(e.rate)}/s` : e.path === 'changing' ? `changing · ${fmt.rate(e.rate)}/s`
          : `${e.path} · ${e.isolation} · ${fmt.rate(e.rate)}/s`;
        const data = { id: e.id, source: `fn:${e.caller}`, target: `fn:${e.callee}`, width: edgeWidth(e.rate), colour, label, pair: e, path: e.path, isolation: e.isolation };
        const x = cy.getElementById(e.id);
        if (x.empty()) cy.add({ group: 'edges', data });
        else x.data(data);
        const el = cy.getElementById(e.id);
        el.toggleClass('merged', e.path === 'merged');
        el.toggleClass('partly', e.path === 'partly merged');
        el.toggleClass('changing', e.path === 'changing');
      }
    });
    if (shape !== this.shape) {
      this.shape = shape;
      cy.layout({
        name: 'elk', fit: true, padding: 30, animate: false,
        elk: { algorithm: 'layered', 'elk.direction': 'RIGHT', 'elk.spacing.nodeNode': 40, 'elk.layered.spacing.nodeNodeBetweenLayers': 180 },
      } as cytoscape.LayoutOptions).run();
    }
  }

  private showTip(el: cytoscape.SingularElementReturnValue, at: cytoscape.Position): void {
    const lines: string[] = [];
    if (el.isEdge()) {
      const p = (el as cytoscape.EdgeSingular).data('pair') as PairView;
      lines.push(`${p.caller} → ${p.callee}`, `path: ${p.path}${p.isolation ? ` (${p.isolation})` : ''}`,
        `calls/s: ${fmt.rate(p.rate)} (IPC ${fmt.rate(p.ipcRate)}, merged ${fmt.rate(p.localRate)})`,
        `IPC round trip: ${fmt.us(p.avgRpcUs)}`, `callee time: ${fmt.us(p.avgCalleeUs)}`, `calls: ${p.calls}, failures: ${p.failures}`);
    } else {
      const f = (el as cytoscape.NodeSingular).data('fn') as Fn;
      lines.push(f.name, `workers: ${f.workers}, queued: ${f.queued}`, `calls/s: ${fmt.rate(f.callsPerSec)}`,
        `calls: ${f.calls}, failures: ${f.failures}`, `trust group: ${f.trustGroup}`);
    }
    this.tooltip.textContent = lines.join('\n');
    this.tooltip.hidden = false;
    this.moveTip(at);
  }

  private moveTip(at: cytoscape.Position): void {
    this.tooltip.style.left = `${at.x + 14}px`;
    this.tooltip.style.top = `${at.y + 14}px`;
  }
}
