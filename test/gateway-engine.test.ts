// The gateway in-process, with engines played by raw TCP peers speaking the wire protocol.
import t from 'tap';
import net from 'node:net';
import { pino } from 'pino';
import { parseFuncConfig } from '../common/func-config.js';
import { startGateway, type RunningGateway } from '../gateway/main.js';
import { encodeEngineHandshake, encodeGatewayMessage, GatewayFrameReader, type GatewayMessage, MessageType, unpackCallId } from '../proto/wire.js';
import { post, waitFor } from './helpers.js';

const config = parseFuncConfig(JSON.stringify([
  { funcName: 'Echo', funcId: 1 },
  { funcName: 'Other', funcId: 2 },
]));

async function gateway(opts: Partial<{ maxRunningRequests: number; lbPerFnRoundRobin: boolean; lbPickLeastLoad: boolean; callTimeoutMs: number }> = {}): Promise<RunningGateway> {
  return startGateway({
    config, listenAddr: '127.0.0.1', httpPort: 0, grpcPort: 0, engineConnPort: 0, controlPort: -1,
    maxRunningRequests: opts.maxRunningRequests ?? 0, lbPerFnRoundRobin: opts.lbPerFnRoundRobin ?? false,
    lbPickLeastLoad: opts.lbPickLeastLoad ?? false, maxBodyBytes: 1 << 20, callTimeoutMs: opts.callTimeoutMs ?? 10000,
    log: pino({ level: 'silent' }),
  });
}

/** A fake engine: connects, handshakes, records DISPATCHes; answers with `respond` unless held. */
class RawEngine {
  readonly socket: net.Socket;
  readonly received: GatewayMessage[] = [];
  private readonly reader = new GatewayFrameReader();
  hold = false;
  constructor(port: number, readonly nodeId: number, connId = 0, private readonly respond = (m: GatewayMessage) => Buffer.concat([Buffer.from(`n${nodeId}:`), m.payload])) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.write(encodeEngineHandshake(nodeId, connId));
    this.socket.on('data', (d) => {
      for (const m of this.reader.feed(d)) {
        this.received.push(m);
        if (!this.hold) this.complete(m);
      }
    });
    this.socket.on('error', () => {});
  }
  complete(m: GatewayMessage, via: net.Socket = this.socket): void {
    via.write(encodeGatewayMessage({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: m.fullCallId, value: 42, payload: this.respond(m) }));
  }
  fail(m: GatewayMessage): void {
    this.socket.write(encodeGatewayMessage({ type: MessageType.FUNC_CALL_FAILED, fullCallId: m.fullCallId, value: 0, payload: Buffer.alloc(0) }));
  }
  close(): void {
    this.socket.destroy();
  }
}

t.test('no node: 500; DISPATCH wire format; COMPLETE and FAILED', async (t) => {
  const gw = await gateway();
  t.teardown(() => gw.stop());
  t.equal((await post(gw.ports.http, '/function/Echo', 'x')).status, 500, 'no node connected');
  const e = new RawEngine(gw.ports.engine, 7);
  t.teardown(() => e.close());
  await waitFor(() => gw.engines.nodes.size === 1, 2000, 'node up');
  const r = await post(gw.ports.http, '/function/Echo', 'hello');
  t.equal(r.status, 200);
  t.equal(r.body.toString(), 'n7:hello');
  const d = e.received[0];
  t.equal(d.type, MessageType.DISPATCH_FUNC_CALL);
  const { callId, ...rest } = unpackCallId(d.fullCallId);
  t.same(rest, { funcId: 1, methodId: 0, clientId: 0 }, 'func id, method 0, client 0');
  t.ok(callId >= 0 && callId <= 0xffffffff, 'a 32-bit call id (random: not guessable by other engines)');
  e.hold = true;
  const p = post(gw.ports.http, '/function/Other', 'will fail');
  await waitFor(() => e.received.length === 2, 2000, 'second dispatch');
  e.fail(e.received[1]);
  t.equal((await p).status, 500, 'FAILED -> 500');
});

t.test('a result may come back on another connection of the same node', async (t) => {
  const gw = await gateway();
  t.teardown(() => gw.stop());
  const a = new RawEngine(gw.ports.engine, 3, 0);
  const b = new RawEngine(gw.ports.engine, 3, 1);
  t.teardown(() => { a.close(); b.close(); });
  await waitFor(() => gw.engines.nodes.get(3)?.conns.length === 2, 2000, 'two conns');
  a.hold = b.hold = true;
  const p = post(gw.ports.http, '/function/Echo', 'cross');
  await waitFor(() => a.received.length + b.received.length === 1, 2000, 'dispatched');
  const m = a.received[0] ?? b.received[0];
  const other = a.received.length ? b : a;
  other.complete(m);
  t.equal((await p).body.toString(), `n3:cross`);
});

