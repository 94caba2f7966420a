// The control plane under attack: only peers that prove the cluster token are
// believed; one stream, one node; a node id held by a live launcher is refused
// to others; commands are answered only by the stream they went to; silent
// streams are dropped; and nothing a peer sends leaks. A real gateway and a
// real launcher, with peers written for the purpose.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { ControlPeer } from './control-peer.js';
import { startGatewayProcess, TOKEN, usage } from './adversary.js';
import { FIXTURE_CONFIG, loadLoop, startProcess, stopProcess, waitFor } from './helpers.js';

const ADMIN = 'admin-token-for-tests';
const SILENCE_MS = 800;

async function admin(port: number, method: string, path: string, body?: unknown) {
  const r = await fetch(`http://127.0.0.1:${port}/admin/v1/${path}`, {
    method, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
}

t.test('control plane with a cluster token', async (t) => {
  const gw = await startGatewayProcess(['--cluster_auth_timeout_ms=600', `--node_silence_ms=${SILENCE_MS}`], { NIGHTFUSE_CLUSTER_TOKEN: TOKEN, NIGHTFUSE_ADMIN_TOKEN: ADMIN });
  t.teardown(() => gw.stop());
  const root = `/dev/shm/nightfuse-test-ctl-${process.pid}`;
  const ln = await startProcess(['launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${gw.engine}`, `--control_port=${gw.control}`, '--node_id=1',
    `--root_path_for_ipc=${root}`, `--func_config_file=${FIXTURE_CONFIG}`], /launcher ready/, 30000, { NIGHTFUSE_CLUSTER_TOKEN: TOKEN });
  t.teardown(() => stopProcess(ln.child));
  const realPid = ln.child.pid!;
  const viewIsReal = async () => {
    const nodes = (await admin(gw.http, 'GET', 'nodes')).body as { nodeId: number; pid: number }[];
    return nodes.length === 1 && nodes[0].nodeId === 1 && nodes[0].pid === realPid;
  };
  await waitFor(viewIsReal, 10000, 'the real launcher attached');
  const peer = new ControlPeer(gw.control);
  t.teardown(() => peer.close());

  t.test('no token, a wrong token, or a proof for another nonce: refused, never in the view', async (t) => {
    const none = await peer.attach(7, '').settled;
    t.equal(none.code, grpc.status.UNAUTHENTICATED);
    t.match(none.details, /requires the cluster token/);
    const wrong = await peer.attach(7, 'not-the-token-not-the-token-0000').settled;
    t.equal(wrong.code, grpc.status.UNAUTHENTICATED);
    t.match(wrong.details, /wrong cluster token/);
    const replay = await peer.attach(7, TOKEN, { hello: (h) => { h.nonce = randomBytes(32); } }).settled;
    t.equal(replay.code, grpc.status.UNAUTHENTICATED, 'a proof over other nonces does not count');
    t.ok(await viewIsReal(), 'only the real launcher in the view');
  });

  t.test('the real node id from another instance: ALREADY_EXISTS; the real launcher stays', async (t) => {
    const twin = await peer.attach(1, TOKEN).settled;
    t.equal(twin.code, grpc.status.ALREADY_EXISTS);
    t.match(twin.details, /node id 1 is already attached by another live launcher/);
    t.ok(await viewIsReal());
    const r = await admin(gw.http, 'POST', 'merges', { caller: 'Foo', callee: 'Bar', isolation: 'stack' });
    t.equal(r.status, 200, 'a merge command is answered by the real launcher');
    t.ok(r.body.results[0].detail.workers.length >= 2, 'with its workers');
    t.equal((await admin(gw.http, 'DELETE', 'merges/Foo/Bar')).status, 200);
  });

  t.test('one stream registers one node: a second hello ends it', async (t) => {
    const a = peer.attach(50, TOKEN);
    t.ok((await a.settled).welcomed, 'a token holder may attach its own node id');
    for (let i = 0; i < 200; i++) a.stream.write({ hello: { node_id: 100 + i, hostname: 'ghost', pid: 2, functions: [] } });
    const end = await a.ended;
    t.equal(end.code, grpc.status.FAILED_PRECONDITION);
    await waitFor(async () => ((await admin(gw.http, 'GET', 'nodes')).body as unknown[]).length === 1, 3000, 'its node removed with the stream');
    t.ok(await viewIsReal(), 'no ghost nodes');
  });

  t.test('command results are accepted only from the stream the command went to', async (t) => {
    const rogue = peer.attach(60, TOKEN);
    t.ok((await rogue.settled).welcomed);
    let forging = true;
    const forge = (async () => {
      while (forging) {
        for (let i = 0; i < 50; i++) {
          rogue.stream.write({ command_result: { command_id: i % 2 ? randomBytes(6).readUIntLE(0, 6) : i, ok: false, error: 'FORGED', detail_json: '' } });
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const r = await admin(gw.http, 'POST', 'merges', { caller: 'Foo', callee: 'Bar', isolation: 'stack' });
    forging = false;
    await forge;
    t.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
    t.same(r.body.results.map((x: { node: number }) => x.node), [1], 'sent to the node that runs Foo');
    t.notMatch(JSON.stringify(r.body), /FORGED/);
    t.equal((await admin(gw.http, 'DELETE', 'merges/Foo/Bar')).status, 200);
    rogue.stream.cancel();
  });

  t.test('a stream that goes silent is dropped', async (t) => {
    const quiet = peer.attach(70, TOKEN);
    t.ok((await quiet.settled).welcomed);
    const started = Date.now();
    const end = await quiet.ended;
    const after = Date.now() - started;
    t.equal(end.code, grpc.status.UNAVAILABLE);
    t.ok(after >= SILENCE_MS - 100 && after < SILENCE_MS + 1500, `after ${after} ms`);
    t.ok(await viewIsReal());
  });

  t.test('1,000+ generated attaches: none believed, the real launcher untouched, nothing leaked', async (t) => {
    const loop = loadLoop(gw.http, '/function/Foo', (i) => `c${i}`, (i) => `From function Bar: c${i}, World\n`, 2);
    const mutate: ((h: NonNullable<Parameters<NonNullable<Parameters<ControlPeer['attach']>[2]>['hello']>>[0]) => void)[] = [
      (h) => { h.proof = randomBytes(32); },
      (h) => { h.proof = randomBytes(1 + (randomBytes(1)[0] % 64)); },
      (h) => { h.proof = Buffer.alloc(0); },
      (h) => { h.instance_id = randomBytes(randomBytes(1)[0] % 16); },
      (h) => { h.nonce = Buffer.alloc(0); },
      (h) => { h.node_id = randomBytes(2).readUInt16LE(0); h.proof = randomBytes(32); },
      (h) => { h.proof![randomBytes(1)[0] % 32] ^= 1; },
      (h) => { h.node_id = 1; h.proof = randomBytes(32); },
    ];
    const run = async (n: number) => {
      let welcomed = 0;
      for (let i = 0; i < n; i += 50) {
        const outs = await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, k) => {
          const m = mutate[(i + k) % mutate.length];
          // Every few cases, a peer that sends a report before its hello, or nothing at all.
          if ((i + k) % 11 === 0) {
            const s = peer.open();
            s.on('error', () => {});
            if ((i + k) % 22 === 0) s.write({ stats: { at_ms: 1, functions: [], edges: [], merges: [] } });
            return new Promise<{ welcomed: boolean }>((r) => s.on('status', () => r({ welcomed: false })));
          }
          return peer.attach(1 + ((i + k) % 3000), TOKEN, { hello: m }).settled;
        }));
        welcomed += outs.filter((o) => o.welcomed).length;
      }
      return welcomed;
    };
    t.equal(await run(400), 0, 'none welcomed (with client load running)');
    await loop.stop();
    t.same(loop.stats.bad, [], `every one of ${loop.stats.ok} client answers right meanwhile`);
    const before = usage(gw.pid);
    t.equal(await run(1000), 0, 'none welcomed');
    await waitFor(() => usage(gw.pid).fds <= before.fds + 2, 3000, 'descriptors released');
    const after = usage(gw.pid);
    t.ok(after.rssKiB - before.rssKiB < 6 * 1024, `RSS grew by ${after.rssKiB - before.rssKiB} KiB`);
    t.ok(await viewIsReal(), 'the view is the real launcher only');
  });

  t.test('after all that, a policy applied reaches the real launcher', async (t) => {
    const res = await fetch(`http://127.0.0.1:${gw.http}/admin/v1/policy`, {
      method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: 'trustGroups:\n  front: [Foo]\n  back: [Bar]\n',
    });
    t.equal(res.status, 200);
    const m = await admin(gw.http, 'POST', 'merges', { caller: 'Foo', callee: 'Bar' });
    t.equal(m.status, 409);
    t.match(JSON.stringify(m.body), /trust group/, 'the launcher refuses by the new policy');
    t.equal((await fetch(`http://127.0.0.1:${gw.http}/admin/v1/policy`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: '' })).status, 200);
  });
});
