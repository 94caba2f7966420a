// `nightfuse up` twice with the same state folder: the admin token is kept in a 0600 state file
// and reused, so an exported token and the CLI keep working across restarts; hints and console link.
import t from 'tap';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { post, startProcess, stopProcess } from './helpers.js';
import { isolatedState, runCli } from './cli-helpers.js';

const state = isolatedState();
t.teardown(state.cleanup);
const stateFile = join(state.env.XDG_STATE_HOME!, 'nightfuse', 'up.json');

async function up(tag: string, env: NodeJS.ProcessEnv = {}) {
  const p = await startProcess(['up', '--http_port=0', '--grpc_port=0', '--engine_conn_port=0', '--control_port=0',
    `--root_path_for_ipc=/dev/shm/nightfuse-test-up-${process.pid}-${tag}`], /Stop with Ctrl-C\.\n/, 60000, { ...state.env, ...env });
  const out = p.match.input;
  const http = /^nightfuse up: http=(\S+) /m.exec(out)![1];
  const token = /^Console: {5}http:\/\/\S+\/ui\/#token=(\S+)$/m.exec(out)![1];
  return { ...p, out, http: `http://${http}`, token };
}

t.test('the token survives a restart through the state file', async (t) => {
  const first = await up('a');
  t.match(first.out, new RegExp(`^Admin token: new, kept in ${stateFile.replace(/[.]/g, '\\.')}$`, 'm'), 'state file path printed');
  t.match(first.out, new RegExp(`^Console: {5}${first.http.replace(/[.]/g, '\\.')}/ui/#token=${first.token}$`, 'm'), 'console link with the token in the fragment');
  t.match(first.out, /^ {2}npx nightfuse load Foo -d 20\s+# /m, 'the load hint names the entry from the config');
  t.match(first.out, /rules\[0\] \(Foo -> Bar\): Bar may be merged into Foo's workers/);
  t.equal(statSync(stateFile).mode & 0o777, 0o600, 'state file is 0600');
  t.match(JSON.parse(readFileSync(stateFile, 'utf8')), { adminToken: first.token, gateway: first.http });
  t.notMatch(readFileSync(`/proc/${first.child.pid}/cmdline`, 'utf8'), first.token, 'token not on the command line');
  // The CLI finds gateway and token in the state file: nothing exported.
  const st = await runCli(['status', '--json'], state.env);
  t.equal(st.code, 0, st.stderr);
  t.ok(JSON.parse(st.stdout).functions.some((f: any) => f.name === 'Foo'));
  // …but never sends that token to another gateway.
  const other = await runCli(['status', '--gateway', 'http://127.0.0.1:1'], state.env);
  t.equal(other.code, 2);
  t.match(other.stderr, /no admin token for http:\/\/127\.0\.0\.1:1/);
  await stopProcess(first.child, 'SIGINT');

  const second = await up('b', { NIGHTFUSE_LOG_FORMAT: 'pretty' });
  t.equal(second.token, first.token, 'same token after the restart');
  t.match(second.out, /^Admin token: reused from /m);
  const exported = await runCli(['merges', '--gateway', second.http], { ...state.env, NIGHTFUSE_ADMIN_TOKEN: first.token });
  t.equal(exported.code, 0, `an exported NIGHTFUSE_ADMIN_TOKEN still works: ${exported.stderr}`);
  t.equal((await post(Number(second.http.split(':').pop()), '/function/Foo', 'x')).status, 200);
  // Logs came through up whole, in the format asked for.
  const logs = second.stderr();
  t.match(logs, /INFO.*launcher: launcher ready/, 'human-readable logs');
  t.notMatch(logs, /^\{"level"/m, 'no JSON lines');
  await stopProcess(second.child, 'SIGINT');
});
