/** Metrics of the cluster links: refused peers by link and reason, results from the wrong node, nodes draining. */
import type { ControlServer } from './control-server.js';
import type { Dispatcher } from './dispatcher.js';
import type { EngineServer } from './engine-server.js';
import type { MetricFamily } from './metrics.js';

export function clusterFamilies(engines: EngineServer, control: ControlServer | undefined, dispatcher: Dispatcher): MetricFamily[] {
  const refused: MetricFamily = {
    name: 'nightfuse_cluster_auth_failures_total',
    help: 'Engine connections and control-plane streams refused, by link and reason (bad_proof = wrong cluster token)',
    type: 'counter',
    samples: [],
  };
  for (const [reason, v] of engines.refusals) refused.samples.push({ labels: { link: 'engine', reason }, value: v });
  for (const [reason, v] of control?.refusals ?? []) refused.samples.push({ labels: { link: 'control', reason }, value: v });
  return [
    refused,
    {
      name: 'nightfuse_gateway_foreign_results_total',
      help: 'Results an engine sent for calls that were not dispatched to it (dropped)',
      type: 'counter',
      samples: [{ labels: {}, value: dispatcher.foreignResults }],
    },
    {
      name: 'nightfuse_gateway_draining_nodes',
      help: 'Connected nodes that announced they are leaving (no new calls go to them)',
      type: 'gauge',
      samples: [{ labels: {}, value: [...engines.nodes.values()].filter((n) => n.draining).length }],
    },
  ];
}
