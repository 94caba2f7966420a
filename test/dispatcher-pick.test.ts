// The gateway's choice of node per call (gateway/dispatcher.ts): round robin per function, least
// load, or random, always among nodes that take calls (not draining), in connection order.
import t from 'tap';
import { type CallOutcome, Dispatcher } from '../gateway/dispatcher.js';
import { Node, type EngineServer } from '../gateway/engine-server.js';

function setup(opts: { rr?: boolean; least?: boolean }) {
  const nodes = new Map<number, Node>();
  const picked: number[] = [];
  const engines = { nodes, dispatch: (n: Node) => (picked.push(n.nodeId), true) } as unknown as EngineServer;
  const d = new Dispatcher(engines, { maxRunningRequests: 0, lbPerFnRoundRobin: !!opts.rr, lbPickLeastLoad: !!opts.least, callTimeoutMs: 0 });
  for (const id of [11, 12, 13]) {
    const n = new Node(id, 'i', true, '127.0.0.1', 0);
    nodes.set(id, n);
    d.nodeUp(n);
  }
  const outcomes: CallOutcome['kind'][] = [];
  const call = (funcId: number) => d.begin(funcId, 0, Buffer.alloc(0), (o) => outcomes.push(o.kind));
  return { nodes, picked, call, outcomes };
}

t.test('round robin per function, over the nodes that take calls', async (t) => {
  const { nodes, picked, call } = setup({ rr: true });
  for (let i = 0; i < 6; i++) call(1);
  t.same(picked.splice(0), [11, 12, 13, 11, 12, 13], 'function 1 goes round in connection order');
  call(2);
  t.same(picked.splice(0), [11], 'function 2 has a cursor of its own');
  nodes.get(12)!.draining = true;
  for (let i = 0; i < 4; i++) call(3);
  t.same(picked.splice(0), [11, 13, 11, 13], 'a draining node is passed over');
});

t.test('least load: the node with fewest calls in flight, the first connected on a tie', async (t) => {
  const { nodes, picked, call } = setup({ least: true });
  nodes.get(11)!.inflight = 5;
  nodes.get(12)!.inflight = 2;
  nodes.get(13)!.inflight = 2;
  call(1);
  t.same(picked.splice(0), [12], 'fewest in flight; 12 before 13 on the tie');
  nodes.get(12)!.draining = true;
  nodes.get(13)!.inflight = 9;
  call(1);
  t.same(picked.splice(0), [11], 'a draining node is not chosen even with the least load');
});

t.test('random: every usable node is chosen, a draining one never; none usable: no_node', async (t) => {
  const { nodes, picked, call, outcomes } = setup({});
  nodes.get(13)!.draining = true;
  for (let i = 0; i < 300; i++) call(1);
  t.same([...new Set(picked)].sort(), [11, 12], 'both usable nodes, and only they');
  t.equal(picked.length, 300);
  for (const n of nodes.values()) n.draining = true;
  call(1);
  t.equal(picked.length, 300, 'every node draining: the call goes nowhere');
  t.same(outcomes, ['no_node'], 'and fails with no_node');
});
