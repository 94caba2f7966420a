// The launcher's safety rules, with real launcher processes: the IPC roots it
// refuses, the Nightcore flags it refuses, who may say HELLO on merge.sock,
// and --merging=false.
import t from 'tap';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeHello, MP_HEADER, MpType } from '../proto/merge-wire.js';
import {
  admin, cli, FIXTURE_CONFIG, loadLoop, startProcess, startStack, stopProcess, uniqueIpcRoot, waitFor, workerProcesses, type Stack,
} from './helpers.js';

const TOKEN = 'safety';
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-safety-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
// Every pair with calls merges at once: what --merging=false must stop.
const policy = join(dir, 'always.yaml');
writeFileSync(policy, 'defaults: { mode: always, isolation: inline }\n');

let stack: Stack;
t.before(async () => {
  stack = await startStack({ gatewayFlags: [`--admin_token=${TOKEN}`, `--merge_policy_file=${policy}`], launcherFlags: ['--merge_tick_ms=200'] });
});
t.teardown(() => stack?.stop());

/** A second launcher on this stack's gateway; resolves when it exits (or is killed after 20 s: code -1). */
const launcher = (flags: string[]) => cli([
  'launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${stack.enginePort}`, '--control_port=0', `--func_config_file=${FIXTURE_CONFIG}`, ...flags,
], {}, 20000);

const fooWorks = async () => (await fetch(`http://127.0.0.1:${stack.httpPort}/function/Foo`, { method: 'POST', body: 'safe' })).text();

t.test('refuses an IPC root that a live engine serves, and leaves it alone', async (t) => {
  const before = readdirSync(join(stack.ipcRoot, 'fifo')).sort();
  const r = await launcher([`--root_path_for_ipc=${stack.ipcRoot}`]);
  t.not(r.code, 0, 'the second launcher exits with an error');
  t.match(r.stderr, `another engine is serving ${stack.ipcRoot}/engine.sock; give this one its own --root_path_for_ipc`);
  t.same(readdirSync(join(stack.ipcRoot, 'fifo')).sort(), before, "the first launcher's FIFOs are untouched");
  t.equal(await fooWorks(), 'From function Bar: safe, World\n', 'the first launcher still serves');
});

t.test('refuses to wipe a folder that is not an IPC root', async (t) => {
  const precious = mkdtempSync(join(dir, 'precious-'));
  writeFileSync(join(precious, 'thesis.tex'), 'do not delete');
  mkdirSync(join(precious, 'fifo'));
  const r = await launcher([`--root_path_for_ipc=${precious}`]);
  t.not(r.code, 0);
  t.match(r.stderr, `refusing to wipe ${precious}: it holds thesis.tex, which is not an IPC root`);
  t.equal(readFileSync(join(precious, 'thesis.tex'), 'utf8'), 'do not delete', 'the file is still there');
});

t.test('reuses an IPC root left behind by a launcher that was killed', async (t) => {
  const stale = uniqueIpcRoot('stale');
  mkdirSync(join(stale, 'fifo'), { recursive: true });
  mkdirSync(join(stale, 'shm'));
  for (const f of ['engine.sock', 'merge.sock', 'fifo/worker_1_input', 'shm/42.i']) closeSync(openSync(join(stale, f), 'w'));
  const l = await startProcess(['launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${stack.enginePort}`, '--control_port=0',
    `--func_config_file=${FIXTURE_CONFIG}`, `--root_path_for_ipc=${stale}`, '--merging=false'], /launcher ready/, 30000);
  t.notOk(existsSync(join(stale, 'shm', '42.i')), 'stale files wiped');
  t.ok(existsSync(join(stale, 'engine.sock')), 'and the root recreated');
  t.same(await stopProcess(l.child), { code: 0, signal: null }, 'stops cleanly on SIGTERM');
  t.notOk(existsSync(stale), 'and removes its IPC root');
});

t.test('refuses the Nightcore flags it does not support, before touching anything', async (t) => {
  const cases = [
    ['--engine_tcp_port=10010', /--engine_tcp_port is not supported/],
    ['--func_worker_use_engine_socket', /--func_worker_use_engine_socket is not supported/],
    ['--use_fifo_for_nested_call', /--use_fifo_for_nested_call is not supported/],
  ] as const;
  const roots = cases.map(() => uniqueIpcRoot('flags'));
  const runs = await Promise.all(cases.map(([flag], i) => launcher([`--root_path_for_ipc=${roots[i]}`, flag])));
  for (const [i, [flag, why]] of cases.entries()) {
    t.not(runs[i].code, 0, `${flag}: refused`);
    t.match(runs[i].stderr, why, `${flag}: says why`);
    t.notOk(existsSync(roots[i]), `${flag}: no IPC root created`);
  }
});

/**
 * A HELLO as the merge runtime sends it (native/include/nightfuse/merge_proto.h:
 * header u32 length, u16 type, u16 0, u32 request id, i32 status; body u32 pid,
 * u32 func id, u32 client id, string version). Only the C runtime encodes it;
 * the test checks its own bytes with the launcher's decoder.
 */
