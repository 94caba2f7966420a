// A merge's life on a real stack: workers started later, policy changes,
// SIGHUP reloads and their counter, the limits and instances, and the unmerge
// hysteresis of the auto mode.
import t, { type Test } from 'tap';
import { readdirSync, readFileSync, renameSync, rmSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  admin as adminApi, decisionRounds, loadLoop, metricValue, metrics, post, startStack, waitFor, workerProcesses, type Stack,
} from './helpers.js';

const TOKEN = 'lifecycle';
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-lifecycle-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

// Foo->Bar merges by itself when hot (>= 20 calls/s) and only unmerges below 2 calls/s;
// the Faulty pairs are merged by hand only (no traffic).
const FOO_BAR = 'caller: Foo, callee: Bar, mode: auto, isolation: thread, minCallsPerSec: 20, minIpcShare: 0.05, sustainSec: 1, unmergeBelowCallsPerSec: 2, cooldownSec: 2';
const policyText = (o: { fooBar?: string; limits?: string; query?: string } = {}) => `defaults: { mode: never }
limits: { ${o.limits ?? 'maxCalleesPerWorker: 4'} }
rules:
  - { ${FOO_BAR}${o.fooBar ?? ''} }
  - { caller: Faulty, callee: Crashy, mode: auto, isolation: stack }
  - { caller: Faulty, callee: Query, mode: ${o.query ?? 'auto'}, isolation: stack }
`;
const policyFile = join(dir, 'policy.yaml');
// Whole seconds: a SIGHUP test below replaces the file without the watcher seeing a new mtime.
const MTIME = 1_700_000_000;
writeFileSync(policyFile, policyText());
utimesSync(policyFile, MTIME, MTIME);

let stack: Stack;
t.before(async () => {
  stack = await startStack({ gatewayFlags: [`--merge_policy_file=${policyFile}`, `--admin_token=${TOKEN}`], launcherFlags: ['--merge_tick_ms=200'] });
});
t.teardown(() => stack?.stop());

const admin = (method: string, path: string, body?: string) => adminApi(stack.httpPort, TOKEN, method, path, body);
const mergeOf = async (caller: string, callee: string) =>
  ((await admin('GET', '/merges')).data as any[]).find((m) => m.caller === caller && m.callee === callee);
const merge = (caller: string, callee: string) => admin('POST', '/merges', JSON.stringify({ caller, callee }));
const unmerge = (caller: string, callee: string) => admin('DELETE', `/merges/${caller}/${callee}`);
const putPolicy = async (t: Test, text: string) => t.equal((await admin('PUT', '/policy', text)).status, 200, 'policy replaced');
const fooWorkers = () => workerProcesses(stack.launcher.pid!).filter((w) => w.funcId === 1);
const maps = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8');
const threads = (pid: number) => readdirSync(`/proc/${pid}/task`).length;
const fullyMerged = async (caller: string, callee: string, n: number) => {
  const m = await mergeOf(caller, callee);
  return m?.state === 'merged' && m.workersMerged === n && m.workersTotal === n;
};

t.test('a worker started after the merge gets it when it comes up', async (t) => {
  const r = await merge('Foo', 'Bar');
  t.equal(r.status, 200, JSON.stringify(r.data));
  await waitFor(() => fullyMerged('Foo', 'Bar', 2), 5000, 'in force in both Foo workers');
  const [victim, other] = fooWorkers();
  process.kill(victim.pid, 'SIGKILL');
  await waitFor(() => {
    const now = fooWorkers();
    return now.length === 2 && !now.some((w) => w.pid === victim.pid);
  }, 10000, 'a replacement Foo worker');
  const fresh = fooWorkers().find((w) => w.pid !== other.pid)!;
  t.not(fresh.clientId, victim.clientId, `new worker: client id ${fresh.clientId}, pid ${fresh.pid}`);
  await waitFor(() => maps(fresh.pid).includes('libbar.so'), 10000, 'Bar loaded in the new worker');
  t.ok(maps(fresh.pid).includes('libnightfuse_merge.so'), 'the merge runtime was injected into it');
  await waitFor(() => fullyMerged('Foo', 'Bar', 2), 5000, 'reported in force in 2 of 2 workers again');
  for (let i = 0; i < 8; i++) t.equal((await post(stack.httpPort, '/function/Foo', `late-${i}`)).body.toString(), `From function Bar: late-${i}, World\n`);
  t.equal((await unmerge('Foo', 'Bar')).status, 200);
});

