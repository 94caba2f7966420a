// Protocol edges of the front ends, against the gateway with engines played
// by raw peers: gRPC status codes for failure, no node, size and time limits;
// HTTP Expect: 100-continue, pipelining and Connection: close, byte by byte.
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import net from 'node:net';
import { parseFuncConfig } from '../common/func-config.js';
import type { RunningGateway } from '../gateway/main.js';
import { unpackCallId } from '../proto/wire.js';
import { waitFor } from './helpers.js';
import { inProcessGateway, RawEngine } from './raw-engine.js';

const config = parseFuncConfig(JSON.stringify([
  { funcName: 'Echo', funcId: 1 },
  { funcName: 'grpc:t.Svc', funcId: 2, grpcMethods: ['First', 'Second'] },
]));
const LIMIT = 1024;

async function setup(t: Test, opts: { engine?: boolean; callTimeoutMs?: number } = {}) {
  const gw = await inProcessGateway(config, { maxBodyBytes: LIMIT, callTimeoutMs: opts.callTimeoutMs ?? 10000 });
  t.teardown(() => gw.stop());
  let engine: RawEngine | undefined;
  if (opts.engine !== false) {
    engine = new RawEngine(gw.ports.engine, 1);
    t.teardown(() => engine!.close());
    await waitFor(() => gw.engines.nodes.size === 1, 2000, 'node up');
  }
  const client = new grpc.Client(`127.0.0.1:${gw.ports.grpc}`, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const unary = (method: string, msg: Buffer) => new Promise<{ err: grpc.ServiceError | null; res?: Buffer }>((resolve) =>
    client.makeUnaryRequest(`/t.Svc/${method}`, (x: Buffer) => x, (x: Buffer) => x, msg, (err, res) => resolve({ err, res })));
  return { gw, engine, unary };
}

t.test('gRPC: OK with the method id; UNKNOWN for a failed call and for no node', async (t) => {
  const { engine, unary } = await setup(t);
  const ok = await unary('Second', Buffer.from('ping'));
  t.equal(ok.err, null);
  t.equal(ok.res?.toString(), 'n1:ping', 'message bytes in, output bytes out');
  t.equal(unpackCallId(engine!.received[0].fullCallId).methodId, 1, 'method id = index in grpcMethods');
  engine!.hold = true;
  const failing = unary('First', Buffer.from('x'));
  await waitFor(() => engine!.received.length === 2, 2000, 'dispatched');
  engine!.fail(engine!.received[1]);
  const failed = await failing;
  t.equal(failed.err?.code, grpc.status.UNKNOWN, 'FUNC_CALL_FAILED -> UNKNOWN (2)');
  t.equal(failed.err?.details, 'function failed or no node available');

  const lone = await setup(t, { engine: false });
  const none = await lone.unary('First', Buffer.from('x'));
  t.equal(none.err?.code, grpc.status.UNKNOWN, 'no node connected -> UNKNOWN (2)');
});

t.test('gRPC: RESOURCE_EXHAUSTED over --max_body_bytes, DEADLINE_EXCEEDED over --call_timeout_ms', async (t) => {
  const { engine, unary } = await setup(t, { callTimeoutMs: 300 });
  const atLimit = await unary('First', Buffer.alloc(LIMIT, 'a'));
  t.equal(atLimit.err, null, 'a message of exactly the limit passes');
  const big = await unary('First', Buffer.alloc(LIMIT + 1, 'a'));
  t.equal(big.err?.code, grpc.status.RESOURCE_EXHAUSTED, 'one byte over -> RESOURCE_EXHAUSTED (8)');
  t.equal(engine!.received.length, 1, 'the oversized message never reached an engine');
  engine!.hold = true;
  const t0 = Date.now();
  const slow = await unary('First', Buffer.from('slow'));
  t.equal(slow.err?.code, grpc.status.DEADLINE_EXCEEDED, 'held past the timeout -> DEADLINE_EXCEEDED (4)');
  t.ok(Date.now() - t0 < 5000, `answered after ${Date.now() - t0} ms`);
});

/** Responses read off a raw connection: status, headers, body (Content-Length framed). */
function parseResponses(raw: Buffer): { status: number; headers: Record<string, string>; body: string }[] {
  const out = [];
  let off = 0;
  while (off < raw.length) {
    const end = raw.indexOf('\r\n\r\n', off);
    if (end < 0) break;
    const [line, ...hs] = raw.subarray(off, end).toString('latin1').split('\r\n');
    const headers = Object.fromEntries(hs.map((h) => [h.slice(0, h.indexOf(':')).toLowerCase(), h.slice(h.indexOf(':') + 1).trim()]));
    const len = Number(headers['content-length'] ?? 0);
    out.push({ status: Number(line.split(' ')[1]), headers, body: raw.subarray(end + 4, end + 4 + len).toString('latin1') });
    off = end + 4 + len;
  }
  return out;
}

function rawConn(t: Test, gw: RunningGateway) {
  const s = net.connect(gw.ports.http, '127.0.0.1');
  let buf = Buffer.alloc(0);
  let ended = false;
  s.on('data', (d) => (buf = Buffer.concat([buf, d])));
  s.on('end', () => (ended = true));
  s.on('error', () => {});
  t.teardown(() => s.destroy());
  return { s, data: () => buf, ended: () => ended };
}

const req = (body: string, extra = '') => `POST /function/Echo HTTP/1.1\r\nHost: gw\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;

t.test('HTTP Expect: 100-continue is answered before the body is sent', async (t) => {
  const { gw } = await setup(t);
  const c = rawConn(t, gw);
  c.s.write('POST /function/Echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  await waitFor(() => c.data().toString().startsWith('HTTP/1.1 100 Continue\r\n\r\n'), 3000, '100 Continue');
  c.s.write('hello');
  await waitFor(() => parseResponses(c.data()).length === 2, 3000, 'the final response');
  const [cont, final] = parseResponses(c.data());
  t.equal(cont.status, 100);
  t.match(final, { status: 200, body: 'n1:hello' }, 'the call ran with the body sent after 100 Continue');

  // Over the limit: refused without the body ever being sent.
  const over = rawConn(t, gw);
  over.s.write(`POST /function/Echo HTTP/1.1\r\nHost: gw\r\nContent-Length: ${LIMIT + 1}\r\nExpect: 100-continue\r\n\r\n`);
  await waitFor(() => parseResponses(over.data()).some((r) => r.status === 413), 3000, '413');
  t.pass('413 for a declared body over --max_body_bytes, body never sent');
});

t.test('HTTP pipelining: three requests in one write, answered in order though completed in reverse', async (t) => {
  const { gw, engine } = await setup(t);
  engine!.hold = true;
  const c = rawConn(t, gw);
  c.s.write(req('p1') + req('p2') + req('p3'));
  await waitFor(() => engine!.received.length === 3, 3000, 'all three dispatched');
  for (const m of [...engine!.received].reverse()) engine!.complete(m);
  await waitFor(() => parseResponses(c.data()).length === 3, 3000, 'three responses');
  t.same(parseResponses(c.data()).map((r) => [r.status, r.body]), [[200, 'n1:p1'], [200, 'n1:p2'], [200, 'n1:p3']], 'responses in request order');
  t.notOk(c.ended(), 'keep-alive: the connection stays open');
});

t.test('HTTP Connection: close is honoured', async (t) => {
  const { gw } = await setup(t);
  const c = rawConn(t, gw);
  c.s.write(req('bye', 'Connection: close\r\n'));
  await waitFor(() => c.ended(), 3000, 'the gateway closed the connection');
  t.match(parseResponses(c.data()), [{ status: 200, body: 'n1:bye', headers: { connection: 'close' } }], 'answered, saying close');
});
