/**
 * Probes and SIGTERM drains as an orchestrator sees them: real gateway and
 * launcher processes, a slow call in flight when the signal comes.
 */
import t from 'tap';
import http from 'node:http';
import { freePort, post, request, startStack, type Stack, waitFor } from './helpers.js';

/** A GET on a fresh connection (what a kubelet does), so closed listeners show. */
function probe(port: number, path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', reject);
    req.end();
  });
}

const exited = (s: Stack, which: 'gateway' | 'launcher') =>
  new Promise<number | null>((r) => {
    const c = s[which];
    if (c.exitCode !== null) return r(c.exitCode);
    c.once('exit', (code) => r(code));
  });

t.test('launcher: probe port, and SIGTERM lets the call in flight finish', async (t) => {
  const probePort = await freePort();
  const stack = await startStack({ launcherFlags: [`--probe_port=${probePort}`, '--drain_timeout_ms=10000'] });
  t.teardown(() => stack.stop());

  t.same(await probe(probePort, '/healthz'), { status: 200, body: 'ok\n' });
  await waitFor(async () => (await probe(probePort, '/readyz')).status === 200, 10000, 'launcher ready');
  t.match((await probe(probePort, '/readyz')).body, /^ok: attached, workers up/);
  t.equal((await probe(probePort, '/readyz', 'POST')).status, 405, 'probes are GET only');
  t.equal((await probe(probePort, '/function/Foo')).status, 404, 'nothing else is served there');
  t.equal((await probe(stack.httpPort, '/readyz')).status, 200, 'gateway ready: a node serves');
  t.match((await probe(stack.httpPort, '/readyz')).body, /1 node\(s\) serving/);

  const slow = post(stack.httpPort, '/function/Faulty', 'sleep:1500');
  await new Promise((r) => setTimeout(r, 300));
  const gone = exited(stack, 'launcher');
  stack.launcher.kill('SIGTERM');
  await waitFor(async () => (await probe(probePort, '/readyz')).status === 503, 1000, 'launcher not ready while draining');
  t.match((await probe(probePort, '/readyz')).body, /not ready: draining/);
  t.equal((await probe(probePort, '/healthz')).status, 200, 'alive while draining');
  const r = await slow;
  t.equal(r.status, 200, 'the call in flight at SIGTERM succeeded');
  t.equal(r.body.toString(), 'sleep:1500');
  t.equal(await gone, 0, 'the launcher exited by itself, code 0');
  await waitFor(async () => (await probe(stack.httpPort, '/readyz')).status === 503, 5000, 'gateway without nodes is not ready');
  t.match((await probe(stack.httpPort, '/readyz')).body, /not ready: no node connected/);
  t.equal((await probe(stack.httpPort, '/healthz')).status, 200, 'but alive');
});

t.test('gateway: SIGTERM refuses new calls and lets the calls in flight finish', async (t) => {
  const stack = await startStack({ gatewayFlags: ['--drain_timeout_ms=10000'] });
  t.teardown(() => stack.stop());
  const kept = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => kept.destroy());
  const onKept = (path: string, body: string) => new Promise<{ status: number; body: string; connection?: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: stack.httpPort, path, method: 'POST', agent: kept }, (res) => {
      let b = '';
      res.on('data', (c: Buffer) => (b += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b, connection: res.headers.connection }));
    });
    req.on('error', reject);
    req.end(body);
  });
  t.equal((await onKept('/function/Foo', 'Hi')).status, 200, 'a kept-alive connection is open');

  // Calls in flight: one on the kept-alive connection, two on others.
  const slowKept = onKept('/function/Faulty', 'sleep:1500');
  const slow = post(stack.httpPort, '/function/Faulty', 'sleep:1200');
  const longer = post(stack.httpPort, '/function/Faulty', 'sleep:3500'); // keeps the drain going for the late call below
  await new Promise((r) => setTimeout(r, 300));
  const gone = exited(stack, 'gateway');
  stack.gateway.kill('SIGTERM');
  await waitFor(async () => {
    try {
      await probe(stack.httpPort, '/healthz');
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
    }
  }, 1000, 'the listener closed');
  const [r1, r2] = await Promise.all([slowKept, slow]);
  t.same([r1.status, r1.body], [200, 'sleep:1500'], 'the calls in flight at SIGTERM succeeded');
  t.same([r2.status, r2.body.toString()], [200, 'sleep:1200']);
  const late = await onKept('/function/Foo', 'Hi');
  t.equal(late.status, 503, 'a new call on a kept-alive connection is refused');
  t.equal(late.connection, 'close', '…and that connection closes');
  const r3 = await longer;
  t.same([r3.status, r3.body.toString()], [200, 'sleep:3500'], 'the longest call in flight succeeded too');
  t.equal(await gone, 0, 'the gateway exited by itself, code 0');
  await t.rejects(request(stack.httpPort, 'GET', '/healthz', undefined, 2000), 'nothing listens any more');
});