t.test('instances: each callee instance of a thread-isolated merge has its own thread', async (t) => {
  const pid = fooWorkers()[0].pid;
  const count = async () => {
    t.equal((await merge('Foo', 'Bar')).status, 200);
    const n = threads(pid);
    t.equal((await unmerge('Foo', 'Bar')).status, 200);
    return n;
  };
  const one = await count();
  await putPolicy(t, policyText({ fooBar: ', instances: 3' }));
  const three = await count();
  t.equal(three - one, 2, `threads with 1 instance: ${one}, with 3: ${three}`);
  t.equal(threads(pid), one - 1, 'the instances leave with the unmerge (the runtime thread stays)');
});

t.test('limits.maxExtraMemoryMiB counts the library and every instance', async (t) => {
  // libbar.so is a few KiB; each instance is estimated at 256 KiB: 1 fits in 0.5 MiB, 4 do not.
  await putPolicy(t, policyText({ fooBar: ', instances: 4', limits: 'maxExtraMemoryMiB: 0.5' }));
  const refused = await merge('Foo', 'Bar');
  t.equal(refused.status, 409);
  t.match(refused.data.results[0].error, /estimated extra memory 1\.0 MiB over the limit of 0\.5 MiB/);
  t.notOk(await mergeOf('Foo', 'Bar'), 'not merged');
  await putPolicy(t, policyText({ fooBar: ', instances: 1', limits: 'maxExtraMemoryMiB: 0.5' }));
  t.equal((await merge('Foo', 'Bar')).status, 200, 'one instance fits');
  t.equal((await unmerge('Foo', 'Bar')).status, 200);
});

t.test('limits.maxCalleesPerWorker, and a policy change unmerges what it no longer allows', async (t) => {
  await putPolicy(t, policyText({ limits: 'maxCalleesPerWorker: 1' }));
  t.equal((await merge('Faulty', 'Crashy')).status, 200, 'first callee');
  const second = await merge('Faulty', 'Query');
  t.equal(second.status, 409, 'second callee refused');
  t.match(second.data.results[0].error, /limit of 1 merged callees per worker reached/);
  await putPolicy(t, policyText({ limits: 'maxCalleesPerWorker: 2' }));
  t.equal((await merge('Faulty', 'Query')).status, 200, 'allowed once the limit is 2');
  t.equal((await mergeOf('Faulty', 'Crashy'))?.state, 'merged');

  const since = Date.now();
  await putPolicy(t, policyText({ limits: 'maxCalleesPerWorker: 2', query: 'never' }));
  await waitFor(async () => !(await mergeOf('Faulty', 'Query')), 5000, 'Faulty<-Query unmerged by the new policy');
  const ev = ((await admin('GET', '/events')).data as any[]).find((e) => e.kind === 'unmerged' && e.callee === 'Query' && e.at_ms >= since);
  t.match(ev?.reason, /policy/, `unmerge reason: ${ev?.reason}`);
  t.equal((await mergeOf('Faulty', 'Crashy'))?.state, 'merged', 'the pair it still allows stays merged');
  t.equal((await unmerge('Faulty', 'Crashy')).status, 200);
});

