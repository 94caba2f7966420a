// A fault in a merged callee under continuous load, end to end (gateway and launcher processes):
// only the call that faults fails, and the worker it happened in is drained and replaced.
import t from 'tap';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadLoop, post, ROOT, startStack, waitFor, type Stack } from './helpers.js';

const TOKEN = 'fault-test-token';
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-merge-fault-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const config = join(dir, 'func_config.json');
const entries = JSON.parse(readFileSync(join(ROOT, 'test', 'fixtures', 'func_config.json'), 'utf8'));
for (const e of entries) if (e.library) e.library = join(ROOT, 'test', 'fixtures', e.library);
writeFileSync(config, JSON.stringify(entries));
const FAULTY = entries.find((e: { funcName: string }) => e.funcName === 'Faulty').funcId as number;
// Merged by hand only (auto needs 1e6 calls/s), re-mergeable a second after a fault.
const policy = join(dir, 'policy.yaml');
writeFileSync(policy, [
  'defaults: { mode: never }',
  'trustGroups: { app: [Faulty, Crashy] }',
  'rules:',
  '  - { caller: Faulty, callee: Crashy, mode: auto, minCallsPerSec: 1000000, cooldownSec: 1 }',
  '',
].join('\n'));

let stack: Stack;
t.before(async () => {
  stack = await startStack({ config, gatewayFlags: [`--merge_policy_file=${policy}`, `--admin_token=${TOKEN}`], launcherFlags: ['--merge_tick_ms=200'] });
  // A manual merge goes to the nodes the gateway knows run the caller: wait for the first report.
  await waitFor(async () => ((await admin('GET', '/functions')).data as any[]).some((f) => f.name === 'Faulty' && f.workers > 0), 10000, 'Faulty reported');
});
t.teardown(() => stack?.stop());

async function admin(method: string, path: string, body?: string): Promise<{ status: number; data: any }> {
  const r = await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1${path}`, { method, body, headers: { Authorization: `Bearer ${TOKEN}` } });
  return { status: r.status, data: await r.json() };
}

/** The launcher's worker processes of a function, from /proc (its children, by FAAS_FUNC_ID). */
function workerPids(funcId: number): number[] {
  const launcher = stack.launcher.pid!;
  const kids = readdirSync(`/proc/${launcher}/task`).flatMap((tid) => {
    try {
      return readFileSync(`/proc/${launcher}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  });
  return kids.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`FAAS_FUNC_ID=${funcId}`);
    } catch {
      return false;
    }
  }).sort();
}

/** The workers the launcher says it retires (from its structured log), once it says so. */
function retired(): { pid: number; func: string }[] {
  return stack.launcherStderr().split('\n').filter((l) => l.includes('retiring a possibly damaged worker')).map((l) => {
    try {
      const j = JSON.parse(l);
      return { pid: Number(j.pid), func: String(j.func) };
    } catch {
      return { pid: NaN, func: '' };
    }
  });
}

for (const isolation of ['inline', 'thread']) {
  t.test(`a merged callee faults (${isolation}) under continuous load: only that call fails, the worker is replaced`, async (t) => {
    const merged = await admin('POST', '/merges', JSON.stringify({ caller: 'Faulty', callee: 'Crashy', isolation }));
    t.equal(merged.status, 200, `merged by hand: ${JSON.stringify(merged.data).slice(0, 300)}`);
    const retiredBefore = retired().length;
    t.ok(workerPids(FAULTY).length >= 1, `Faulty workers ${workerPids(FAULTY).join(', ')}`);
    const loop = loadLoop(stack.httpPort, '/function/Faulty', (i) => `call:Crashy:${isolation}-${i}`, (i) => `${isolation}-${i}`, 2);
    await new Promise((r) => setTimeout(r, 400));
    const atFault = workerPids(FAULTY); // the replacement starts before the faulting call even returns
    const crash = await post(stack.httpPort, '/function/Faulty', 'call:Crashy:crash');
    t.equal(crash.status, 500, 'the call that faults fails');
    await waitFor(() => retired().length > retiredBefore, 5000, 'the launcher retires the worker');
    const damaged = retired().at(-1)!;
    t.equal(damaged.func, 'Faulty', `the damaged worker ${damaged.pid} is a Faulty worker`);
    await waitFor(() => !workerPids(FAULTY).includes(damaged.pid), 5000, 'the damaged worker is stopped');
    await waitFor(() => workerPids(FAULTY).some((p) => !atFault.includes(p)), 5000, 'a replacement is running');
    await new Promise((r) => setTimeout(r, 500)); // load keeps flowing through the replacement
    await loop.stop();
    t.same(loop.stats.bad, [], 'no other call failed, before, during or after');
    t.ok(loop.stats.ok > 20, `${loop.stats.ok} calls checked`);
    const after = workerPids(FAULTY);
    t.notOk(after.includes(damaged.pid), `Faulty workers now ${after.join(', ')}`);
    await waitFor(async () => !((await admin('GET', '/merges')).data as any[]).some((m) => m.caller === 'Faulty' && m.callee === 'Crashy'), 5000, 'unmerged after the fault');
    const events = (await admin('GET', '/events')).data as any[];
    t.ok(events.some((e) => e.kind === 'fault' && e.callee === 'Crashy'), 'fault event');
    await new Promise((r) => setTimeout(r, 1200)); // past the 1 s cooldown, for the next round
  });
}
