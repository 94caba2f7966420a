// `nightfuse up` in one process (gateway + node agent linked by function calls):
// the link itself (EngineServer.attachLocal + InProcessLink) in-process, then the
// whole stack as a user starts it.
import t from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { EngineServer, type Node } from '../gateway/engine-server.js';
import { AddressAllowList } from '../common/cluster-auth.js';
import { InProcessLink } from '../launcher/in-process-link.js';
import { type GatewayMessage, MessageType } from '../proto/wire.js';
import { FIXTURE_CONFIG, post, startProcess, stopProcess, waitFor } from './helpers.js';

const log = pino({ level: 'silent' });

function engines() {
  const events = { results: [] as GatewayMessage[], up: [] as number[], down: [] as string[] };
  const es = new EngineServer({
    log, maxPayload: 1 << 20, token: '', plainAllow: new AddressAllowList(''), authTimeoutMs: 1000,
    events: {
      onResult: (_n: Node, m: GatewayMessage) => events.results.push(m),
      onNodeUp: (n: Node) => events.up.push(n.nodeId),
      onNodeDown: (_n: Node, why: string) => events.down.push(why),
    },
  });
  return { es, events };
}

t.test('the in-process link: one node, its connections, results, drops and re-attach', async (t) => {
  const { es, events } = engines();
  const got: bigint[] = [];
  let link: InProcessLink;
  link = new InProcessLink({
    engines: es, nodeId: 7, instance: 'aa'.repeat(8), connections: 2, log, reattachMs: 20,
    onDispatch: (m, conn) => {
      got.push(m.fullCallId);
      // an answer given while the gateway is still dispatching (e.g. unknown function) must not overtake it
      if (m.payload.toString() === 'sync') link.sendResult(conn, MessageType.FUNC_CALL_FAILED, m.fullCallId, 0);
    },
  });
  link.start();
  const node = es.nodes.get(7)!;
  t.ok(node, 'one node registered');
  t.equal(node.conns.length, 2, 'with two connections');
  t.equal(node.authenticated, true);
  t.equal(node.instance, 'aa'.repeat(8), 'as the launcher instance its control stream proves');
  t.same(events.up, [7]);

  t.ok(es.dispatch(node, 5n, Buffer.from('x')), 'dispatch');
  t.same(got, [5n], 'reached the agent, no copy, no framing');
  t.ok(link.sendResult(undefined, MessageType.FUNC_CALL_COMPLETE, 5n, 12, Buffer.from('out')));
  t.equal(events.results.length, 1);
  t.equal(events.results[0].payload.toString(), 'out');
  t.equal(events.results[0].value, 12, 'processing time carried');

  es.dispatch(node, 6n, Buffer.from('sync'));
  t.equal(events.results.length, 1, 'a synchronous answer is not delivered inside dispatch');
  await new Promise((r) => setImmediate(r));
  t.equal(events.results.length, 2, '…but right after it');

  // Another instance claiming node 7 is refused, as over TCP.
  t.throws(() => es.attachLocal(7, 9, 'bb'.repeat(8), () => {}, () => {}), /already registered/);

  // The gateway drops the node (silent on the control plane): node down, then it attaches again.
  es.dropNode(7, 'silent on the control plane');
  t.same(events.down, ['silent on the control plane']);
  t.equal(es.nodes.size, 0);
  t.notOk(link.sendResult(undefined, MessageType.FUNC_CALL_COMPLETE, 7n, 0), 'no live connection: result not sent');
  await waitFor(() => es.nodes.get(7)?.conns.length === 2, 2000, 'in-process connections re-attached');
  t.same(events.up, [7, 7]);

  link.reconnectAll('test');
  t.equal(events.down.length, 2, 'reconnectAll drops the node');
  await waitFor(() => es.nodes.get(7)?.conns.length === 2, 2000, 're-attached after reconnectAll');

  link.stop();
  t.equal(es.nodes.size, 0, 'stop: the node is gone');
  await new Promise((r) => setTimeout(r, 60));
  t.equal(es.nodes.size, 0, 'and stays gone');
  await es.close();
});

t.test('nightfuse up runs as one process: calls, node view, control plane, merges, metrics, clean stop', async (t) => {
  const root = `/dev/shm/nightfuse-test-one-${process.pid}-${randomBytes(3).toString('hex')}`;
  const admin = 'one-process-admin-token';
  const up = await startProcess(['up', '--http_port=0', '--grpc_port=0', '--engine_conn_port=0', '--control_port=0', `--root_path_for_ipc=${root}`,
    `--func_config_file=${FIXTURE_CONFIG}`, '--quiet', `--admin_token=${admin}`, '--merge_tick_ms=100'], /nightfuse up: http=\S+:(\d+)/, 60000);
  t.teardown(() => stopProcess(up.child));
  const port = Number(up.match[1]);
  const api = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`http://127.0.0.1:${port}/admin/v1/${path}`, { method, headers: { authorization: `Bearer ${admin}` }, body: body && JSON.stringify(body) });
    return { status: r.status, body: await r.json() as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };
  t.equal((await post(port, '/function/Foo', 'one')).body.toString(), 'From function Bar: one, World\n', 'a nested call through the in-process link');
  // The only children of up are the workers: no gateway or launcher process.
  const children = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/stat`, 'latin1').split(') ')[1].split(' ')[1] === String(up.child.pid);
    } catch {
      return false;
    }
  }).map((p) => readFileSync(`/proc/${p}/comm`, 'latin1').trim());
  t.ok(children.length > 0 && children.every((c) => c.startsWith('nightfuse-work')), `children are workers only: ${children.join(',')}`);
  const owner = JSON.parse(readFileSync(`${root}/.nightfuse-ipc-root`, 'utf8')) as { pid: number };
  t.equal(owner.pid, up.child.pid, 'the node agent is the up process');

  // Node view and control plane (the launcher still attaches over gRPC, authenticated).
  const m = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  t.match(m, /^nightfuse_gateway_connected_nodes 1$/m, 'one node on the engine side');
  await waitFor(async () => ((await api('GET', 'nodes')).body as { controlPlane: boolean }[]).some((n) => n.controlPlane), 10000, 'node attached on the control plane');
  await waitFor(async () => /nightfuse_edge_ipc_calls_total\{[^}]*caller="Foo",callee="Bar"\} [1-9]/.test(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()),
    10000, 'edge stats reported over the control plane');

  // Merges work as between processes.
  const r = await api('POST', 'merges', { caller: 'Foo', callee: 'Bar', isolation: 'stack' });
  t.equal(r.status, 200, `manual merge: ${JSON.stringify(r.body)}`);
  t.equal((await post(port, '/function/Foo', 'merged')).body.toString(), 'From function Bar: merged, World\n', 'answered merged, the same bytes');
  t.equal((await api('DELETE', 'merges/Foo/Bar')).status, 200, 'unmerge');

  await stopProcess(up.child);
  t.equal(up.child.exitCode, 0, 'SIGTERM: exits 0');
  t.notOk(existsSync(root), 'and its IPC root is gone');
});
