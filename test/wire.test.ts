import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  encodeEngineHandshake, encodeGatewayMessage, encodeIpc, GatewayFrameReader, INLINE_CAPACITY, ipc, IpcFrameReader,
  MESSAGE_SIZE, MessageType, packCallId, unpackCallId,
} from '../proto/wire.js';
import { encode } from '../proto/merge-wire.js';
import { ROOT } from './helpers.js';

// Each case of proto/golden.txt built with the TypeScript encoders.
const build: Record<string, () => Buffer> = {
  gw_packed_all_fields: () => {
    const b = encodeGatewayMessage({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: packCallId({ funcId: 0xab, methodId: 0x15, clientId: 0x1234, callId: 0xdeadbeef }), value: 0, payload: Buffer.alloc(0) });
    b.writeUInt16LE(0x0102, 8);
    b.writeUInt16LE(0x0304, 10);
    b.writeInt32LE(0x11223344, 12);
    return b;
  },
  gw_dispatch_hello: () => encodeGatewayMessage({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: packCallId({ funcId: 1, methodId: 0, clientId: 0, callId: 1 }), value: 0, payload: Buffer.from('Hello') }),
  gw_complete_ok: () => encodeGatewayMessage({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: packCallId({ funcId: 1, methodId: 0, clientId: 0, callId: 1 }), value: 250, payload: Buffer.from('OK') }),
  gw_failed: () => encodeGatewayMessage({ type: MessageType.FUNC_CALL_FAILED, fullCallId: packCallId({ funcId: 1, methodId: 0, clientId: 0, callId: 1 }), value: 0, payload: Buffer.alloc(0) }),
  gw_engine_handshake: () => encodeEngineHandshake(0, 3),
  gw_dispatch_grpc: () => encodeGatewayMessage({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: packCallId({ funcId: 9, methodId: 1, clientId: 0, callId: 7 }), value: 0, payload: Buffer.alloc(0) }),
  ipc_worker_handshake: () => encodeIpc({ type: MessageType.FUNC_WORKER_HANDSHAKE, fullCallId: packCallId({ funcId: 2, methodId: 0, clientId: 5, callId: 0 }) }),
  ipc_create_worker: () => encodeIpc({ type: MessageType.CREATE_FUNC_WORKER, fullCallId: packCallId({ funcId: 0, methodId: 0, clientId: 5, callId: 0 }) }),
  ipc_launcher_handshake: () => encodeIpc({ type: MessageType.LAUNCHER_HANDSHAKE, fullCallId: packCallId({ funcId: 2, methodId: 0, clientId: 0, callId: 0 }), payloadSize: 64 }),
  ipc_invoke_nested: () => encodeIpc({ type: MessageType.INVOKE_FUNC, fullCallId: packCallId({ funcId: 2, methodId: 0, clientId: 5, callId: 0 }), parentCallId: packCallId({ funcId: 1, methodId: 0, clientId: 0, callId: 1 }) }),
  full_call_id_packed: () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(packCallId({ funcId: 0xab, methodId: 0x15, clientId: 0x1234, callId: 0xdeadbeef }));
    return b;
  },
  merge_route_on: () => encode.route(7, 'Bar', true),
  merge_load_thread: () => encode.load(9, 'Bar', '/x/libbar.so', 'thread', 4, 256),
  merge_unload: () => encode.unload(11, 'Bar', 5000),
  full_call_id_simple: () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(packCallId({ funcId: 1, methodId: 0, clientId: 0, callId: 1 }));
    return b;
  },
};

