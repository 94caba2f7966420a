// The injector through its koffi binding, and run-time merging in live worker hosts.
import t from 'tap';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { NATIVE_BUILD } from '../common/paths.js';
import { inject } from '../launcher/injector.js';
import { decodeFault, encode, MP_MAX_NAME, MP_MAX_PATH, type Isolation } from '../proto/merge-wire.js';
import { startLocalStack, type LocalStack } from '../launcher/local-stack.js';
import { FIXTURE_CONFIG, loadLoop, post, waitFor } from './helpers.js';
import { startTarget } from './targets.js';

t.test('koffi binding: typed report, off the event loop', async (t) => {
  const target = await startTarget('target_read');
  t.teardown(() => target.stop());
  const out = `/tmp/nf-koffi-probe-${process.pid}`;
  const r = await inject(target.pid, join(NATIVE_BUILD, 'libprobe.so'), { entry: 'probe_entry', arg: out });
  // Counts event-loop turns while an injection runs whose entry takes 100 ms: a binding that blocked the
  // loop would leave it at 0 (a fast one can finish before the loop's first turn, so it would prove nothing).
  let ticks = 0;
  let counting = true;
  const turn = () => {
    ticks++;
    if (counting) setTimeout(turn, 1);
  };
  setImmediate(turn);
  const slow = await inject(target.pid, join(NATIVE_BUILD, 'libprobe.so'), { entry: 'probe_sleep', arg: '100' });
  counting = false;
  t.ok(slow.ok && ticks >= 10, `the event loop turned ${ticks} times during a 100 ms injection: ${slow.error}`);
  t.equal(r.ok, true, r.error);
  t.equal(readFileSync(out, 'utf8'), `pid=${target.pid}`, 'entry ran with its argument');
  rmSync(out, { force: true });
  t.equal(r.safePoint, true);
  t.equal(r.syscall, 0, 'blocked in read(2)');
  t.equal(r.trapSignal, 5, 'calls come back through an int3 (SIGTRAP), no handler touched');
  t.equal(r.sameFile, true, 'the target mapped the very file given');
  t.equal(r.leftRunning, false);
  t.equal(r.damaged, false);
  t.ok(r.stoppedUs > 0 && r.totalUs >= r.stoppedUs, `stopped ${r.stoppedUs.toFixed(0)} µs of ${r.totalUs.toFixed(0)} µs`);
  t.equal(await target.echo('still here'), 'echo still here');
  const missing = await inject(target.pid, '/nonexistent.so');
  t.equal(missing.ok, false);
  t.match(missing.error, /No such file/);
  const noEntry = await inject(target.pid, join(NATIVE_BUILD, 'libprobe.so'), { entry: 'nope' });
  t.match(noEntry.error, /entry symbol nope not found.*not touched/);
  t.equal(await target.echo('after failures'), 'echo after failures');
  const stat = await startTarget('target_static');
  t.teardown(() => stat.stop());
  t.match((await inject(stat.pid, join(NATIVE_BUILD, 'libprobe.so'))).error, /statically linked/);
});

