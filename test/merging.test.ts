// Run-time merging end to end: real gateway and launcher processes, the admin API and the CLI.
import t from 'tap';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NATIVE_BUILD } from '../common/paths.js';
import { CLI, loadLoop, metricValue, post, request, ROOT, startStack, startProcess, freePort, stopProcess, waitFor, type Stack } from './helpers.js';

const TOKEN = 'test-token-123';
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-merging-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The fixture config with absolute paths, and Bar's library a private copy we can replace. */
function writeConfig(): { config: string; barLib: string } {
  const barLib = join(dir, 'libbar.so');
  copyFileSync(join(NATIVE_BUILD, 'examples', 'libbar.so'), barLib);
  const entries = JSON.parse(readFileSync(join(ROOT, 'test', 'fixtures', 'func_config.json'), 'utf8'));
  for (const e of entries) {
    if (e.library) e.library = join(ROOT, 'test', 'fixtures', e.library);
    if (e.funcName === 'Bar') e.library = barLib;
  }
  const config = join(dir, 'func_config.json');
  writeFileSync(config, JSON.stringify(entries));
  return { config, barLib };
}

const { config, barLib } = writeConfig();
const policyFile = join(dir, 'policy.yaml');
copyFileSync(join(ROOT, 'test', 'fixtures', 'policies', 'auto.yaml'), policyFile);

let stack: Stack;
t.before(async () => {
  stack = await startStack({
    config,
    gatewayFlags: [`--merge_policy_file=${policyFile}`, `--admin_token=${TOKEN}`],
    launcherFlags: ['--merge_tick_ms=200'],
  });
});
t.teardown(() => stack?.stop());

async function admin(method: string, path: string, body?: string, token = TOKEN): Promise<{ status: number; data: any }> {
  const r = await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1${path}`, { method, body, headers: token ? { Authorization: `Bearer ${token}` } : {} });
  return { status: r.status, data: await r.json() };
}

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, NIGHTFUSE_GATEWAY: `http://127.0.0.1:${stack.httpPort}`, NIGHTFUSE_ADMIN_TOKEN: TOKEN } },
      (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
  });
}

const mergeOf = async (caller: string, callee: string) =>
  ((await admin('GET', '/merges')).data as any[]).find((m) => m.caller === caller && m.callee === callee);

t.test('admin API: refused without the token', async (t) => {
  t.equal((await admin('GET', '/status', undefined, '')).status, 401);
  t.equal((await admin('GET', '/status', undefined, 'wrong')).status, 401);
  t.equal((await admin('GET', '/status')).status, 200);
  const r = await cli(['merges', '--admin_token=wrong']);
  t.equal(r.code, 1, 'CLI exits non-zero on refusal');
  t.match(r.stderr, /refused \(HTTP 401\)/);
});

t.test('auto policy: under continuous load Bar is merged into every Foo worker; cooling unmerges; nothing lost', async (t) => {
  const loop = loadLoop(stack.httpPort, '/function/Foo', (i) => `auto-${i}`, (i) => `From function Bar: auto-${i}, World\n`, 2);
  await waitFor(async () => {
    const m = await mergeOf('Foo', 'Bar');
    return m && m.state === 'merged' && m.workersMerged === m.workersTotal && m.workersTotal >= 2;
  }, 20000, 'Foo<-Bar merged in all workers');
  const m = await mergeOf('Foo', 'Bar');
  t.equal(m.isolation, 'stack', 'isolation from the rule');
  await new Promise((r) => setTimeout(r, 1500));
  const metrics = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
  t.ok((metricValue(metrics, 'nightfuse_merges', { caller: 'Foo', callee: 'Bar' }) ?? 0) >= 2, 'merge shows in metrics');
  t.ok((metricValue(metrics, 'nightfuse_edge_local_calls_total', { caller: 'Foo', callee: 'Bar' }) ?? 0) > 0, 'local calls counted on the edge');
  t.ok((metricValue(metrics, 'nightfuse_merge_decisions_total', { kind: 'merge' }) ?? 0) >= 1, 'decision counted');
  const events = (await admin('GET', '/events')).data as any[];
  const decision = events.find((e) => e.kind === 'decision' && e.callee === 'Bar');
  t.match(decision?.reason ?? '', /hot for 1 s: .* calls\/s/, 'decision logged with its reasons and numbers');
  t.match(JSON.parse(decision.detail_json), { callsPerSec: Number, ipcShare: Number, benefitUsPerSec: Number });
  const cliOut = await cli(['merges']);
  t.equal(cliOut.code, 0);
  t.match(cliOut.stdout, /Foo\s+Bar\s+stack\s+merged/, 'nightfuse merges shows it');
  await loop.stop();
  t.same(loop.stats.bad, [], 'every response before, during and after the merge was right');
  t.ok(loop.stats.ok > 100, `${loop.stats.ok} calls`);
  await waitFor(async () => !(await mergeOf('Foo', 'Bar')), 15000, 'cooled down and unmerged');
  t.ok(((await admin('GET', '/events')).data as any[]).some((e) => e.kind === 'unmerged' && /cooled down|no calls/.test(e.reason)), 'unmerge by cooling logged');
  t.equal((await post(stack.httpPort, '/function/Foo', 'after')).body.toString(), 'From function Bar: after, World\n');
});

