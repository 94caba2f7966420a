// `nightfuse up` as a user runs it: the ready line, the admin commands against it,
// and every way it stops — leaving no process and no IPC root behind.
import t, { type Test } from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { admin, alive, cli, descendants, post, readyPorts, startProcess, stopProcess, uniqueIpcRoot, waitFor } from './helpers.js';

const TOKEN = 'up-test-token';
// Each subtest runs its own `up` on its own ports and IPC root: two at a time.
t.jobs = 2;

async function up() {
  const ipcRoot = uniqueIpcRoot('up');
  const s = await startProcess(
    ['up', '--http_port=0', '--grpc_port=0', '--engine_conn_port=0', '--control_port=0', `--root_path_for_ipc=${ipcRoot}`, '--quiet'],
    /nightfuse up: (http=\S+ grpc=\S+ engine=\S+ control=\S+) functions=(\S+)\n/, 40000, { NIGHTFUSE_ADMIN_TOKEN: TOKEN },
  );
  const ports = readyPorts(s.match[1]);
  const env = { NIGHTFUSE_GATEWAY: `http://127.0.0.1:${ports.http}`, NIGHTFUSE_ADMIN_TOKEN: TOKEN };
  return { ...s, ports, ipcRoot, env, pid: s.child.pid! };
}

const cmdline = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
};

/** The processes `up` started: gateway and launcher (its children) and the workers (the launcher's). */
function tree(pid: number) {
  const all = descendants(pid);
  return {
    all,
    gateway: all.find((p) => / gateway /.test(cmdline(p))),
    launcher: all.find((p) => / launcher /.test(cmdline(p))),
    workers: all.filter((p) => /nightfuse-worker /.test(cmdline(p))),
  };
}

async function nothingLeft(t: Test, pids: number[], ipcRoot: string) {
  await waitFor(() => pids.every((p) => !alive(p)), 8000, 'every process gone').catch(() => {});
  t.same(pids.filter(alive).map((p) => `${p} ${cmdline(p)}`), [], 'no process left behind');
  t.notOk(existsSync(ipcRoot), `IPC root ${ipcRoot} removed`);
}

t.test('ready line, a working stack, status and edges from the CLI; SIGINT stops everything', async (t) => {
  const s = await up();
  t.match(s.match[0], /^nightfuse up: http=127\.0\.0\.1:\d+ grpc=127\.0\.0\.1:\d+ engine=127\.0\.0\.1:\d+ control=127\.0\.0\.1:\d+ functions=Foo,Bar,Blob,grpc:nightfuse\.examples\.Greeter\n$/, 'one ready line with every address');
  t.ok(s.ports.http > 0 && s.ports.grpc > 0 && s.ports.engine > 0 && s.ports.control > 0, 'port 0 became real ports');
  const procs = tree(s.pid);
  t.ok(procs.gateway && procs.launcher, 'a gateway and a launcher process');
  t.equal(procs.workers.length, 6, 'the example config\'s minWorkers (2+2+1+1) worker hosts');
  for (let i = 0; i < 20; i++) {
    const r = await post(s.ports.http, '/function/Foo', `up-${i}`);
    if (r.body.toString() !== `From function Bar: up-${i}, World\n`) t.fail(`call ${i}: ${r.status} ${r.body.toString()}`);
  }

  const status = await cli(['status', '--json'], s.env);
  t.equal(status.code, 0, status.stderr);
  const st = JSON.parse(status.stdout);
  t.same(st.functions.map((f: { name: string }) => f.name), ['Foo', 'Bar', 'Blob', 'grpc:nightfuse.examples.Greeter']);
  t.equal(st.nodes.length, 1, 'one node');
  t.equal(st.nodes[0].pid, procs.launcher, 'the node is the launcher up started');
  const table = await cli(['status'], s.env);
  t.equal(table.code, 0);
  t.match(table.stdout, /^Functions\nname\s+funcId\s+trustGroup\s+workers/, 'status prints tables');
  t.match(table.stdout, /\nFoo\s+1\s+\S+\s+2\s/, 'Foo with its 2 workers');

  // The launcher reports every second: wait for the 20 nested calls to show.
  await waitFor(async () => ((await admin(s.ports.http, TOKEN, 'GET', '/edges')).data as any[])
    .some((e) => e.caller === 'Foo' && e.callee === 'Bar' && e.calls >= 20), 10000, 'Foo->Bar edge with 20 calls');
  const ej = await cli(['edges', '--json'], s.env);
  t.equal(ej.code, 0, ej.stderr);
  t.ok(JSON.parse(ej.stdout).find((e: any) => e.caller === 'Foo' && e.callee === 'Bar').calls >= 20, 'edges --json: Foo->Bar counted');
  const et = await cli(['edges'], s.env);
  t.equal(et.code, 0);
  t.match(et.stdout, /\n\d+\s+Foo\s+Bar\s+\S+\s+\d+\s/, 'edges table shows Foo -> Bar');
  const refused = await cli(['status'], { ...s.env, NIGHTFUSE_ADMIN_TOKEN: 'wrong' });
  t.equal(refused.code, 1, 'a wrong token exits 1');

  const exit = await stopProcess(s.child, 'SIGINT');
  t.same(exit, { code: 0, signal: null }, 'up exits 0 on SIGINT');
  await nothingLeft(t, [...procs.all], s.ipcRoot);
});

t.test('SIGTERM stops everything', async (t) => {
  const s = await up();
  const procs = tree(s.pid);
  t.ok(procs.workers.length > 0 && procs.gateway && procs.launcher);
  const exit = await stopProcess(s.child, 'SIGTERM');
  t.same(exit, { code: 0, signal: null }, 'up exits 0 on SIGTERM');
  await nothingLeft(t, procs.all, s.ipcRoot);
});

for (const victim of ['gateway', 'launcher'] as const) {
  t.test(`when the ${victim} dies, up stops the rest and exits non-zero`, async (t) => {
    const s = await up();
    const procs = tree(s.pid);
    const pid = procs[victim]!;
    const exited = new Promise<number | null>((r) => s.child.once('exit', (code) => r(code)));
    process.kill(pid, 'SIGKILL');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15000))]);
    t.equal(code, 1, 'up exited with status 1');
    t.match(s.stderr(), new RegExp(`nightfuse up: ${victim} stopped unexpectedly \\(SIGKILL\\); stopping the stack`), 'and said why');
    if (code === 'hung') await stopProcess(s.child, 'SIGKILL');
    await nothingLeft(t, procs.all, s.ipcRoot);
  });
}