t.test('merge wire: names and paths are refused when too long, never cut; FAULT carries its id and flags', async (t) => {
  t.throws(() => encode.load(1, 'n'.repeat(MP_MAX_NAME + 1), '/x.so', 'inline', 1), /callee name of 256 bytes: must be 1\.\.255/);
  t.throws(() => encode.load(1, 'Bar', `/${'p'.repeat(MP_MAX_PATH)}`, 'inline', 1), /library path of 4096 bytes/);
  t.throws(() => encode.route(1, '', true), /callee name of 0 bytes/);
  t.ok(encode.load(1, 'n'.repeat(MP_MAX_NAME), `/${'p'.repeat(MP_MAX_PATH - 1)}`, 'inline', 1).length > MP_MAX_PATH, 'the limits themselves pass');
  // FAULT id 7: "Bar", SIGBUS, address 0x10, 3 calls before, flags 1 (in the callee's code); and the same without flags.
  const body = Buffer.concat([Buffer.from([3, 0]), Buffer.from('Bar'), Buffer.from([7, 0, 0, 0]), Buffer.from([0x10, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([3, 0, 0, 0, 0, 0, 0, 0])]);
  const frame = (b: Buffer) => {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(16 + b.length, 0);
    h.writeUInt16LE(6, 4);
    h.writeUInt32LE(7, 8);
    return Buffer.concat([h, b]);
  };
  t.same(decodeFault(frame(Buffer.concat([body, Buffer.from([1])]))), { id: 7, callee: 'Bar', signal: 7, address: '0x10', callsBefore: 3, inCallee: true });
  t.equal(decodeFault(frame(body)).inCallee, undefined, 'an older runtime: flags unknown');
  t.same([...encode.faultAck(7)], [16, 0, 0, 0, 6, 0x80, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0], 'the acknowledgement');
});

let stack: LocalStack;
t.before(async () => {
  stack = await startLocalStack(FIXTURE_CONFIG);
});
t.teardown(async () => {
  await stack?.stop();
});

const barLib = () => stack.agent.config.byName.get('Bar')!.library!;

for (const iso of ['inline', 'stack', 'thread'] as Isolation[]) {
  t.test(`merge Bar into every Foo worker (${iso}) under load; unmerge; nothing lost`, async (t) => {
    const loop = loadLoop(stack.httpPort, '/function/Foo', (i) => `m-${iso}-${i}`, (i) => `From function Bar: m-${iso}-${i}, World\n`, 2);
    await new Promise((r) => setTimeout(r, 200));
    const foos = stack.agent.workersOf('Foo').filter((w) => w.state !== 'dead');
    t.ok(foos.length >= 2, `${foos.length} Foo workers`);
    for (const w of foos) {
      const s = await stack.merge.attach(w);
      t.equal(s.hello.pid, w.pid, `runtime in worker ${w.clientId} says hello`);
      await s.load('Bar', barLib(), iso, 1);
      await s.route('Bar', true);
    }
    const barPool = [...stack.agent.pools.values()].find((p) => p.entry.funcName === 'Bar')!;
    await new Promise((r) => setTimeout(r, 300));
    const ipcBefore = barPool.counters.calls;
    await new Promise((r) => setTimeout(r, 500));
    t.equal(barPool.counters.calls, ipcBefore, 'no Foo->Bar call crosses IPC while merged');
    let local = 0;
    for (const w of foos) {
      const st = await stack.merge.sessions.get(w.clientId)!.stats();
      const bar = st.callees.find((c) => c.name === 'Bar')!;
      t.equal(bar.isolation, iso);
      t.equal(bar.failures, 0);
      local += bar.calls;
    }
    t.ok(local > 10, `${local} local calls served in process`);
    await stack.merge.collect();
    const edge = stack.agent.edges.snapshot().find((e) => e.caller === 'Foo' && e.callee === 'Bar')!;
    t.ok(edge.localCalls >= local, 'local calls folded into the Foo->Bar edge');
    for (const w of foos) {
      const s = stack.merge.sessions.get(w.clientId)!;
      await s.route('Bar', false);
      await s.unload('Bar');
    }
    await new Promise((r) => setTimeout(r, 300));
    t.ok(barPool.counters.calls > ipcBefore, 'calls go over IPC again after unmerge');
    await loop.stop();
    t.same(loop.stats.bad, [], 'every response before, during and after was right');
    t.ok(loop.stats.ok > 50, `${loop.stats.ok} calls checked`);
  });
}

t.test('a faulting merged callee fails one call; the caller keeps serving', async (t) => {
  const faulty = stack.agent.workersOf('Faulty').filter((w) => w.state !== 'dead');
  const crashyLib = stack.agent.config.byName.get('Crashy')!.library!;
  for (const w of faulty) {
    const s = await stack.merge.attach(w);
    await s.load('Crashy', crashyLib, 'stack', 1);
    await s.route('Crashy', true);
  }
  const pids = faulty.map((w) => w.pid);
  t.equal((await post(stack.httpPort, '/function/Faulty', 'call:Crashy:merged ok')).body.toString(), 'merged ok');
  const r = await post(stack.httpPort, '/function/Faulty', 'call:Crashy:crash');
  t.equal(r.status, 500, 'the call that hit the fault fails');
  await waitFor(() => stack.faults.length >= 1, 3000, 'FAULT event');
  t.equal(stack.faults[0].callee, 'Crashy');
  t.equal(stack.faults[0].signal, 11, 'SIGSEGV');
  t.same(stack.agent.workersOf('Faulty').map((w) => w.pid).sort(), pids.sort(), 'caller workers still the same processes');
  const crashyPool = [...stack.agent.pools.values()].find((p) => p.entry.funcName === 'Crashy')!;
  const before = crashyPool.counters.calls;
  for (let i = 0; i < 4; i++) t.equal((await post(stack.httpPort, '/function/Faulty', `call:Crashy:after${i}`)).body.toString(), `after${i}`);
  t.ok(crashyPool.counters.calls > before, 'route is off: calls go over IPC');
  for (const w of faulty) await stack.merge.sessions.get(w.clientId)!.unload('Crashy');
});

t.test('inject -> LOAD -> ROUTE -> UNLOAD, 100 times in a live worker: no leaked threads or mappings', async (t) => {
  const w = stack.agent.workersOf('Foo').find((x) => x.state !== 'dead')!;
  const count = () => ({
    threads: readdirSync(`/proc/${w.pid}/task`).length,
    maps: readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n').length,
    bar: readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('libbar.so')).length,
  });
  await stack.merge.attach(w);
  const before = count();
  const isos: Isolation[] = ['inline', 'stack', 'thread'];
  for (let i = 0; i < 100; i++) {
    // Re-inject each round: the runtime's entry is idempotent while it runs.
    const release = await stack.agent.hold(w);
    const rep = await inject(w.pid!, join(NATIVE_BUILD, 'libnightfuse_merge.so'), { entry: 'nightfuse_merge_start', arg: stack.merge.socketPath });
    release();
    if (!rep.ok) t.fail(`re-inject #${i}: ${rep.error}`);
    const s = await stack.merge.attach(w);
    await s.load('Bar', barLib(), isos[i % 3], 1);
    await s.route('Bar', true);
    await s.unload('Bar');
  }
  const after = count();
  t.equal(after.threads, before.threads, `threads ${before.threads} -> ${after.threads}`);
  t.equal(after.bar, 0, 'callee library unmapped');
  t.ok(after.maps <= before.maps + 8, `mappings ${before.maps} -> ${after.maps}`);
  t.equal((await post(stack.httpPort, '/function/Foo', 'after cycles')).body.toString(), 'From function Bar: after cycles, World\n');
});

t.test('a runtime that lost its launcher connection is started again through the entry fallback', async (t) => {
  const w = stack.agent.workersOf('Foo').find((x) => x.state !== 'dead')!;
  const first = await stack.merge.attach(w);
  first.close('test: drop the connection');
  await waitFor(() => !stack.merge.sessions.has(w.clientId), 3000, 'session gone');
  const before = stack.merge.injections.length;
  const again = await stack.merge.attach(w);
  t.not(again, first, 'a new session');
  const made = stack.merge.injections.slice(before);
  t.same(made.map((r) => r.entry || 'load-only'), ['load-only', 'nightfuse_merge_start'], 'load-only first (ignored: already loaded), then the entry');
  await again.load('Bar', barLib(), 'inline', 1);
  await again.route('Bar', true);
  t.equal((await post(stack.httpPort, '/function/Foo', 'restarted')).body.toString(), 'From function Bar: restarted, World\n');
  await again.unload('Bar');
});