t.test('SIGHUP reloads the policy file (the watcher cannot see this change); the reload counter counts', async (t) => {
  await putPolicy(t, policyText());
  const reloads = async () => {
    const m = await metrics(stack.httpPort);
    return { ok: metricValue(m, 'nightfuse_policy_reloads_total', { result: 'ok' }) ?? NaN, refused: metricValue(m, 'nightfuse_policy_reloads_total', { result: 'refused' }) ?? NaN };
  };
  /** Replaces the file with text of the same size and the same mtime: only SIGHUP makes the gateway read it. */
  const swap = (text: string) => {
    const now = readFileSync(policyFile, 'utf8');
    const padded = `${text}#`.padEnd(now.length, '#');
    if (padded.length !== now.length) throw new Error('test policy longer than the file it replaces');
    writeFileSync(`${policyFile}.new`, padded);
    utimesSync(`${policyFile}.new`, MTIME, MTIME);
    renameSync(`${policyFile}.new`, policyFile);
    return padded;
  };
  const r0 = await reloads();
  const next = swap('defaults: { mode: never }\n');
  stack.gateway.kill('SIGHUP');
  await waitFor(async () => (await admin('GET', '/policy')).data.text === next, 5000, 'the new policy in force');
  t.same(await reloads(), { ok: r0.ok + 1, refused: r0.refused }, 'one applied reload counted');
  const p = (await admin('GET', '/policy')).data;
  t.equal(p.source, policyFile);
  t.equal(p.lastError, '');

  swap('defaults: { mode: sometimes }\n');
  stack.gateway.kill('SIGHUP');
  await waitFor(async () => (await reloads()).refused === r0.refused + 1, 5000, 'the invalid reload counted as refused');
  const after = (await admin('GET', '/policy')).data;
  t.equal(after.text, next, 'the old policy stays in force');
  t.match(after.lastError, /defaults\.mode: must be one of auto, always, never/, 'and the admin API says why');
  t.equal((await reloads()).ok, r0.ok + 1, 'no applied reload counted for it');
});

t.test('auto mode: hysteresis between the merge and the unmerge rates', async (t) => {
  await putPolicy(t, policyText());
  const fast = loadLoop(stack.httpPort, '/function/Foo', (i) => `hot-${i}`, (i) => `From function Bar: hot-${i}, World\n`, 2);
  t.teardown(() => fast.stop());
  await waitFor(() => fullyMerged('Foo', 'Bar', 2), 20000, 'Foo<-Bar merged automatically under load');
  await fast.stop();
  // About 10 calls/s: under the 20 needed to merge, over the 2 below which it unmerges.
  const since = Date.now();
  const slow = loadLoop(stack.httpPort, '/function/Foo', (i) => `warm-${i}`, (i) => `From function Bar: warm-${i}, World\n`, 1, 100);
  t.teardown(() => slow.stop());
  await decisionRounds(stack.httpPort, TOKEN, 15); // 3 s of rounds; sustainSec is 1
  const rate = slow.stats.ok / ((Date.now() - since) / 1000); // one Foo->Bar call per Foo call
  t.ok(rate > 2 && rate < 20, `the edge runs at ${rate.toFixed(1)} calls/s`);
  t.equal((await mergeOf('Foo', 'Bar'))?.state, 'merged', 'still merged at a rate between the two thresholds');
  t.notOk(((await admin('GET', '/events')).data as any[]).some((e) => e.kind === 'unmerged' && e.callee === 'Bar' && e.at_ms >= since), 'and never unmerged meanwhile');
  await slow.stop();
  await waitFor(async () => !(await mergeOf('Foo', 'Bar')), 10000, 'unmerged once the calls stop');
  const unmergedAt = Date.now();
  t.ok(((await admin('GET', '/events')).data as any[]).some((e) => e.kind === 'unmerged' && e.callee === 'Bar' && /cooled down|no calls/.test(e.reason)), 'because it cooled down');
  // The same warm rate does not merge it again (cooldown 2 s, then 2 s of rounds).
  const again = loadLoop(stack.httpPort, '/function/Foo', (i) => `w2-${i}`, (i) => `From function Bar: w2-${i}, World\n`, 1, 100);
  t.teardown(() => again.stop());
  await decisionRounds(stack.httpPort, TOKEN, 20);
  await again.stop();
  t.notOk(((await admin('GET', '/events')).data as any[]).some((e) => e.kind === 'decision' && e.callee === 'Bar' && e.at_ms >= unmergedAt), 'no merge decision at the warm rate');
  for (const l of [fast, slow, again]) t.same(l.stats.bad, [], 'every answer right');
});
