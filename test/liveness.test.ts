// A node that goes silent is noticed. The launcher runs in its own network
// namespace behind a veth pair created here; the link is cut mid-load: its
// calls in flight fail within about two seconds (not at the 60 s call
// timeout), it leaves dispatch, and it rejoins by itself once the link is back.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { CLI, FIXTURE_CONFIG, stopProcess, waitFor } from './helpers.js';
import { startGatewayProcess, TOKEN } from './adversary.js';

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });

t.test('a silent node is taken out of dispatch in ~2 s and rejoins', async (t) => {
  // Names and addresses unique to this run: parallel runs must not meet.
  const tag = `${process.pid % 10000}${randomBytes(1).toString('hex')}`;
  const ns = `nf${tag}`;
  const host = `nfh${tag}`;
  const peer = `nfp${tag}`;
  const octet = 1 + (process.pid % 250);
  const gwAddr = `10.${200 + (process.pid % 50)}.${octet}.1`;
  const nodeAddr = gwAddr.replace(/\.1$/, '.2');
  ip('netns', 'add', ns);
  t.teardown(() => {
    try { ip('link', 'del', host); } catch { /* gone with the namespace */ }
    ip('netns', 'del', ns);
  });
  ip('link', 'add', host, 'type', 'veth', 'peer', 'name', peer);
  ip('link', 'set', peer, 'netns', ns);
  ip('addr', 'add', `${gwAddr}/30`, 'dev', host);
  ip('link', 'set', host, 'up');
  ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${nodeAddr}/30`, 'dev', peer);
  ip('netns', 'exec', ns, 'ip', 'link', 'set', peer, 'up');
  ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');

  const gw = await startGatewayProcess([`--listen_addr=${gwAddr}`, '--node_silence_ms=2000', '--call_timeout_ms=60000'], { NIGHTFUSE_CLUSTER_TOKEN: TOKEN });
  t.teardown(() => gw.stop());
  const root = `/dev/shm/nightfuse-test-live-${tag}`;
  const launcher = spawn('ip', ['netns', 'exec', ns, process.execPath, CLI, 'launcher', `--gateway_addr=${gwAddr}`, `--gateway_port=${gw.engine}`,
    `--control_port=${gw.control}`, '--node_id=5', `--root_path_for_ipc=${root}`, `--func_config_file=${FIXTURE_CONFIG}`],
  { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NIGHTFUSE_CLUSTER_TOKEN: TOKEN } });
  let lnErr = '';
  launcher.stderr!.on('data', (d: Buffer) => { lnErr = (lnErr + d.toString()).slice(-20000); });
  t.teardown(() => stopProcess(launcher));
  const call = (body: string) => fetch(`http://${gwAddr}:${gw.http}/function/Foo`, { method: 'POST', body }).then(async (r) => ({ status: r.status, body: await r.text() }));
  const nodes = async () => Number(/^nightfuse_gateway_connected_nodes (\d+)/m.exec(await (await fetch(`http://${gwAddr}:${gw.http}/metrics`)).text())?.[1]);
  await waitFor(async () => (await nodes()) === 1 && (await call('x')).status === 200, 20000, 'the namespaced launcher serves');

  // Calls in flight when the link goes: a slow-ish stream of them.
  let stop = false;
  const results: { status: number; ms: number; at: number }[] = [];
  const lanes = Array.from({ length: 4 }, async () => {
    while (!stop) {
      const started = Date.now();
      const r = await call('live').catch(() => ({ status: 0, body: '' }));
      results.push({ status: r.status, ms: Date.now() - started, at: started });
      if (r.status !== 200) await new Promise((res) => setTimeout(res, 50));
    }
  });
  await new Promise((r) => setTimeout(r, 500));
  const cutAt = Date.now();
  ip('link', 'set', host, 'down');
  await waitFor(async () => (await nodes()) === 0, 6000, 'the node leaves the view');
  const goneAfter = Date.now() - cutAt;
  t.ok(goneAfter < 4000, `out of dispatch ${goneAfter} ms after the cut`);
  await new Promise((r) => setTimeout(r, 1000));
  const hung = results.filter((r) => r.at < cutAt + 200 && r.at + r.ms > cutAt && r.status !== 200);
  t.ok(results.filter((r) => r.at > cutAt + goneAfter).every((r) => r.status === 500 && r.ms < 1000), 'calls while it is out fail at once');
  t.ok(hung.every((r) => r.ms < 4500), `calls in flight at the cut failed within ${Math.max(0, ...hung.map((r) => r.ms))} ms (timeout 60000)`);
  const failedMeanwhile = results.filter((r) => r.status !== 200).length;
  t.ok(failedMeanwhile > 0, 'the cut was real');

  ip('link', 'set', host, 'up');
  const upAt = Date.now();
  await waitFor(async () => (await nodes()) === 1, 20000, 'the node rejoins by itself');
  await waitFor(async () => (await call('back')).status === 200, 5000, 'and serves');
  t.pass(`rejoined ${Date.now() - upAt} ms after the link came back`);
  stop = true;
  await Promise.all(lanes);
  const r = await call('after');
  t.equal(r.body, 'From function Bar: after, World\n');
  t.match(lnErr, /reconnect/, 'the launcher said what it did');
});
