/**
 * `npm run test:containers`: the image, built with deploy/Dockerfile, as a
 * cluster on a real container runtime (podman, as root): one gateway and two
 * launcher containers, each with its own network namespace and /dev/shm, the
 * launchers with `--cap-drop=ALL --cap-add=SYS_PTRACE` and nothing else.
 *
 *   1. Foo -> Bar through the gateway, every answer checked, both nodes serving;
 *   2. Bar merged into Foo by hand (ptrace inside the launcher containers),
 *      in force: admin API, `nightfuse merges` in a container, calls served in process;
 *   3. SIGKILL to one launcher under load: calls keep succeeding on the other;
 *      restarted, it rejoins and its merges are re-applied;
 *   4. SIGTERM under load: a launcher leaves dispatch and drains (no call fails),
 *      then the gateway drains (no call in flight fails), then the last launcher;
 *      every container exits by itself, code 0; nothing is left running.
 *
 * Prints TAP-like lines and ends with "N passed, N failed" (.ci/run adds them up).
 * Not part of `npm test`. The base image and the build's layers are cached by podman.
 */
import { mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { caBuildArgs, Checks, ensureBaseImage, ensurePodman, fooAnswer, fooLoad, httpCall, Podman, sleep, waitFor, type CallRecord } from './containers-lib.js';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');
const IMAGE = 'localhost/nightfuse:test';
const TAG = `nf-ct-${process.pid}`;
const NET = `${TAG}-net`;
const GW = `${TAG}-gateway`;
const L = [`${TAG}-launcher-1`, `${TAG}-launcher-2`];
const ADMIN_TOKEN = `admin-${process.pid}-${Date.now().toString(36)}-0123456789abcdef`;
const CONFIG = '/opt/nightfuse/examples/func_config.json';
const DRAIN_MS = 15000;
/** Manual merges only: Foo -> Bar never gets hot enough to merge by itself (a re-merge after a restart is then the gateway's doing). */
const POLICY = 'defaults:\n  mode: auto\n  minCallsPerSec: 1000000\ntrustGroups:\n  demo: [Foo, Bar]\n';

const c = new Checks();
const p = new Podman();
const tmp = mkdtempSync(join(tmpdir(), 'nf-ct-'));

function metric(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(' ').pop());
  }
  return NaN;
}

