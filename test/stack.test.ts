// The whole single-node stack as real processes: gateway, launcher, worker hosts.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { encodeEngineHandshake, encodeGatewayHeader, MessageType } from '../proto/wire.js';
import { metricValue, post, request, ROOT, startStack, waitFor, type Stack } from './helpers.js';

let stack: Stack;
t.before(async () => {
  stack = await startStack({ gatewayFlags: ['--max_body_bytes=2097152', '--call_timeout_ms=1500'] });
});
t.teardown(async () => {
  await stack?.stop();
});

t.test('Foo calls Bar: the classic example, with Nightcore headers', async (t) => {
  const r = await post(stack.httpPort, '/function/Foo', 'Hello');
  t.equal(r.status, 200);
  t.equal(r.body.toString(), 'From function Bar: Hello, World\n');
  const names = r.rawHeaders.filter((_, i) => i % 2 === 0);
  t.same(names, ['Date', 'Server', 'Connection', 'Content-Type', 'Content-Length'], 'header block as Nightcore writes it');
  t.equal(r.headers.server, 'FaaS/0.1');
  t.match(r.headers.date, /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$/);
  const empty = await post(stack.httpPort, '/function/Bar', '');
  t.equal(empty.body.toString(), ', World\n', 'empty input');
});

t.test('payload sizes around the 960-byte inline limit and far beyond it', async (t) => {
  for (const n of [959, 960, 961, 4096, 100_000, 1 << 20]) {
    const input = randomBytes(n);
    const r = await post(stack.httpPort, '/function/Foo', input);
    t.equal(r.status, 200, `${n} bytes: status`);
    t.ok(r.body.equals(Buffer.concat([Buffer.from('From function Bar: '), input, Buffer.from(', World\n')])), `${n} bytes round-trip byte-exact through a nested call`);
  }
  const blob = await request(stack.httpPort, 'GET', '/function/Blob');
  t.equal(blob.body.length, 65536, 'large output through shm (GET allowed)');
  t.equal(blob.body.subarray(0, 28).toString(), 'abcdefghijklmnopqrstuvwxyzab');
  await waitFor(() => readdirSync(join(stack.ipcRoot, 'shm')).length === 0, 2000, 'shm files removed after calls');
  t.pass('no payload file left behind');
});

t.test('routes and status codes', async (t) => {
  t.equal((await post(stack.httpPort, '/function/Nope', 'x')).status, 404, 'unknown function');
  t.equal((await request(stack.httpPort, 'GET', '/function/Foo')).status, 404, 'GET without allowHttpGet');
  t.equal((await request(stack.httpPort, 'PUT', '/function/Foo', 'x')).status, 404, 'other method');
  t.equal((await post(stack.httpPort, '/other/Foo', 'x')).status, 404, 'other path');
  t.equal((await post(stack.httpPort, '/function/Faulty', 'fail')).status, 500, 'function failure');
  t.equal((await post(stack.httpPort, '/function/Nowhere', 'x')).status, 500, 'function with no worker on any node fails at once');
  const abs = await request(stack.httpPort, 'POST', `http://127.0.0.1:${stack.httpPort}/function/Bar?x=1`, 'Abs');
  t.equal(abs.body.toString(), 'Abs, World\n', 'absolute-form request target');
  const qs = await request(stack.httpPort, 'GET', '/function/Query?b=2&a=x+y&bad=%zz');
  t.equal(qs.body.toString(), '{"a":"x y","b":"2"}', 'qsAsInput');
  t.equal((await request(stack.httpPort, 'GET', '/function/Query')).body.toString(), 'null', 'qsAsInput without a query');
  t.equal((await request(stack.httpPort, 'GET', '/healthz')).status, 200);
});

t.test('nested-call failures come back fast', async (t) => {
  const t0 = Date.now();
  const r = await post(stack.httpPort, '/function/Faulty', 'call:NoSuchFunction:x');
  t.equal(r.status, 500, 'unknown callee fails the caller (Nightcore would hang)');
  const r2 = await post(stack.httpPort, '/function/Faulty', 'call:Crashy:fail');
  t.equal(r2.status, 500, 'failing callee');
  const r3 = await post(stack.httpPort, '/function/Faulty', 'call:Bar:via faulty');
  t.equal(r3.body.toString(), 'via faulty, World\n', 'nested call from another function');
  t.ok(Date.now() - t0 < 3000, 'no hang');
});

t.test('limits: body size (413) and call timeout (504)', async (t) => {
  const big = await post(stack.httpPort, '/function/Bar', Buffer.alloc(3 << 20));
  t.equal(big.status, 413, 'over --max_body_bytes');
  const t0 = Date.now();
  const slow = await post(stack.httpPort, '/function/Faulty', 'sleep:4000');
  t.equal(slow.status, 504, 'over --call_timeout_ms');
  t.ok(Date.now() - t0 < 3500, `timed out after ${Date.now() - t0} ms`);
});