t.test('manual merge and unmerge through the CLI, under load', async (t) => {
  // After the cooldown the auto rule may merge again; take it by hand.
  const loop = loadLoop(stack.httpPort, '/function/Foo', (i) => `man-${i}`, (i) => `From function Bar: man-${i}, World\n`, 1);
  const merged = await cli(['merge', 'Foo', 'Bar', '--isolation', 'inline', '--json']);
  t.equal(merged.code, 0, merged.stderr);
  const res = JSON.parse(merged.stdout);
  t.ok(res.ok && res.results[0].detail.workers.every((w: any) => w.ok), 'returned once in force in every worker of Foo');
  t.equal((await mergeOf('Foo', 'Bar')).isolation, 'inline');
  const un = await cli(['unmerge', 'Foo', 'Bar']);
  t.equal(un.code, 0, un.stderr);
  t.equal(await mergeOf('Foo', 'Bar'), undefined);
  // (Foo->Bar itself may be merged again by the auto rule once its 2 s cooldown ends: the load keeps it hot.)
  const again = await cli(['unmerge', 'Faulty', 'Query']);
  t.equal(again.code, 1, 'unmerging what is not merged is refused');
  t.match(again.stderr, /Query is not merged into Faulty/);
  await loop.stop();
  t.same(loop.stats.bad, []);
});

t.test('policy says never / different trust groups: refused and not merged', async (t) => {
  const r = await admin('POST', '/merges', JSON.stringify({ caller: 'Faulty', callee: 'Query' }));
  t.equal(r.status, 409);
  t.match(r.data.results[0].error, /different trust groups/);
  const r2 = await admin('POST', '/merges', JSON.stringify({ caller: 'Foo', callee: 'Crashy' })); // same group, defaults: never
  t.equal(r2.status, 409);
  t.match(r2.data.results[0].error, /policy says never/);
  for (let i = 0; i < 20; i++) await post(stack.httpPort, '/function/Faulty', 'call:Query:x=1');
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(await mergeOf('Faulty', 'Query'), undefined, '"always" across trust groups does not merge');
  t.equal((await admin('POST', '/merges', JSON.stringify({ caller: 'Foo' }))).status, 400, 'bad request body');
  t.equal((await admin('POST', '/merges', JSON.stringify({ caller: 'Foo', callee: 'Nope' }))).status, 404, 'unknown function');
});

t.test('a faulting merged callee fails one call; the pair is held back', async (t) => {
  await post(stack.httpPort, '/function/Faulty', 'call:Crashy:warm');
  await waitFor(async () => (await mergeOf('Faulty', 'Crashy'))?.state === 'merged', 10000, 'Faulty<-Crashy merged (always)');
  t.equal((await post(stack.httpPort, '/function/Faulty', 'call:Crashy:fine')).body.toString(), 'fine');
  const r = await post(stack.httpPort, '/function/Faulty', 'call:Crashy:crash');
  t.equal(r.status, 500, 'the faulting call fails');
  await waitFor(async () => !(await mergeOf('Faulty', 'Crashy')), 5000, 'unmerged after the fault');
  const ev = (await admin('GET', '/events')).data as any[];
  t.ok(ev.some((e) => e.kind === 'fault' && e.callee === 'Crashy'), 'fault event');
  t.ok(ev.some((e) => e.kind === 'held_back' && e.callee === 'Crashy'), 'held back');
  for (let i = 0; i < 10; i++) t.equal((await post(stack.httpPort, '/function/Faulty', `call:Crashy:after${i}`)).body.toString(), `after${i}`);
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(await mergeOf('Faulty', 'Crashy'), undefined, 'still held back (cooldown 30 s) although "always"');
});