async function main(): Promise<void> {
  const why = ensurePodman();
  if (why) {
    c.ok(false, `a container runtime: ${why}`);
    return;
  }
  c.note(`podman: ${p.must(['--version'])}`);

  // ---- the image
  let t0 = Date.now();
  const base = ensureBaseImage(p);
  c.note(`base image ${base === 'cached' ? 'cached' : 'made with debootstrap'} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  t0 = Date.now();
  const build = p.run(['build', '--network=host', '--pull=never', '-f', join(ROOT, 'deploy', 'Dockerfile'), '-t', IMAGE, ...caBuildArgs(), ROOT]);
  c.ok(build.status === 0, `image built (${((Date.now() - t0) / 1000).toFixed(1)} s)`, build.stderr.slice(-3000) + build.stdout.slice(-3000));
  if (build.status !== 0) return;
  const help = p.run(['run', '--rm', IMAGE, 'gateway', '--help']);
  c.ok(help.status === 0 && help.stdout.includes('NIGHTFUSE_HTTP_PORT'), 'the image runs `nightfuse` as its entry point');
  const user = p.run(['run', '--rm', '--entrypoint', 'id', IMAGE, '-u']).stdout.trim();
  c.ok(user === '10001', 'the image runs as a non-root user', user);

  // ---- the cluster
  for (const [name, text] of [['admin-token', ADMIN_TOKEN], ['cluster-token', `cluster-${process.pid}-${Math.random().toString(36).slice(2)}-fedcba9876543210`]]) {
    writeFileSync(join(tmp, name), `${text}\n`);
    chmodSync(join(tmp, name), 0o444); // the containers' user reads it, as from a Secret volume
  }
  writeFileSync(join(tmp, 'merge-policy.yaml'), POLICY);
  chmodSync(tmp, 0o755);
  let subnet = 0;
  for (let tries = 0; tries < 5 && !subnet; tries++) {
    const s = 100 + Math.floor(Math.random() * 150);
    if (p.run(['network', 'create', '--subnet', `10.231.${s}.0/24`, NET]).status === 0) subnet = s;
  }
  c.ok(subnet > 0, `a network of our own (10.231.${subnet}.0/24)`);
  if (!subnet) return;
  const secrets = ['-v', `${tmp}:/run/secrets/nightfuse:ro`, '-e', 'NIGHTFUSE_CLUSTER_TOKEN_FILE=/run/secrets/nightfuse/cluster-token'];
  p.must(['run', '-d', '--name', GW, '--network', NET, '-p', '127.0.0.1::8080', ...secrets,
    '-e', 'NIGHTFUSE_LISTEN_ADDR=0.0.0.0', '-e', `NIGHTFUSE_FUNC_CONFIG_FILE=${CONFIG}`,
    '-e', 'NIGHTFUSE_MERGE_POLICY_FILE=/run/secrets/nightfuse/merge-policy.yaml',
    '-e', 'NIGHTFUSE_ADMIN_TOKEN_FILE=/run/secrets/nightfuse/admin-token', '-e', `NIGHTFUSE_DRAIN_TIMEOUT_MS=${DRAIN_MS}`,
    IMAGE, 'gateway']);
  const gwIp = p.ip(GW, NET);
  const http = p.hostPort(GW, 8080);
  const startLauncher = (i: number) => p.must(['run', '-d', '--name', L[i], '--network', NET, '--cap-drop=ALL', '--cap-add=SYS_PTRACE',
    '-p', '127.0.0.1::10009', ...secrets,
    '-e', `NIGHTFUSE_GATEWAY_ADDR=${gwIp}`, '-e', `NIGHTFUSE_NODE_ID=${i + 1}`, '-e', `NIGHTFUSE_FUNC_CONFIG_FILE=${CONFIG}`,
    '-e', 'NIGHTFUSE_PROBE_PORT=10009', '-e', 'NIGHTFUSE_PROBE_ADDR=0.0.0.0', '-e', `NIGHTFUSE_DRAIN_TIMEOUT_MS=${DRAIN_MS}`,
    IMAGE, 'launcher']);
  L.forEach((_, i) => startLauncher(i));
  const get = (port: number, path: string) => httpCall(port, 'GET', path, '', false, {}, 5000);
  const admin = (method: string, path: string, body = '') => httpCall(http, method, `/admin/v1/${path}`, body, false, { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' }, 60000);
  const probePort = (i: number) => p.hostPort(L[i], 10009);
  const nodesServing = async (n: number) => (await get(http, '/readyz')).body.includes(`ok: ${n} node(s) serving`);
  const ready = await waitFor(() => nodesServing(2), 60000);
  c.ok(ready, 'the gateway is ready with both launchers serving', ready ? '' : (await get(http, '/readyz')).body);
  for (let i = 0; i < 2; i++) {
    const ok = await waitFor(async () => (await get(probePort(i), '/readyz')).status === 200, 30000);
    c.ok(ok, `launcher ${i + 1}: /readyz (attached, workers up)`, p.run(['logs', '--tail', '20', L[i]]).stderr);
  }
  const launcherCaps = p.must(['inspect', '-f', '{{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.Privileged}}', L[0]]);
  c.note(`launcher container: cap-drop/cap-add/privileged = ${launcherCaps}`);

  // ---- 1. Foo -> Bar through the gateway
  const n = 300;
  const answers = await Promise.all(Array.from({ length: n }, async (_, i) => {
    await sleep(i % 30);
    const r = await httpCall(http, 'POST', '/function/Foo', `call-${i}`, false);
    return r.status === 200 && r.body === fooAnswer(`call-${i}`);
  }));
  c.ok(answers.every(Boolean), `${n} calls Foo -> Bar, every answer right`, `${answers.filter((x) => !x).length} wrong`);
  await sleep(1500); // one stats report
  let m = (await get(http, '/metrics')).body;
  const perNode = [1, 2].map((node) => metric(m, 'nightfuse_function_calls_total', { node: String(node), function: 'Foo' }));
  c.ok(perNode.every((x) => x > 0), `both nodes served Foo (${perNode.join(' + ')})`);

  // ---- 2. merge Bar into Foo by hand: ptrace inside the launcher containers
  t0 = Date.now();
  const merge = await admin('POST', 'merges', JSON.stringify({ caller: 'Foo', callee: 'Bar' }));
  c.ok(merge.status === 200, `Bar merged into Foo on both nodes (${Date.now() - t0} ms)`, merge.body.slice(0, 1500));
  const mergedOn = async (node: number) => {
    const r = await admin('GET', 'merges');
    const list = JSON.parse(r.body) as { node: number; caller: string; callee: string; workersMerged: number; workersTotal: number }[];
    const e = list.find((x) => x.node === node && x.caller === 'Foo' && x.callee === 'Bar');
    return Boolean(e && e.workersMerged > 0 && e.workersMerged === e.workersTotal);
  };
  c.ok(await waitFor(async () => (await mergedOn(1)) && (await mergedOn(2)), 10000), 'admin API: in force in every Foo worker of both nodes');
  const cli = p.run(['exec', '-e', `NIGHTFUSE_GATEWAY=http://${gwIp}:8080`, '-e', `NIGHTFUSE_ADMIN_TOKEN=${ADMIN_TOKEN}`, L[0], 'nightfuse', 'merges']);
  c.ok(cli.status === 0 && /Foo/.test(cli.stdout) && /Bar/.test(cli.stdout), '`nightfuse merges` inside a launcher container lists Foo <- Bar', cli.stdout + cli.stderr);
  const before = [1, 2].map((node) => metric(m, 'nightfuse_edge_local_calls_total', { node: String(node), caller: 'Foo', callee: 'Bar' }) || 0);
  const merged = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
    const r = await httpCall(http, 'POST', '/function/Foo', `merged-${i}`, false);
    return r.status === 200 && r.body === fooAnswer(`merged-${i}`);
  }));
  c.ok(merged.every(Boolean), '100 calls while merged, every answer right');
  await sleep(1500);
  m = (await get(http, '/metrics')).body;
  const after = [1, 2].map((node) => metric(m, 'nightfuse_edge_local_calls_total', { node: String(node), caller: 'Foo', callee: 'Bar' }) || 0);
  c.ok(after[0] + after[1] - before[0] - before[1] >= 90, `Foo's calls to Bar served in process (local calls +${after[0] + after[1] - before[0] - before[1]})`);

  // ---- 3. SIGKILL one launcher under load; it restarts and rejoins
  const load1 = fooLoad(http, 4, 'kill');
  await sleep(1500);
  const killedAt = Date.now();
  p.must(['kill', '--signal', 'KILL', L[0]]);
  c.ok(await waitFor(() => nodesServing(1), 10000), 'the gateway notices the killed node');
  const noticedAt = Date.now();
  await sleep(3000);
  const r1 = await load1.stop();
  const during = r1.filter((x) => x.start >= noticedAt);
  const atKill = r1.filter((x) => x.start < noticedAt && x.end >= killedAt && !x.ok);
  c.ok(during.length > 50 && during.every((x) => x.ok), `calls keep succeeding on the other node (${during.length} after the gateway noticed)`, during.filter((x) => !x.ok).slice(0, 5));
  c.note(`calls in flight on the killed node when it died: ${atKill.length} failed (${atKill.slice(0, 3).map((x) => x.detail).join('; ')})`);
  c.ok(r1.filter((x) => x.start < killedAt).every((x) => x.ok || x.end >= killedAt), 'no call failed before the kill');
  t0 = Date.now();
  p.must(['start', L[0]]);
  c.ok(await waitFor(() => nodesServing(2), 60000), `the restarted launcher rejoins (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  // Re-applying manual merges after a reconnect is the gateway's desired state (issue 7).
  c.ok(await waitFor(() => mergedOn(1), 20000), 'its merges are re-applied (Foo <- Bar in force on node 1 again)', (await admin('GET', 'merges')).body.slice(0, 800));

  // ---- 4. SIGTERM under load
  const load2 = fooLoad(http, 6, 'term');
  await sleep(1500);
  const leaveAt = Date.now();
  p.must(['kill', '--signal', 'TERM', L[1]]);
  const l2exit = await waitFor(async () => !(await p.state(L[1])).running, DRAIN_MS + 10000);
  await sleep(1000);
  const r2 = load2.calls.filter((x) => x.start >= leaveAt - 1000);
  c.ok(l2exit && (await p.state(L[1])).exitCode === 0, `a launcher given SIGTERM under load drains and exits by itself, code 0 (${Date.now() - leaveAt} ms)`, await p.state(L[1]));
  c.ok(r2.every((x) => x.ok), `no call failed while it left (${r2.length} calls)`, r2.filter((x) => !x.ok).slice(0, 5));

  const termAt = Date.now();
  p.must(['kill', '--signal', 'TERM', GW]);
  const gwExit = await waitFor(async () => !(await p.state(GW)).running, DRAIN_MS + 10000);
  const r3 = await load2.stop();
  const inFlight = r3.filter((x) => x.start < termAt && x.end >= termAt);
  const later = r3.filter((x) => x.start >= termAt);
  const badLater = later.filter((x) => !x.ok && !(x.status === 0 || x.status === 503));
  const tally = (xs: CallRecord[]) => Object.entries(xs.reduce<Record<string, number>>((a, x) => ((a[x.ok ? 'ok' : x.status || x.detail] = (a[x.ok ? 'ok' : x.status || x.detail] ?? 0) + 1), a), {})).map(([k, v]) => `${k}: ${v}`).join(', ');
  c.note(`calls started after the gateway's SIGTERM: ${tally(later) || 'none'}`);
  c.ok(gwExit && (await p.state(GW)).exitCode === 0, `the gateway given SIGTERM under load drains and exits by itself, code 0 (${Date.now() - termAt} ms)`, await p.state(GW));
  c.ok(inFlight.length > 0 && inFlight.every((x) => x.ok), `every call in flight at the gateway's SIGTERM succeeded (${inFlight.length})`, inFlight.filter((x) => !x.ok).slice(0, 5));
  c.ok(badLater.length === 0, `later calls were refused (503 or no connection), never answered wrong (${later.length} refused)`, badLater.slice(0, 5));
  c.ok(r3.filter((x) => x.start < termAt - 1000).every((x) => x.ok), 'no call failed before');

  p.must(['kill', '--signal', 'TERM', L[0]]);
  const l1exit = await waitFor(async () => !(await p.state(L[0])).running, DRAIN_MS + 10000);
  c.ok(l1exit && (await p.state(L[0])).exitCode === 0, 'the last launcher exits by itself on SIGTERM, code 0', await p.state(L[0]));
  const left = p.run(['ps', '--filter', `name=${TAG}`, '--format', '{{.Names}}']).stdout.trim();
  c.ok(left === '', 'nothing left running', left);
}

function cleanup(): void {
  p.run(['rm', '-f', '-t', '0', GW, ...L]);
  p.run(['network', 'rm', '-f', NET]);
  p.cleanup();
  rmSync(tmp, { recursive: true, force: true });
}

const started = Date.now();
process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});
main().catch((err: Error) => c.ok(false, `the container test ran to its end: ${err.message}`)).finally(() => {
  if (c.failed > 0) for (const name of [GW, ...L]) process.stdout.write(`# --- ${name} log (last 15 lines)\n${p.run(['logs', '--tail', '15', name]).stderr.replace(/^/gm, '# ')}\n`);
  cleanup();
  process.stdout.write(`# container test: ${((Date.now() - started) / 1000).toFixed(1)} s\n${c.passed} passed, ${c.failed} failed\n`);
  process.exit(c.failed > 0 ? 1 : 0);
});