t.test('a worker crashing mid-call fails that call fast; the worker is replaced', async (t) => {
  const before = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
  const restarts0 = metricValue(before, 'nightfuse_function_worker_restarts_total', { function: 'Faulty' }) ?? 0;
  const t0 = Date.now();
  const r = await post(stack.httpPort, '/function/Faulty', 'crash');
  t.equal(r.status, 500, 'crashed call fails');
  t.ok(Date.now() - t0 < 1000, `failed in ${Date.now() - t0} ms`);
  const ok = await post(stack.httpPort, '/function/Faulty', 'after');
  t.equal(ok.body.toString(), 'after', 'next call succeeds');
  await waitFor(async () => {
    const m = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
    return (metricValue(m, 'nightfuse_function_worker_restarts_total', { function: 'Faulty' }) ?? 0) > restarts0 &&
      (metricValue(m, 'nightfuse_function_workers', { function: 'Faulty', state: 'idle' }) ?? 0) >= 1;
  }, 5000, 'restart counted and a worker idle again');
  t.pass('worker restarted');
  // A crash in the callee of a nested call fails the caller's call, not the caller.
  const nested = await post(stack.httpPort, '/function/Faulty', 'call:Crashy:crash');
  t.equal(nested.status, 500, 'callee crashed: the caller sees a failed invoke and fails');
  t.equal((await post(stack.httpPort, '/function/Faulty', 'call:Crashy:ok')).body.toString(), 'ok', 'caller and a new callee worker serve on');
  t.equal((await post(stack.httpPort, '/function/Foo', 'still')).body.toString(), 'From function Bar: still, World\n');
});

t.test('many concurrent calls all get their own answer', async (t) => {
  const inputs = Array.from({ length: 64 }, (_, i) => `req-${i}-${'x'.repeat(i * 37)}`);
  const outs = await Promise.all(inputs.map((s) => post(stack.httpPort, '/function/Foo', s)));
  t.same(outs.map((o) => o.body.toString()), inputs.map((s) => `From function Bar: ${s}, World\n`));
});

t.test('gRPC front end with a grpc-js client', async (t) => {
  const def = protoLoader.loadSync(join(ROOT, 'examples', 'proto', 'greeter.proto'));
  const pkg = grpc.loadPackageDefinition(def) as any;
  const client = new pkg.nightfuse.examples.Greeter(`127.0.0.1:${stack.grpcPort}`, grpc.credentials.createInsecure());
  const call = (m: string, req: object) => new Promise<{ err: grpc.ServiceError | null; res: any }>((r) => client[m](req, (err: grpc.ServiceError | null, res: unknown) => r({ err, res })));
  const a = await call('SayHello', { name: 'Nightfuse' });
  t.equal(a.err, null);
  t.equal(a.res.message, 'Hello, Nightfuse');
  const b = await call('Shout', { name: 'quiet' });
  t.equal(b.res.message, 'QUIET!', 'method id selects the method');
  const raw = new grpc.Client(`127.0.0.1:${stack.grpcPort}`, grpc.credentials.createInsecure());
  const unary = (path: string) => new Promise<grpc.ServiceError | null>((r) => raw.makeUnaryRequest(path, (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), (err) => r(err)));
  t.equal((await unary('/nightfuse.examples.Greeter/Nope'))?.code, grpc.status.NOT_FOUND, 'unknown method');
  t.equal((await unary('/no.Such/Method'))?.code, grpc.status.NOT_FOUND, 'unknown service');
  client.close();
  raw.close();
});

t.test('malformed gRPC framing gets HTTP 400, server keeps serving', async (t) => {
  const session = http2.connect(`http://127.0.0.1:${stack.grpcPort}`);
  const status = (headers: http2.OutgoingHttpHeaders, body: Buffer) => new Promise<number>((resolve, reject) => {
    const s = session.request({ ':method': 'POST', ':path': '/nightfuse.examples.Greeter/SayHello', 'content-type': 'application/grpc', ...headers });
    s.on('response', (h) => resolve(Number(h[':status'])));
    s.on('error', reject);
    s.end(body);
  });
  t.equal(await status({}, Buffer.from([0, 0, 0, 0, 9, 1])), 400, 'length prefix does not match');
  t.equal(await status({}, Buffer.from([1, 0, 0, 0, 0])), 400, 'compressed flag');
  t.equal(await status({}, Buffer.from([0, 0])), 400, 'short prefix (crashes Nightcore)');
  t.equal(await status({ 'content-type': 'application/json' }, Buffer.alloc(0)), 400, 'wrong content-type');
  t.equal(await status({}, Buffer.from([0, 0, 0, 0, 0])), 200, 'empty message is fine');
  session.close();
});

