// Crashes and restarts: a launcher killed with SIGKILL comes back on the same
// IPC root (and still refuses a root that is not its own to take); the gateway
// holds the desired state (policy, manual merges) and launchers that
// (re)attach converge to it; `nightfuse up` cleans its IPC root however its
// launcher ended.
import t from 'tap';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { startGatewayProcess, TOKEN } from './adversary.js';
import { FIXTURE_CONFIG, post, startProcess, stopProcess, waitFor } from './helpers.js';

const ADMIN = 'admin-token-for-tests';
const env = { NIGHTFUSE_CLUSTER_TOKEN: TOKEN, NIGHTFUSE_ADMIN_TOKEN: ADMIN };

async function admin(port: number, method: string, path: string, body?: unknown) {
  const r = await fetch(`http://127.0.0.1:${port}/admin/v1/${path}`, {
    method, headers: { authorization: `Bearer ${ADMIN}` }, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
}

const launcherArgs = (gw: { engine: number; control: number }, root: string) => [
  'launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${gw.engine}`, `--control_port=${gw.control}`, '--node_id=1',
  `--root_path_for_ipc=${root}`, `--func_config_file=${FIXTURE_CONFIG}`,
];

/** Attached on the control plane, with its workers in the view (the engine link alone shows a node too). */
const attached = async (port: number) => {
  const fns = (await admin(port, 'GET', 'functions')).body as { name: string; workers: number }[];
  return fns.some((f) => f.name === 'Foo' && f.workers >= 2);
};

const mergedInForce = async (port: number) => {
  const m = (await admin(port, 'GET', 'merges')).body as { caller: string; callee: string; state: string; workersMerged: number }[];
  return m.some((x) => x.caller === 'Foo' && x.callee === 'Bar' && x.state === 'merged' && x.workersMerged >= 2);
};

t.test('launcher SIGKILL, restart on the same root; manual merges and the policy come back', async (t) => {
  const gw = await startGatewayProcess([], env);
  t.teardown(() => gw.stop());
  const root = `/dev/shm/nightfuse-test-life-${process.pid}-${randomBytes(3).toString('hex')}`;
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  let ln = await startProcess(launcherArgs(gw, root), /launcher ready/, 30000, env);
  t.teardown(() => stopProcess(ln.child));
  await waitFor(async () => ((await admin(gw.http, 'GET', 'nodes')).body as { controlPlane: boolean }[]).some((n) => n.controlPlane), 10000, 'attached');
  // The admin view is current at once: the hello carries the node's state.
  t.ok(await attached(gw.http), 'workers in the view as soon as the node is attached');

  t.equal((await fetch(`http://127.0.0.1:${gw.http}/admin/v1/policy`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: 'defaults: { cooldownSec: 1 }\nrules:\n  - { caller: Nowhere, callee: "*", mode: never }\n' })).status, 200);
  const m = await admin(gw.http, 'POST', 'merges', { caller: 'Foo', callee: 'Bar', isolation: 'stack' });
  t.equal(m.status, 200);
  t.ok(await mergedInForce(gw.http), 'merged, and the view says so at once');

  // A second launcher may not take a live launcher's root.
  const thief = await startProcess(launcherArgs(gw, root).map((a) => a.replace('--node_id=1', '--node_id=2')), /launcher ready/, 10000, env)
    .then((p) => { void stopProcess(p.child); return 'started'; }, (e: Error) => e.message);
  t.match(thief, /another engine is serving|still running/, 'a root a live launcher serves is refused');

  ln.child.kill('SIGKILL');
  await new Promise((r) => ln.child.once('exit', r));
  await waitFor(async () => (await admin(gw.http, 'GET', 'nodes')).body.length === 0, 5000, 'the dead node leaves the view');
  t.ok(existsSync(root), 'the killed launcher left its root behind');

  ln = await startProcess(launcherArgs(gw, root), /launcher ready/, 30000, env);
  t.pass('restarted on the same root');
  await waitFor(() => mergedInForce(gw.http), 15000, 'the manual merge re-applied');
  const p = (await admin(gw.http, 'GET', 'policy')).body;
  t.match(p.text, /cooldownSec: 1/, 'the policy in force is the one applied');
  const r = await post(gw.http, '/function/Foo', 'back');
  t.equal(r.body.toString(), 'From function Bar: back, World\n');
});

t.test('gateway restart: the launcher re-attaches, the manual merge stays desired and comes back to a restarted launcher', async (t) => {
  const gw = await startGatewayProcess([], env);
  const root = `/dev/shm/nightfuse-test-life2-${process.pid}-${randomBytes(3).toString('hex')}`;
  const ln = await startProcess(launcherArgs(gw, root), /launcher ready/, 30000, env);
  t.teardown(() => stopProcess(ln.child));
  await waitFor(() => attached(gw.http), 10000, 'attached');
  t.equal((await admin(gw.http, 'POST', 'merges', { caller: 'Foo', callee: 'Bar', isolation: 'inline' })).status, 200);
  t.ok(await mergedInForce(gw.http));
  // The new gateway listens on the same ports: the launcher reconnects to them.
  await gw.stop();
  const again = await startProcess(['gateway', '--listen_addr=127.0.0.1', `--http_port=${gw.http}`, '--grpc_port=0', `--engine_conn_port=${gw.engine}`,
    `--control_port=${gw.control}`, `--func_config_file=${FIXTURE_CONFIG}`], /gateway ready/, 30000, env);
  t.teardown(() => stopProcess(again.child));
  await waitFor(() => attached(gw.http), 10000, 're-attached');
  t.ok(await mergedInForce(gw.http), 'the launcher kept its merge, and the new gateway sees it at once');
  // The new gateway adopted it into its desired state: a launcher that restarts now gets it back.
  ln.child.kill('SIGKILL');
  await new Promise((r) => ln.child.once('exit', r));
  const ln2 = await startProcess(launcherArgs(gw, root), /launcher ready/, 30000, env);
  t.teardown(() => stopProcess(ln2.child));
  await waitFor(() => mergedInForce(gw.http), 15000, 'the manual merge re-applied by the restarted gateway');
  t.pass('re-applied');
  t.equal((await admin(gw.http, 'DELETE', 'merges/Foo/Bar')).status, 200);
  await waitFor(async () => !(await mergedInForce(gw.http)), 5000, 'unmerged');
});

t.test('IPC roots: a dead launcher\'s leftovers are cleaned, anything else is refused', async (t) => {
  const gw = await startGatewayProcess([], env);
  t.teardown(() => gw.stop());
  const base = `/dev/shm/nightfuse-test-roots-${process.pid}`;
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  // A root as a crashed launcher leaves it (owner file names a dead pid).
  const stale = `${base}/stale`;
  mkdirSync(`${stale}/shm`, { recursive: true });
  mkdirSync(`${stale}/fifo`, { recursive: true });
  writeFileSync(`${stale}/shm/123.i`, 'x');
  writeFileSync(`${stale}/fifo/worker_3_input`, '');
  writeFileSync(`${stale}/merge.sock`, '');
  writeFileSync(`${stale}/.nightfuse-ipc-root`, JSON.stringify({ pid: 999999, start: '1' }));
  const ok = await startProcess(launcherArgs(gw, stale), /launcher ready/, 30000, env);
  t.pass('a stale root is taken over');
  t.notOk(existsSync(`${stale}/shm/123.i`), 'and its leftovers are gone');
  await stopProcess(ok.child);
  t.notOk(existsSync(stale), 'a launcher that stops removes its root');
  // A folder with anything else in it, at any depth, is never wiped.
  const foreign = `${base}/foreign`;
  mkdirSync(`${foreign}/shm`, { recursive: true });
  writeFileSync(`${foreign}/shm/thesis.tex`, 'precious');
  const refused = await startProcess(launcherArgs(gw, foreign), /launcher ready/, 10000, env).then(
    (p) => { void stopProcess(p.child); return 'started'; }, (e: Error) => e.message);
  t.match(refused, /refusing to wipe .*shm\/thesis\.tex/);
  t.ok(existsSync(`${foreign}/shm/thesis.tex`), 'untouched');
});

t.test('nightfuse up: its launcher SIGKILLed, the stack stops and the IPC root goes', async (t) => {
  const root = `/dev/shm/nightfuse-test-up-${process.pid}-${randomBytes(3).toString('hex')}`;
  const up = await startProcess(['up', '--http_port=0', '--grpc_port=0', '--engine_conn_port=0', '--control_port=0', `--root_path_for_ipc=${root}`,
    `--func_config_file=${FIXTURE_CONFIG}`, '--quiet'], /nightfuse up: http=\S+:(\d+)/, 60000, { NIGHTFUSE_CLUSTER_TOKEN: '' });
  t.teardown(() => stopProcess(up.child));
  const port = Number(up.match[1]);
  t.equal((await post(port, '/function/Foo', 'up')).body.toString(), 'From function Bar: up, World\n', 'the stack serves (its processes authenticate each other)');
  t.ok(existsSync(root));
  const owner = JSON.parse((await import('node:fs')).readFileSync(`${root}/.nightfuse-ipc-root`, 'utf8')) as { pid: number };
  process.kill(owner.pid, 'SIGKILL');
  const code = await new Promise<number | null>((r) => (up.child.exitCode !== null ? r(up.child.exitCode) : up.child.once('exit', (c) => r(c))));
  t.equal(code, 1, 'up stops, and says it failed');
  t.match(up.stderr(), /launcher stopped unexpectedly/);
  t.notOk(existsSync(root), 'the IPC root is gone');
});
