// Worker pools as func_config.json describes them: Nightcore's default of 4
// workers, growth up to maxWorkers while calls queue, `command` entries, and
// the admin API's view of functions and nodes.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NATIVE_BUILD, WORKER_HOST } from '../common/paths.js';
import { admin as adminApi, post, startStack, waitFor, workerProcesses, type Stack } from './helpers.js';

const TOKEN = 'pools';
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-pools-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const bar = join(NATIVE_BUILD, 'examples', 'libbar.so');
const config = join(dir, 'func_config.json');
writeFileSync(config, JSON.stringify([
  { funcName: 'Default', funcId: 1, library: bar },
  { funcName: 'Slow', funcId: 2, minWorkers: 1, maxWorkers: 3, library: join(NATIVE_BUILD, 'fixtures', 'libfaulty.so') },
  // A shell command, as Nightcore's --fprocess: the variable shows it ran through the shell.
  { funcName: 'Cmd', funcId: 3, minWorkers: 1, maxWorkers: 1, command: `NIGHTFUSE_POOL_TEST=via-shell exec ${WORKER_HOST} ${bar}` },
]));

let stack: Stack;
t.before(async () => {
  stack = await startStack({ config, gatewayFlags: [`--admin_token=${TOKEN}`] });
});
t.teardown(() => stack?.stop());

const admin = (path: string) => adminApi(stack.httpPort, TOKEN, 'GET', path);
const procsOf = (funcId: number) => workerProcesses(stack.launcher.pid!).filter((w) => w.funcId === funcId);
const fn = async (name: string) => ((await admin('/functions')).data as any[]).find((f) => f.name === name);

t.test('no minWorkers: 4 workers, as in Nightcore', async (t) => {
  t.equal(procsOf(1).length, 4, 'four worker processes');
  await waitFor(async () => (await fn('Default'))?.workers === 4, 5000, 'reported');
  t.equal((await post(stack.httpPort, '/function/Default', 'd')).body.toString(), 'd, World\n');
});

t.test('a pool grows to maxWorkers while calls queue, and no further', async (t) => {
  t.equal(procsOf(2).length, 1, 'starts with minWorkers (1)');
  const inputs = Array.from({ length: 8 }, (_, i) => `sleep:700-${i}`);
  let sawQueued = 0;
  const calls = Promise.all(inputs.map((s) => post(stack.httpPort, '/function/Slow', s)));
  await waitFor(async () => {
    const f = await fn('Slow');
    sawQueued = Math.max(sawQueued, f?.queued ?? 0);
    return f?.workers === 3 && sawQueued > 0;
  }, 10000, 'three workers busy, calls queued');
  const outs = await calls;
  t.same(outs.map((r) => r.body.toString()), inputs, 'every queued call answered');
  t.ok(sawQueued > 0, `${sawQueued} calls seen queued`);
  t.equal(procsOf(2).length, 3, 'exactly maxWorkers (3) processes: pools do not shrink, so none more was started');
});

t.test('a command entry runs through the shell and serves calls', async (t) => {
  const [w] = procsOf(3);
  t.ok(w, 'one Cmd worker');
  t.match(readFileSync(`/proc/${w.pid}/cmdline`, 'utf8').split('\0'), [WORKER_HOST, bar], 'the shell exec\'d the worker host');
  t.match(readFileSync(`/proc/${w.pid}/environ`, 'utf8'), /(^|\0)NIGHTFUSE_POOL_TEST=via-shell\0/, 'with the environment the command set');
  t.equal((await post(stack.httpPort, '/function/Cmd', 'cmd')).body.toString(), 'cmd, World\n');
});

t.test('admin API: GET functions and GET nodes', async (t) => {
  await waitFor(async () => (await fn('Cmd'))?.calls >= 1, 5000, 'calls reported');
  const fns = (await admin('/functions')).data;
  t.match(fns, [
    { name: 'Default', funcId: 1, grpc: false, trustGroup: 'default', workers: 4, calls: 1, failures: 0, queued: 0 },
    { name: 'Slow', funcId: 2, grpc: false, workers: 3, calls: 8, failures: 0, queued: 0 },
    { name: 'Cmd', funcId: 3, grpc: false, workers: 1, calls: 1, failures: 0 },
  ]);
  const nodes = (await admin('/nodes')).data;
  t.equal(nodes.length, 1);
  t.match(nodes[0], { nodeId: Number, hostname: String, pid: stack.launcher.pid, policyError: '', ticks: Number });
  t.ok(Date.parse(nodes[0].lastReport) > Date.parse(nodes[0].attachedAt), 'reports keep arriving after the attach');
  t.equal((await adminApi(stack.httpPort, 'wrong', 'GET', '/nodes')).status, 401, 'not without the token');
});