function hello(pid: number, funcId: number, clientId: number): Buffer {
  const version = Buffer.from('test');
  const b = Buffer.alloc(MP_HEADER + 12 + 2 + version.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE(MpType.HELLO, 4);
  b.writeUInt32LE(pid, MP_HEADER);
  b.writeUInt32LE(funcId, MP_HEADER + 4);
  b.writeUInt32LE(clientId, MP_HEADER + 8);
  b.writeUInt16LE(version.length, MP_HEADER + 12);
  version.copy(b, MP_HEADER + 14);
  return b;
}

/** Says HELLO on merge.sock: 'closed' if the launcher hangs up, 'request' if it treats us as a runtime. */
function sayHello(frame: Buffer): Promise<'closed' | 'request' | 'silent'> {
  return new Promise((resolve) => {
    const s = net.connect(join(stack.ipcRoot, 'merge.sock'));
    const timer = setTimeout(() => { s.destroy(); resolve('silent'); }, 8000);
    s.on('data', (d) => {
      clearTimeout(timer);
      s.destroy();
      resolve(d.readUInt16LE(4) === MpType.STATS ? 'request' : 'silent');
    });
    s.on('close', () => { clearTimeout(timer); resolve('closed'); });
    s.on('error', () => {});
    s.write(frame);
  });
}

t.test('merge.sock: only workers this launcher started (client id, pid, and the peer the kernel sees) may say HELLO', async (t) => {
  const bar = workerProcesses(stack.launcher.pid!).find((w) => w.funcId === 2)!;
  t.ok(bar, `a Bar worker: pid ${bar.pid}, client id ${bar.clientId}`);
  t.same(decodeHello(hello(bar.pid, bar.funcId, bar.clientId)), { pid: bar.pid, funcId: 2, clientId: bar.clientId, version: 'test' }, 'the test HELLO decodes as meant');
  t.equal(await sayHello(hello(process.pid, bar.funcId, bar.clientId)), 'closed', "a worker's client id with another pid: closed");
  t.equal(await sayHello(hello(bar.pid, bar.funcId, 16000)), 'closed', 'a client id it never started: closed');
  // The matching pair, said by another process (this one): the kernel's view of the peer (SO_PEERCRED)
  // decides, so one worker cannot pass itself off as another. Real runtimes are accepted in every merge test.
  t.equal(await sayHello(hello(bar.pid, bar.funcId, bar.clientId)), 'closed', "client id and pid of its own worker, from another process: closed");
  t.equal(await fooWorks(), 'From function Bar: safe, World\n', 'the launcher serves on');
});

t.test('--merging=false: no decision loop, no injection, manual merges refused', async (t) => {
  const off = await startStack({ gatewayFlags: [`--admin_token=${TOKEN}`, `--merge_policy_file=${policy}`], launcherFlags: ['--merge_tick_ms=200', '--merging=false'] });
  t.teardown(() => off.stop());
  const loads = [stack, off].map((s) => loadLoop(s.httpPort, '/function/Foo', (i) => `off-${i}`, (i) => `From function Bar: off-${i}, World\n`, 2));
  t.teardown(() => Promise.all(loads.map((l) => l.stop()))); // also when a check below throws
  // The same policy with merging on merges Foo<-Bar at once ...
  await waitFor(async () => ((await admin(stack.httpPort, TOKEN, 'GET', '/merges')).data as any[]).some((m) => m.caller === 'Foo' && m.callee === 'Bar' && m.state === 'merged'), 15000, 'Foo<-Bar merged where merging is on');
  // ... while the node with merging off reports, but runs no decision round at all.
  const node = async () => (await admin(off.httpPort, TOKEN, 'GET', '/nodes')).data[0];
  let first: any;
  await waitFor(async () => (first = await node())?.lastReport, 10000, 'a first report on the control plane');
  await waitFor(async () => Date.parse((await node()).lastReport) > Date.parse(first.lastReport) + 1500, 10000, 'two more reports');
  t.equal((await node()).ticks, 0, 'no decision round ran');
  t.same((await admin(off.httpPort, TOKEN, 'GET', '/merges')).data, [], 'nothing merged');
  const manual = await admin(off.httpPort, TOKEN, 'POST', '/merges', JSON.stringify({ caller: 'Foo', callee: 'Bar' }));
  t.equal(manual.status, 409, 'a manual merge is refused');
  t.match(manual.data.results[0].error, /merging is off on this node \(--merging=false\)/);
  for (const w of workerProcesses(off.launcher.pid!)) {
    t.notOk(readFileSync(`/proc/${w.pid}/maps`, 'utf8').includes('libnightfuse_merge.so'), `worker ${w.clientId}: no merge runtime injected`);
  }
  t.notOk(existsSync(join(off.ipcRoot, 'merge.sock')), 'no merge.sock');
  for (const l of loads) {
    await l.stop();
    t.same(l.stats.bad, [], 'every answer right');
  }
});
