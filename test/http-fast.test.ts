// The HTTP fast path (gateway/http-fast.ts) against node:http's path: the same
// bytes, bodies over many reads, hand-over to node:http mid-connection with
// answers still owed, half-close, and clients leaving with calls in flight.
import t from 'tap';
import { parseAnswers, RawPeer, sleep } from './hostile-peers.js';
import { post, startStack, type Stack } from './helpers.js';

let stack: Stack;
t.before(async () => {
  stack = await startStack();
});
t.teardown(async () => {
  await stack?.stop();
});

const req = (target: string, body: string | Buffer, extra = '') => Buffer.concat([
  Buffer.from(`POST ${target} HTTP/1.1\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`, 'latin1'),
  Buffer.isBuffer(body) ? body : Buffer.from(body),
]);
const noDate = (b: Buffer) => b.toString('latin1').replace(/^Date: .*$/m, 'Date: -');

async function answers(p: RawPeer, n: number, ms = 10000) {
  await p.until((b) => parseAnswers(b).answers.length >= n, ms);
  return parseAnswers(p.received).answers;
}

t.test('a fast answer is byte for byte what node:http answers', async (t) => {
  const fast = new RawPeer(stack.httpPort);
  const slow = new RawPeer(stack.httpPort);
  for (const [what, body] of [['short', 'Hello'], ['empty', ''], ['inline limit', 'i'.repeat(952)], ['shared memory', 's'.repeat(70000)]] as const) {
    const n = parseAnswers(fast.received).answers.length;
    fast.write(req('/function/Bar', body));
    // absolute-form: the same call, taken by node:http (the fast path reads origin-form only)
    slow.write(req(`http://gw/function/Bar`, body));
    const [a, b] = await Promise.all([answers(fast, n + 1), answers(slow, n + 1)]);
    t.equal(noDate(a[n].raw), noDate(b[n].raw), `${what}: same status line, header block and body`);
  }
  fast.destroy();
  slow.destroy();
});

t.test('a body over many reads, with the next request in the same read as its end', async (t) => {
  const p = new RawPeer(stack.httpPort);
  const body = Buffer.alloc(200_000, 'b');
  const all = Buffer.concat([req('/function/Bar', body), req('/function/Bar', 'next')]);
  const cut = all.length - 30; // the tail holds the end of the body and the whole second request
  for (let off = 0; off < cut; off += 7001) {
    p.write(all.subarray(off, Math.min(cut, off + 7001)));
    await sleep(1);
  }
  p.write(all.subarray(cut));
  const got = await answers(p, 2);
  t.equal(got[0].body.length, body.length + ', World\n'.length, 'the big body whole');
  t.ok(got[0].body.subarray(0, body.length).equals(body));
  t.equal(got[1].body.toString(), 'next, World\n', 'then the pipelined one');
  p.destroy();
});

t.test('hand-over to node:http waits for the answers the fast path owes', async (t) => {
  const p = new RawPeer(stack.httpPort);
  p.write(Buffer.concat([
    req('/function/Faulty', 'sleep:300'), req('/function/Bar', 'a'),
    Buffer.from('GET /healthz HTTP/1.1\r\n\r\n'), // node:http's from here on
    req('/function/Bar', 'b'), req('/function/Nope', 'c'), req('/function/Bar', 'd', 'Connection: close\r\n'),
  ]));
  t.ok(await p.closedWithin(10000), 'closed after the Connection: close answer');
  t.same(parseAnswers(p.received).answers.map((a) => [a.status, a.body.toString()]),
    [[200, 'sleep:300'], [200, 'a, World\n'], [200, 'ok\n'], [200, 'b, World\n'], [404, ''], [200, 'd, World\n']], 'in order, each once');
});

t.test('a client that half-closes gets every answer owed, then the close', async (t) => {
  const p = new RawPeer(stack.httpPort);
  p.write(Buffer.concat([req('/function/Faulty', 'sleep:200'), req('/function/Bar', 'x'), req('/function/Bar', 'y')]));
  p.socket.end();
  t.ok(await p.closedWithin(10000), 'closed');
  t.same(parseAnswers(p.received).answers.map((a) => a.body.toString()), ['sleep:200', 'x, World\n', 'y, World\n']);
});

t.test('clients leaving with calls in flight leave the gateway serving', async (t) => {
  for (let i = 0; i < 20; i++) {
    const p = new RawPeer(stack.httpPort);
    p.write(Buffer.concat([req('/function/Faulty', 'sleep:50'), req('/function/Bar', `gone${i}`)]));
    if (i % 2) p.write(req('/function/Bar', 'half a body').subarray(0, 45));
    p.destroy();
  }
  await sleep(200);
  t.equal((await post(stack.httpPort, '/function/Bar', 'still')).body.toString(), 'still, World\n');
});

t.test('in-process: which requests the fast path takes and which it gives to node:http', async (t) => {
  const { pino } = await import('pino');
  const { loadFuncConfig } = await import('../common/func-config.js');
  const { startGateway } = await import('../gateway/main.js');
  const { fastPathOf } = await import('../gateway/http-fast.js');
  const { FIXTURE_CONFIG } = await import('./helpers.js');
  const { MessageType } = await import('../proto/wire.js');
  const log = pino({ level: 'silent' });
  const gw = await startGateway({
    config: loadFuncConfig(FIXTURE_CONFIG), listenAddr: '127.0.0.1', httpPort: 0, grpcPort: 0, engineConnPort: 0, controlPort: -1,
    maxRunningRequests: 0, lbPerFnRoundRobin: false, lbPickLeastLoad: false, maxBodyBytes: 1 << 20, callTimeoutMs: 5000, log,
  });
  t.teardown(() => gw.stop());
  // a node in this process that echoes its input
  let handle: ReturnType<typeof gw.engines.attachLocal> | undefined;
  handle = gw.engines.attachLocal(1, 0, 'cc'.repeat(8), (id, input) => {
    setImmediate(() => handle!.result({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: id, value: 1, payload: Buffer.concat([Buffer.from('echo:'), input]) }));
  }, () => {});
  const fp = fastPathOf(gw.http)!;
  t.ok(fp, 'the front end has a fast path');
  const port = gw.ports.http;
  const before = { ...fp.stats };
  t.equal((await post(port, '/function/Bar', 'x')).body.toString(), 'echo:x');
  t.equal(fp.stats.requests - before.requests, 1, 'a plain call: the fast path');
  for (const [target, extra] of [['/function/Bar?q=1', ''], ['/function/Bar', 'Expect: 100-continue\r\n'], ['/function/Bar', 'Transfer-Encoding: chunked\r\n'],
    ['/function/Query', ''], ['/function/Nope', ''], ['/healthz', '']] as const) {
    const p = new RawPeer(port);
    const h0 = fp.stats.handedOff;
    const r0 = fp.stats.requests;
    if (extra.startsWith('Transfer')) p.write(`POST ${target} HTTP/1.1\r\n${extra}\r\n1\r\nz\r\n0\r\n\r\n`);
    else p.write(req(target, 'z', extra));
    t.ok(await p.until((b) => /echo:|404 Not Found|\r\n\r\nok\n/.test(b.toString('latin1')), 5000), `${target}: answered`);
    t.equal(fp.stats.handedOff - h0, 1, `${target} ${extra.trim()}: handed to node:http`);
    t.equal(fp.stats.requests - r0, 0, '…not served by the fast path');
    p.destroy();
  }
  handle.detach('test over');
});