t.test('malformed HTTP and malformed wire messages: the gateway closes the connection, nothing crashes', async (t) => {
  // Our own timer is only a backstop: each case must see the gateway end the connection well before it.
  const BACKSTOP_MS = 5000;
  // `after`: sent once `admitted` holds (the gateway refuses anything pipelined behind a handshake).
  const rawExchange = (port: number, data: Buffer, after?: Buffer, admitted?: () => Promise<boolean>) => new Promise<{ got: string; closedBy: 'gateway' | 'backstop'; ms: number }>((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    let closedBy: 'gateway' | 'backstop' = 'gateway';
    const timer = setTimeout(() => {
      closedBy = 'backstop';
      s.destroy();
    }, BACKSTOP_MS);
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ got, closedBy, ms: Date.now() - t0 });
    });
    s.on('error', () => {});
    s.write(data);
    if (after && admitted) void waitFor(admitted, 3000, 'the fake engine admitted').then(() => s.write(after), () => s.destroy());
  });
  const nodes = async () => Number(/nightfuse_gateway_connected_nodes (\d+)/.exec((await request(stack.httpPort, 'GET', '/metrics')).body.toString())?.[1]);
  const asSecondNode = async () => (await nodes()) === 2;
  const closed = (r: { closedBy: string; ms: number }, what: string) =>
    t.ok(r.closedBy === 'gateway' && r.ms < BACKSTOP_MS, `${what}: the gateway closed the connection (after ${r.ms} ms)`);
  const bad = await rawExchange(stack.httpPort, Buffer.from('GARBAGE GARBAGE\r\n\r\n'));
  t.match(bad.got, /^HTTP\/1\.1 400 Bad Request\r\n/, 'bad HTTP: answered 400');
  closed(bad, 'bad HTTP');
  closed(await rawExchange(stack.enginePort, Buffer.from('0f00000000000000000000000000000000', 'hex')), 'unknown message type before the handshake');
  const negative = encodeGatewayHeader(MessageType.FUNC_CALL_COMPLETE, 1n, 0);
  negative.writeInt32LE(-5, 12);
  closed(await rawExchange(stack.enginePort, encodeEngineHandshake(999, 0), negative, asSecondNode), 'negative payload size');
  // Plausible headers of a type engines never send (DISPATCH; with a 1.7 GB "payload", then a small one): refused, not buffered.
  closed(await rawExchange(stack.enginePort, encodeEngineHandshake(998, 0), Buffer.from('garbage bytes that are no header'), asSecondNode), 'garbage after the handshake');
  closed(await rawExchange(stack.enginePort, encodeEngineHandshake(996, 0), Buffer.concat([encodeGatewayHeader(MessageType.DISPATCH_FUNC_CALL, 1n, 4), Buffer.from('call')]), asSecondNode), 'a DISPATCH from an engine');
  closed(await rawExchange(stack.enginePort, Buffer.concat([encodeEngineHandshake(997, 0), negative])), 'a frame pipelined behind the handshake');
  closed(await rawExchange(stack.enginePort, encodeGatewayHeader(MessageType.FUNC_CALL_COMPLETE, 1n, 0)), 'a result before the handshake');
  await waitFor(async () => (await request(stack.httpPort, 'GET', '/metrics')).body.toString().includes('nightfuse_gateway_connected_nodes 1'), 5000, 'fake engines gone');
  const r = await post(stack.httpPort, '/function/Foo', 'alive');
  t.equal(r.body.toString(), 'From function Bar: alive, World\n', 'gateway still serves');
  t.equal(stack.gateway.exitCode, null, 'gateway process alive');
});

t.test('metrics show per-function counters and the Foo->Bar edge', async (t) => {
  await waitFor(async () => {
    const m = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
    return (metricValue(m, 'nightfuse_edge_calls_total', { caller: 'Foo', callee: 'Bar' }) ?? 0) >= 70;
  }, 5000, 'edge stats reported');
  const m = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
  t.ok((metricValue(m, 'nightfuse_edge_input_bytes_total', { caller: 'Foo', callee: 'Bar' }) ?? 0) > 1 << 20, 'edge input bytes');
  t.ok((metricValue(m, 'nightfuse_edge_rpc_seconds_total', { caller: 'Foo', callee: 'Bar' }) ?? 0) > 0, 'edge round-trip time');
  t.ok((metricValue(m, 'nightfuse_edge_calls_total', { caller: 'Faulty', callee: 'Crashy' }) ?? 0) >= 2, 'Faulty->Crashy edge');
  t.ok((metricValue(m, 'nightfuse_gateway_requests_total', { function: 'Foo', status: '200' }) ?? 0) >= 70, 'gateway request counter');
  t.ok((metricValue(m, 'nightfuse_function_calls_total', { function: 'Bar' }) ?? 0) >= 70, 'launcher function counter');
  t.match(m, /nightfuse_gateway_request_duration_seconds_bucket\{le="0.001",function="Foo",protocol="http"\}/);
});

t.test('gateway restart: the launcher reconnects and calls flow again', async (t) => {
  await stack.restartGateway();
  await waitFor(async () => (await post(stack.httpPort, '/function/Foo', 'again')).status === 200, 10000, 'calls after restart');
  const r = await post(stack.httpPort, '/function/Foo', 'again');
  t.equal(r.body.toString(), 'From function Bar: again, World\n');
  // The control plane re-attaches too: the new gateway gets the launcher's reports.
  await waitFor(async () => {
    const m = (await request(stack.httpPort, 'GET', '/metrics')).body.toString();
    return (metricValue(m, 'nightfuse_edge_calls_total', { caller: 'Foo', callee: 'Bar' }) ?? 0) > 0;
  }, 10000, 'launcher reports reaching the restarted gateway');
  t.pass('control plane re-attached after the gateway restart');
});