t.test('a node that disconnects fails its in-flight calls at once', async (t) => {
  const gw = await gateway({ callTimeoutMs: 0 });
  t.teardown(() => gw.stop());
  const e = new RawEngine(gw.ports.engine, 1);
  e.hold = true;
  await waitFor(() => gw.engines.nodes.size === 1, 2000, 'node up');
  const p = post(gw.ports.http, '/function/Echo', 'lost');
  await waitFor(() => e.received.length === 1, 2000, 'dispatched');
  const t0 = Date.now();
  e.close();
  t.equal((await p).status, 500, 'failed, not hung (Nightcore would hang)');
  t.ok(Date.now() - t0 < 1000);
  t.equal(gw.engines.nodes.size, 0, 'node removed');
});

t.test('round robin per function, least load, random', async (t) => {
  const rr = await gateway({ lbPerFnRoundRobin: true });
  t.teardown(() => rr.stop());
  const engines = [new RawEngine(rr.ports.engine, 10), new RawEngine(rr.ports.engine, 11), new RawEngine(rr.ports.engine, 12)];
  t.teardown(() => engines.forEach((e) => e.close()));
  await waitFor(() => rr.engines.nodes.size === 3, 2000, 'three nodes');
  const seq: string[] = [];
  for (let i = 0; i < 6; i++) seq.push((await post(rr.ports.http, '/function/Echo', '')).body.toString());
  t.same(seq, ['n10:', 'n11:', 'n12:', 'n10:', 'n11:', 'n12:'], 'round robin in connection order');
  t.equal((await post(rr.ports.http, '/function/Other', '')).body.toString(), 'n10:', 'separate cursor per function');

  const ll = await gateway({ lbPickLeastLoad: true });
  t.teardown(() => ll.stop());
  const busy = new RawEngine(ll.ports.engine, 20);
  await waitFor(() => ll.engines.nodes.size === 1, 2000, 'first node');
  const free = new RawEngine(ll.ports.engine, 21);
  t.teardown(() => { busy.close(); free.close(); });
  await waitFor(() => ll.engines.nodes.size === 2, 2000, 'second node');
  busy.hold = true;
  const held = post(ll.ports.http, '/function/Echo', 'held'); // tie -> earliest node (20), which holds it
  await waitFor(() => busy.received.length === 1, 2000, 'first call on node 20');
  for (let i = 0; i < 3; i++) t.equal((await post(ll.ports.http, '/function/Echo', '')).body.toString(), 'n21:', 'least loaded node');
  busy.complete(busy.received[0]);
  t.equal((await held).body.toString(), 'n20:held');

  const rnd = await gateway();
  t.teardown(() => rnd.stop());
  const rs = [new RawEngine(rnd.ports.engine, 30), new RawEngine(rnd.ports.engine, 31)];
  t.teardown(() => rs.forEach((e) => e.close()));
  await waitFor(() => rnd.engines.nodes.size === 2, 2000, 'two nodes');
  const seen = new Set<string>();
  for (let i = 0; i < 40; i++) seen.add((await post(rnd.ports.http, '/function/Echo', '')).body.toString());
  t.same([...seen].sort(), ['n30:', 'n31:'], 'random spreads over both nodes');
});

t.test('--max_running_requests queues calls beyond the cap and releases them in order', async (t) => {
  const gw = await gateway({ maxRunningRequests: 1 });
  t.teardown(() => gw.stop());
  const e = new RawEngine(gw.ports.engine, 1);
  t.teardown(() => e.close());
  e.hold = true;
  await waitFor(() => gw.engines.nodes.size === 1, 2000, 'node up');
  const ps = ['a', 'b', 'c'].map((s) => post(gw.ports.http, '/function/Echo', s));
  await waitFor(() => e.received.length === 1 && gw.dispatcher.queuedCount === 2, 2000, 'one running, two queued');
  t.equal(e.received.length, 1, 'only one dispatched');
  for (let i = 0; i < 3; i++) {
    await waitFor(() => e.received.length === i + 1, 2000, `dispatch ${i + 1}`);
    e.complete(e.received[i]);
  }
  t.same((await Promise.all(ps)).map((r) => r.body.toString()), ['n1:a', 'n1:b', 'n1:c']);
});

t.test('timeout: 504 and a late result is ignored', async (t) => {
  const gw = await gateway({ callTimeoutMs: 200 });
  t.teardown(() => gw.stop());
  const e = new RawEngine(gw.ports.engine, 1);
  t.teardown(() => e.close());
  e.hold = true;
  await waitFor(() => gw.engines.nodes.size === 1, 2000, 'node up');
  const r = await post(gw.ports.http, '/function/Echo', 'slow');
  t.equal(r.status, 504);
  e.complete(e.received[0]);
  e.hold = false;
  t.equal((await post(gw.ports.http, '/function/Echo', 'next')).body.toString(), 'n1:next', 'gateway fine after a late result');
});