t.test('golden bytes (proto/golden.txt)', async (t) => {
  const lines = readFileSync(join(ROOT, 'proto', 'golden.txt'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
  t.ok(lines.length >= 16, 'golden file has its cases');
  for (const line of lines) {
    const [name, off, hex] = line.split(/\s+/);
    t.ok(build[name], `encoder for ${name}`);
    const got = build[name]().subarray(Number(off), Number(off) + hex.length / 2).toString('hex');
    t.equal(got, hex, `${name}@${off}`);
  }
});

t.test('full_call_id', async (t) => {
  const id = packCallId({ funcId: 0xab, methodId: 0x15, clientId: 0x1234, callId: 0xdeadbeef });
  t.equal(id, 0x0deadbeef48d15abn);
  t.same(unpackCallId(id), { funcId: 0xab, methodId: 0x15, clientId: 0x1234, callId: 0xdeadbeef });
  t.equal(String(packCallId({ funcId: 1, methodId: 0, clientId: 0, callId: 1 })), '268435457', 'decimal name of shm files');
});

t.test('IPC frame accessors', async (t) => {
  const f = encodeIpc({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: packCallId({ funcId: 9, methodId: 3, clientId: 77, callId: 5 }), dispatchDelay: 12, processingTime: 345, inline: Buffer.from('out') });
  t.equal(f.length, MESSAGE_SIZE);
  t.equal(ipc.type(f), MessageType.FUNC_CALL_COMPLETE);
  t.equal(ipc.funcId(f), 9);
  t.equal(ipc.methodId(f), 3);
  t.equal(ipc.clientId(f), 77);
  t.equal(ipc.dispatchDelay(f), 12);
  t.equal(ipc.processingTime(f), 345);
  t.equal(ipc.inline(f).toString(), 'out');
  const shm = encodeIpc({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: 1n, payloadSize: -5000 });
  t.throws(() => ipc.inline(shm), { name: 'WireError' }, 'negative size has no inline payload');
  t.throws(() => encodeIpc({ type: MessageType.INVOKE_FUNC, fullCallId: 1n, inline: Buffer.alloc(INLINE_CAPACITY + 1) }), RangeError);
});

t.test('IpcFrameReader cuts a stream into 1024-byte frames whatever the chunking', async (t) => {
  const frames = [1, 2, 3].map((i) => encodeIpc({ type: MessageType.INVOKE_FUNC, fullCallId: BigInt(i), inline: Buffer.from(`p${i}`) }));
  const stream = Buffer.concat(frames);
  for (const cut of [1, 7, 1023, 1024, 1025, 3000]) {
    const r = new IpcFrameReader();
    const got: bigint[] = [];
    for (let o = 0; o < stream.length; o += cut) r.feed(stream.subarray(o, o + cut), (f) => got.push(ipc.fullCallId(f)));
    t.same(got, [1n, 2n, 3n], `chunks of ${cut}`);
    t.equal(r.bufferedBytes, 0);
  }
});

t.test('GatewayFrameReader: split, merged and malformed input', async (t) => {
  const a = encodeGatewayMessage({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: 5n, value: 10, payload: Buffer.from('hello') });
  const b = encodeEngineHandshake(7, 1);
  const stream = Buffer.concat([b, a, a]);
  for (const cut of [1, 5, 16, 17, 100]) {
    const r = new GatewayFrameReader();
    const got = [];
    for (let o = 0; o < stream.length; o += cut) got.push(...r.feed(stream.subarray(o, o + cut)));
    t.equal(got.length, 3, `chunks of ${cut}`);
    t.equal(got[0].nodeId, 7);
    t.equal(got[0].connId, 1);
    t.equal(got[1].payload.toString(), 'hello');
    t.equal(got[2].value, 10);
  }
  const neg = encodeGatewayMessage({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: 5n, value: 0, payload: Buffer.alloc(0) });
  neg.writeInt32LE(-1, 12);
  t.throws(() => new GatewayFrameReader().feed(neg), { name: 'WireError' }, 'negative payload size refused (Nightcore stalls on it)');
  const badType = Buffer.alloc(16);
  badType[0] = 0x0f;
  t.throws(() => new GatewayFrameReader().feed(badType), { name: 'WireError' }, 'unknown type refused');
  const huge = encodeGatewayMessage({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: 5n, value: 0, payload: Buffer.alloc(0) });
  huge.writeInt32LE(1 << 30, 12);
  t.throws(() => new GatewayFrameReader(1 << 20).feed(huge), /exceeds the limit/, 'payload over the limit refused before buffering');
});

t.test('merge protocol: replies, stats and malformed frames', async (t) => {
  const { decodeReply, MpFrameReader, histPercentileNs, MP_REPLY, MpType } = await import('../proto/merge-wire.js');
  // A STATS reply as the runtime writes it: header, message, tsc_hz, one callee.
  const parts: Buffer[] = [];
  const u = (n: number, v: number | bigint) => {
    const b = Buffer.alloc(n);
    if (n === 1) b.writeUInt8(Number(v));
    if (n === 2) b.writeUInt16LE(Number(v));
    if (n === 4) b.writeUInt32LE(Number(v));
    if (n === 8) b.writeBigUInt64LE(BigInt(v));
    parts.push(b);
  };
  const str = (s: string) => { u(2, s.length); parts.push(Buffer.from(s)); };
  str('');
  u(8, 2_000_000_000n);
  u(2, 1);
  str('Bar'); u(1, 2); u(1, 1); u(1, 0); u(1, 0);
  for (const v of [10, 1, 0, 5000, 900]) u(8, v);
  u(4, 0); u(4, 2);
  for (let i = 0; i < 32; i++) u(4, i === 9 ? 10 : 0);
  const body = Buffer.concat(parts);
  const head = Buffer.alloc(16);
  head.writeUInt32LE(16 + body.length, 0);
  head.writeUInt16LE(MpType.STATS | MP_REPLY, 4);
  head.writeUInt32LE(3, 8);
  const frame = Buffer.concat([head, body]);
  const r = decodeReply(frame);
  t.equal(r.header.requestId, 3);
  t.equal(r.stats!.tscHz, 2e9);
  t.match(r.stats!.callees[0], { name: 'Bar', isolation: 'thread', routed: true, faulted: false, calls: 10, failures: 1, totalCycles: 5000, instances: 2 });
  t.equal(histPercentileNs(r.stats!.callees[0].hist, 2e9, 50), 512, 'bucket 9 = below 2^10 cycles = 512 ns at 2 GHz');
  const reader = new MpFrameReader();
  t.same(reader.feed(frame.subarray(0, 10)), []);
  t.equal(reader.feed(frame.subarray(10)).length, 1, 'split frames reassembled');
  const bad = Buffer.alloc(8);
  bad.writeUInt32LE(3, 0);
  t.throws(() => new MpFrameReader().feed(bad), /out of range/, 'length below the header refused');
  t.throws(() => decodeReply(frame.subarray(0, 20)), /truncated/, 'truncated body refused');
});

t.test('hot-path forms: packCallIdFast, setSendTimestampUs and monotonicMicrosNumber agree with the BigInt ones', async (t) => {
  const { packCallIdFast, setSendTimestampUs, monotonicMicrosNumber, monotonicMicros } = await import('../proto/wire.js');
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  for (let i = 0; i < 2000; i++) {
    const c = { funcId: next() & 0xff, methodId: next() & 0x3f, clientId: next() & 0x3fff, callId: next() };
    if (packCallIdFast(c.funcId, c.methodId, c.clientId, c.callId) !== packCallId(c)) t.fail(`ids differ for ${JSON.stringify(c)}`);
  }
  t.equal(packCallIdFast(0xff, 0x3f, 0x3fff, 0xffffffff), packCallId({ funcId: 0xff, methodId: 0x3f, clientId: 0x3fff, callId: 0xffffffff }), 'all bits set');
  for (const us of [0, 1, 0xffffffff, 2 ** 32, 2 ** 32 + 7, 1_700_000_000_123_456, 2 ** 53 - 1]) {
    const a = Buffer.alloc(MESSAGE_SIZE);
    const b = Buffer.alloc(MESSAGE_SIZE);
    setSendTimestampUs(a, us);
    ipc.setSendTimestamp(b, BigInt(us));
    t.ok(a.equals(b), `send_timestamp ${us}`);
  }
  const x = monotonicMicrosNumber();
  const y = Number(monotonicMicros());
  const z = monotonicMicrosNumber();
  t.ok(x <= y + 2 && y <= z + 2, `the same clock: ${x} ≤ ${y} ≤ ${z}`);
});

t.test('writeDispatchInline: the same bytes as encodeIpc, in a reused frame whatever it held before', async (t) => {
  const { writeDispatchInline } = await import('../proto/wire.js');
  let seed = 777;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  const frame = Buffer.alloc(MESSAGE_SIZE);
  let dirty = 0;
  let bad = 0;
  const cases: [number, number, number, number, number][] = [[0xff, 0x3f, 0x3fff, 0xffffffff, INLINE_CAPACITY], [0, 0, 0, 0, 0], [1, 0, 0, 1, 5]];
  for (let i = 0; i < 3000; i++) cases.push([next() & 0xff, next() & 0x3f, next() & 0x3fff, next(), next() % (INLINE_CAPACITY + 1)]);
  for (const [funcId, methodId, clientId, callId, len] of cases) {
    const id = packCallId({ funcId, methodId, clientId, callId });
    const inline = Buffer.alloc(len, (callId & 0xfe) + 1);
    frame.fill(0xaa, 0, 64); // a previous frame's header, and its send_timestamp
    dirty = writeDispatchInline(frame, id, inline, dirty);
    const want = encodeIpc({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: id, inline });
    if (!frame.equals(want) && bad++ < 3) t.fail(`frame differs for id ${id}, ${len} bytes`);
    if (ipc.fullCallId(frame) !== id || ipc.type(frame) !== MessageType.DISPATCH_FUNC_CALL) bad++;
  }
  t.equal(bad, 0, `${cases.length} frames byte for byte`);
  t.throws(() => writeDispatchInline(frame, 1n, Buffer.alloc(INLINE_CAPACITY + 1), 0), /inline payload of 961 bytes/);
});