t.test("changing Bar's library file unmerges it", async (t) => {
  const merged = await admin('POST', '/merges', JSON.stringify({ caller: 'Foo', callee: 'Bar', isolation: 'thread' }));
  t.equal(merged.status, 200, JSON.stringify(merged.data));
  // Replace the file (a new inode: running processes keep the old mapping).
  const next = `${barLib}.new`;
  copyFileSync(barLib, next);
  appendFileSync(next, Buffer.from('changed'));
  renameSync(next, barLib);
  await waitFor(async () => !(await mergeOf('Foo', 'Bar')), 5000, 'unmerged after the library changed');
  t.ok(((await admin('GET', '/events')).data as any[]).some((e) => e.kind === 'unmerged' && /library .* changed/.test(e.reason)), 'reason logged');
  t.equal((await post(stack.httpPort, '/function/Foo', 'lib')).body.toString(), 'From function Bar: lib, World\n');
});

t.test('an invalid policy reload is refused and the old policy stays', async (t) => {
  const before = (await admin('GET', '/policy')).data;
  const bad = await admin('PUT', '/policy', 'rules:\n  - { caller: Foo, callee: Bar, isolation: sideways }');
  t.equal(bad.status, 400);
  t.match(bad.data.errors[0], /rules\[0\] \(Foo -> Bar\)\.isolation: must be one of/);
  t.equal((await admin('GET', '/policy')).data.text, before.text, 'old policy in force');
  const v = await admin('POST', '/policy/validate', 'defaults: { mode: bogus }');
  t.equal(v.status, 400);
  t.equal((await admin('POST', '/policy/validate', 'defaults: { mode: never }')).status, 200);
  // The file changes to something invalid: refused, reported, old policy kept.
  writeFileSync(policyFile, 'defaults: { minIpcShare: 7 }\n');
  await waitFor(async () => /minIpcShare/.test((await admin('GET', '/policy')).data.lastError), 5000, 'file reload refused');
  t.equal((await admin('GET', '/policy')).data.text, before.text, 'old policy still in force');
  const check = await cli(['policy', 'check', policyFile]);
  t.equal(check.code, 1);
  t.match(check.stdout, /defaults\.minIpcShare: must be <= 1/);
  // A valid apply through the CLI.
  const apply = await cli(['policy', 'apply', join(ROOT, 'test', 'fixtures', 'policies', 'never.yaml')]);
  t.equal(apply.code, 0, apply.stderr);
  t.match((await admin('GET', '/policy')).data.text, /mode: never/);
});

t.test('a policy with never is respected under load', async (t) => {
  const loop = loadLoop(stack.httpPort, '/function/Foo', (i) => `nv-${i}`, (i) => `From function Bar: nv-${i}, World\n`, 2);
  await new Promise((r) => setTimeout(r, 2500));
  t.equal(await mergeOf('Foo', 'Bar'), undefined, 'Foo->Bar never merged although hot');
  await loop.stop();
  t.same(loop.stats.bad, []);
});

t.test('an invalid policy file refuses the gateway start, naming the field and rule', async (t) => {
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'rules:\n  - { caller: A, callee: B, mode: maybe }\n');
  const port = await freePort();
  const err = await startProcess(['gateway', '--listen_addr=127.0.0.1', `--http_port=${port}`, '--grpc_port=0', '--engine_conn_port=0', '--control_port=0', `--func_config_file=${config}`, `--merge_policy_file=${bad}`], /gateway ready/, 10000)
    .then((p) => { void stopProcess(p.child); return ''; }, (e: Error) => e.message);
  t.match(err, /rules\[0\] \(A -> B\)\.mode: must be one of auto, always, never/);
  const port2 = await freePort();
  const noToken = await startProcess(['gateway', '--listen_addr=127.0.0.1', `--http_port=${port2}`, '--grpc_port=0', '--engine_conn_port=0', '--control_port=0', `--func_config_file=${config}`], /gateway ready/, 10000, { NIGHTFUSE_ADMIN_TOKEN: '' });
  const r = await fetch(`http://127.0.0.1:${port2}/admin/v1/status`);
  t.equal(r.status, 403, 'admin API refused when no token is configured');
  await stopProcess(noToken.child);
});
