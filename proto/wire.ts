/**
 * Nightcore's binary protocols: the one TypeScript definition of every byte
 * layout (the C twin is native/include/nightfuse/ipc.h; both are checked
 * against proto/golden.txt).
 *
 * - Gateway <-> engine (TCP): a 16-byte header followed by payload_size bytes.
 * - Engine <-> worker IPC (unix socket, FIFOs): fixed 1024-byte frames.
 * Bytes 0-7 of both are the LE u64 `type | full_call_id << 4`. full_call_id
 * packs func_id (8 bits) | method_id (6) << 8 | client_id (14) << 14 |
 * call_id (32) << 28, so it needs 60 bits: we keep it as a bigint.
 */

export const MessageType = {
  INVALID: 0,
  ENGINE_HANDSHAKE: 1,
  LAUNCHER_HANDSHAKE: 2,
  FUNC_WORKER_HANDSHAKE: 3,
  HANDSHAKE_RESPONSE: 4,
  CREATE_FUNC_WORKER: 5,
  INVOKE_FUNC: 6,
  DISPATCH_FUNC_CALL: 7,
  FUNC_CALL_COMPLETE: 8,
  FUNC_CALL_FAILED: 9,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

export const GATEWAY_HEADER_SIZE = 16;
export const MESSAGE_SIZE = 1024;
export const MESSAGE_HEADER_SIZE = 64;
export const INLINE_CAPACITY = MESSAGE_SIZE - MESSAGE_HEADER_SIZE; // 960
export const CONTAINER_ID_LEN = 64;

export const FLAG_USE_ENGINE_SOCKET = 0x1;
export const FLAG_USE_FIFO_FOR_NESTED_CALL = 0x2;

export interface CallId {
  funcId: number;
  methodId: number;
  clientId: number;
  callId: number;
}

/** packCallId for the hot path: one BigInt conversion and one shift instead of eight operations. */
export function packCallIdFast(funcId: number, methodId: number, clientId: number, callId: number): bigint {
  const low = (funcId & 0xff) | ((methodId & 0x3f) << 8) | ((clientId & 0x3fff) << 14); // 28 bits: a Smi
  return (BigInt(callId >>> 0) << 28n) | BigInt(low);
}

export function packCallId(c: CallId): bigint {
  return (
    BigInt(c.funcId & 0xff) |
    (BigInt(c.methodId & 0x3f) << 8n) |
    (BigInt(c.clientId & 0x3fff) << 14n) |
    (BigInt(c.callId >>> 0) << 28n)
  );
}

export function unpackCallId(full: bigint): CallId {
  return {
    funcId: Number(full & 0xffn),
    methodId: Number((full >> 8n) & 0x3fn),
    clientId: Number((full >> 14n) & 0x3fffn),
    callId: Number((full >> 28n) & 0xffffffffn),
  };
}

// ---------------------------------------------------------------- gateway link

export interface GatewayMessage {
  type: MessageType;
  fullCallId: bigint;
  /** bytes 8-11: processing_time (COMPLETE), status_code (FAILED) */
  value: number;
  /** ENGINE_HANDSHAKE only (bytes 8-11 as two u16) */
  nodeId?: number;
  connId?: number;
  payload: Buffer;
}

export function encodeGatewayHeader(
  type: MessageType,
  fullCallId: bigint,
  payloadSize: number,
  value = 0,
): Buffer {
  const b = Buffer.allocUnsafe(GATEWAY_HEADER_SIZE);
  b.writeBigUInt64LE(BigInt(type) | (fullCallId << 4n), 0);
  b.writeInt32LE(value, 8);
  b.writeInt32LE(payloadSize, 12);
  return b;
}

export function encodeEngineHandshake(nodeId: number, connId: number): Buffer {
  const b = encodeGatewayHeader(MessageType.ENGINE_HANDSHAKE, 0n, 0);
  b.writeUInt16LE(nodeId & 0xffff, 8);
  b.writeUInt16LE(connId & 0xffff, 10);
  return b;
}

export function encodeGatewayMessage(m: Omit<GatewayMessage, 'nodeId' | 'connId'>): Buffer {
  return Buffer.concat([encodeGatewayHeader(m.type, m.fullCallId, m.payload.length, m.value), m.payload]);
}

/**
 * Writes a gateway-link message without copying the payload. Messages written
 * in one event-loop turn leave together: the first corks the socket and a
 * nextTick uncorks it, so a burst of calls (or results) costs one writev and
 * one wake-up of the peer instead of one each.
 */
export function writeGatewayMessage(socket: { cork(): void; uncork(): void; write(b: Buffer): boolean }, header: Buffer, payload?: Buffer): void {
  const s = socket as CorkableSocket;
  if (!s[kCorked]) {
    s[kCorked] = true;
    s.cork();
    process.nextTick(uncorkTurn, s);
  }
  s.write(header);
  if (payload && payload.length > 0) s.write(payload);
}

const kCorked = Symbol('nightfuse.corkedThisTurn');
type CorkableSocket = { cork(): void; uncork(): void; write(b: Buffer): boolean; [kCorked]?: boolean };

function uncorkTurn(s: CorkableSocket): void {
  s[kCorked] = false;
  s.uncork();
}

/** What an engine sends on the gateway link (HANDSHAKE_RESPONSE: its authentication proof); anything else from it is malformed. */
export const ENGINE_TO_GATEWAY: ReadonlySet<number> = new Set([
  MessageType.ENGINE_HANDSHAKE, MessageType.HANDSHAKE_RESPONSE, MessageType.FUNC_CALL_COMPLETE, MessageType.FUNC_CALL_FAILED,
]);

/** Largest payload we accept on the gateway link (Nightcore: i32, buffered whole). */
export const MAX_GATEWAY_PAYLOAD = 0x7fffffff;

export class WireError extends Error {
  override name = 'WireError';
}

/**
 * Incremental parser for the gateway link: feed() chunks as they arrive,
 * get whole messages back. Throws WireError on a frame no peer can send
 * (negative size, unknown type, payload over the limit); the caller closes
 * the connection.
 */
export class GatewayFrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** raised once a connection has authenticated: before that a peer may send only tiny frames */
  maxPayload: number;
  /** `accept`: the message types the peer may send (others are refused at the header, before any payload is buffered) */
  constructor(maxPayload = MAX_GATEWAY_PAYLOAD, private readonly accept?: ReadonlySet<number>) {
    this.maxPayload = maxPayload;
  }

  feed(chunk: Buffer): GatewayMessage[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: GatewayMessage[] = [];
    while (this.buffered >= GATEWAY_HEADER_SIZE) {
      const head = this.peek(GATEWAY_HEADER_SIZE);
      const size = head.readInt32LE(12);
      const word = head.readBigUInt64LE(0);
      const type = Number(word & 0xfn);
      if (type < MessageType.ENGINE_HANDSHAKE || type > MessageType.FUNC_CALL_FAILED) {
        throw new WireError(`gateway link: invalid message type ${type}`);
      }
      if (this.accept && !this.accept.has(type)) throw new WireError(`gateway link: message type ${type} is not sent by this peer`);
      if (size < 0) throw new WireError(`gateway link: negative payload size ${size}`);
      if (size > this.maxPayload) {
        throw new WireError(`gateway link: payload of ${size} bytes exceeds the limit of ${this.maxPayload}`);
      }
      if (this.buffered < GATEWAY_HEADER_SIZE + size) break;
      const whole = this.take(GATEWAY_HEADER_SIZE + size);
      const msg: GatewayMessage = {
        type: type as MessageType,
        fullCallId: word >> 4n,
        value: whole.readInt32LE(8),
        payload: whole.subarray(GATEWAY_HEADER_SIZE),
      };
      if (type === MessageType.ENGINE_HANDSHAKE) {
        msg.nodeId = whole.readUInt16LE(8);
        msg.connId = whole.readUInt16LE(10);
      }
      out.push(msg);
    }
    return out;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const head = this.chunks[0];
    const whole = head.subarray(0, n);
    if (head.length === n) this.chunks.shift();
    else this.chunks[0] = head.subarray(n);
    this.buffered -= n;
    return whole;
  }
}

// ------------------------------------------- gateway link: cluster authentication
//
// A Nightfuse extension that a Nightcore peer never sees: a launcher sends it
// only when it has a cluster token, and a gateway answers only such a hello.
//
//   launcher -> gateway  ENGINE_HANDSHAKE(node_id, conn_id), payload AUTH_HELLO:
//                        "NFAUTH01" | instance id (8) | launcher nonce (32)
//   gateway  -> launcher HANDSHAKE_RESPONSE, payload AUTH_CHALLENGE:
//                        "NFCHAL01" | gateway nonce (32) | gateway proof (32)
//   launcher -> gateway  HANDSHAKE_RESPONSE, payload AUTH_PROOF: "NFPROOF1" | launcher proof (32)
//   gateway  -> launcher HANDSHAKE_RESPONSE, payload "NFACCEPT", or "NFREFUSE" | reason (UTF-8)
//
// The proofs are HMACs keyed by the token (common/cluster-auth.ts); the
// gateway proves itself first, so a launcher never answers an impostor.

export const AUTH_MAGIC = {
  hello: 'NFAUTH01',
  challenge: 'NFCHAL01',
  proof: 'NFPROOF1',
  accept: 'NFACCEPT',
  refuse: 'NFREFUSE',
} as const;
export type AuthKind = keyof typeof AUTH_MAGIC;
const AUTH_MAGIC_LEN = 8;
const AUTH_NONCE = 32;
const AUTH_PROOF = 32;
const AUTH_INSTANCE = 8;
/** Longest refusal reason we send or read (bytes). */
export const AUTH_MAX_REASON = 512;
/** Largest frame a peer may send before it has authenticated. */
export const MAX_UNAUTHENTICATED_PAYLOAD = 1024;

export type AuthFrame =
  | { kind: 'hello'; instance: Buffer; nonce: Buffer }
  | { kind: 'challenge'; nonce: Buffer; proof: Buffer }
  | { kind: 'proof'; proof: Buffer }
  | { kind: 'accept' }
  | { kind: 'refuse'; reason: string };

const AUTH_SIZES: Record<AuthKind, number> = {
  hello: AUTH_MAGIC_LEN + AUTH_INSTANCE + AUTH_NONCE,
  challenge: AUTH_MAGIC_LEN + AUTH_NONCE + AUTH_PROOF,
  proof: AUTH_MAGIC_LEN + AUTH_PROOF,
  accept: AUTH_MAGIC_LEN,
  refuse: -1,
};

/** The whole frame (header + payload) for one step of the handshake. */
export function encodeAuthFrame(f: AuthFrame, nodeId = 0, connId = 0): Buffer {
  let body: Buffer[];
  switch (f.kind) {
    case 'hello': body = [f.instance, f.nonce]; break;
    case 'challenge': body = [f.nonce, f.proof]; break;
    case 'proof': body = [f.proof]; break;
    case 'accept': body = []; break;
    case 'refuse': body = [Buffer.from(f.reason).subarray(0, AUTH_MAX_REASON)]; break;
  }
  const payload = Buffer.concat([Buffer.from(AUTH_MAGIC[f.kind], 'latin1'), ...body]);
  if (f.kind !== 'refuse' && payload.length !== AUTH_SIZES[f.kind]) throw new RangeError(`auth ${f.kind}: wrong field sizes`);
  if (f.kind === 'hello') {
    const h = encodeEngineHandshake(nodeId, connId);
    h.writeInt32LE(payload.length, 12);
    return Buffer.concat([h, payload]);
  }
  return Buffer.concat([encodeGatewayHeader(MessageType.HANDSHAKE_RESPONSE, 0n, payload.length), payload]);
}

/**
 * Reads a handshake step from a gateway-link message: undefined when the
 * message is not one (a plain ENGINE_HANDSHAKE has no payload); WireError when
 * it claims to be one but is malformed.
 */
export function decodeAuthFrame(m: GatewayMessage): AuthFrame | undefined {
  if (m.type !== MessageType.ENGINE_HANDSHAKE && m.type !== MessageType.HANDSHAKE_RESPONSE) return undefined;
  if (m.payload.length === 0 && m.type === MessageType.ENGINE_HANDSHAKE) return undefined;
  const p = m.payload;
  const magic = p.subarray(0, AUTH_MAGIC_LEN).toString('latin1');
  const kind = (Object.keys(AUTH_MAGIC) as AuthKind[]).find((k) => AUTH_MAGIC[k] === magic);
  if (!kind) throw new WireError(`gateway link: handshake payload of ${p.length} bytes is not a Nightfuse authentication step`);
  if ((kind === 'hello') !== (m.type === MessageType.ENGINE_HANDSHAKE)) throw new WireError(`gateway link: auth ${kind} in the wrong message type ${m.type}`);
  if (kind === 'refuse') {
    if (p.length > AUTH_MAGIC_LEN + AUTH_MAX_REASON) throw new WireError('gateway link: refusal reason too long');
    return { kind, reason: p.subarray(AUTH_MAGIC_LEN).toString('utf8') };
  }
  if (p.length !== AUTH_SIZES[kind]) throw new WireError(`gateway link: auth ${kind} of ${p.length} bytes, expected ${AUTH_SIZES[kind]}`);
  const at = (o: number, n: number) => Buffer.from(p.subarray(o, o + n));
  switch (kind) {
    case 'hello': return { kind, instance: at(8, AUTH_INSTANCE), nonce: at(8 + AUTH_INSTANCE, AUTH_NONCE) };
    case 'challenge': return { kind, nonce: at(8, AUTH_NONCE), proof: at(8 + AUTH_NONCE, AUTH_PROOF) };
    case 'proof': return { kind, proof: at(8, AUTH_PROOF) };
    case 'accept': return { kind };
  }
}

// ----------------------------------------------------------------- IPC frames

/** Offsets inside the 1024-byte frame (same names as ipc.h's NF_OFF_*). */
export const Off = {
  HEADER: 0,
  PARENT_CALL_ID: 8,
  DISPATCH_DELAY: 8,
  PROCESSING_TIME: 12,
  SEND_TIMESTAMP: 16,
  PAYLOAD_SIZE: 24,
  FLAGS: 28,
  /** Nightfuse extension in the zero padding: INVOKE_FUNC on behalf of a merged callee (see ipc.h) */
  ORIGIN_FLAG: 32,
  ORIGIN_FUNC: 33,
  INLINE: 64,
} as const;

export interface IpcMessage {
  type: MessageType;
  fullCallId: bigint;
  parentCallId?: bigint;
  dispatchDelay?: number;
  processingTime?: number;
  sendTimestamp?: bigint;
  payloadSize?: number;
  flags?: number;
  inline?: Buffer;
}

export function encodeIpc(m: IpcMessage): Buffer {
  // From node's shared 8 KiB pool, zeroed here: Buffer.alloc gives every frame an ArrayBuffer of
  // its own (calloc, a backing store for the young-generation sweeper), one per call on the hot path.
  const b = Buffer.allocUnsafe(MESSAGE_SIZE).fill(0);
  b.writeBigUInt64LE(BigInt(m.type) | (m.fullCallId << 4n), Off.HEADER);
  if (m.parentCallId !== undefined) b.writeBigUInt64LE(m.parentCallId, Off.PARENT_CALL_ID);
  if (m.dispatchDelay !== undefined) b.writeInt32LE(m.dispatchDelay, Off.DISPATCH_DELAY);
  if (m.processingTime !== undefined) b.writeInt32LE(m.processingTime, Off.PROCESSING_TIME);
  if (m.sendTimestamp !== undefined) b.writeBigInt64LE(m.sendTimestamp, Off.SEND_TIMESTAMP);
  if (m.flags !== undefined) b.writeUInt32LE(m.flags, Off.FLAGS);
  let size = m.payloadSize;
  if (m.inline) {
    if (m.inline.length > INLINE_CAPACITY) throw new RangeError(`inline payload of ${m.inline.length} bytes > ${INLINE_CAPACITY}`);
    m.inline.copy(b, Off.INLINE);
    size ??= m.inline.length;
  }
  b.writeInt32LE(size ?? 0, Off.PAYLOAD_SIZE);
  return b;
}

/**
 * Writes a DISPATCH_FUNC_CALL with an inline payload into `frame` (a
 * MESSAGE_SIZE buffer that is reused, one per worker): the same bytes as
 * encodeIpc's, without a new buffer, its zero fill or BigInt writes per call.
 * `dirty` is how many inline bytes the frame's previous use left; they are
 * zeroed past the new payload. Returns the inline bytes now used.
 */
export function writeDispatchInline(frame: Buffer, fullCallId: bigint, inline: Buffer, dirty: number): number {
  if (inline.length > INLINE_CAPACITY) throw new RangeError(`inline payload of ${inline.length} bytes > ${INLINE_CAPACITY}`);
  frame.fill(0, 0, MESSAGE_HEADER_SIZE);
  // header u64 = type | full_call_id << 4: full_call_id's low 28 bits (ids, a Smi) and its call_id above them
  frame.writeUInt32LE(((Number(fullCallId & 0xfffffffn) << 4) | MessageType.DISPATCH_FUNC_CALL) >>> 0, Off.HEADER);
  frame.writeUInt32LE(Number(fullCallId >> 28n), Off.HEADER + 4);
  frame.writeInt32LE(inline.length, Off.PAYLOAD_SIZE);
  inline.copy(frame, Off.INLINE);
  if (dirty > inline.length) frame.fill(0, Off.INLINE + inline.length, Off.INLINE + dirty);
  return inline.length;
}

/** Cheap accessors on a received frame (no allocation on the hot path). */
export const ipc = {
  type: (f: Buffer): MessageType => (f[0] & 0xf) as MessageType,
  fullCallId: (f: Buffer): bigint => f.readBigUInt64LE(Off.HEADER) >> 4n,
  funcId: (f: Buffer): number => ((f.readUInt32LE(0) >>> 4) & 0xff),
  methodId: (f: Buffer): number => ((f.readUInt32LE(0) >>> 12) & 0x3f),
  clientId: (f: Buffer): number => ((f.readUInt32LE(0) >>> 18) & 0x3fff),
  payloadSize: (f: Buffer): number => f.readInt32LE(Off.PAYLOAD_SIZE),
  flags: (f: Buffer): number => f.readUInt32LE(Off.FLAGS),
  dispatchDelay: (f: Buffer): number => f.readInt32LE(Off.DISPATCH_DELAY),
  processingTime: (f: Buffer): number => f.readInt32LE(Off.PROCESSING_TIME),
  parentCallId: (f: Buffer): bigint => f.readBigUInt64LE(Off.PARENT_CALL_ID),
  /** the merged function an INVOKE_FUNC was made on behalf of, or undefined */
  originFuncId: (f: Buffer): number | undefined => (f[Off.ORIGIN_FLAG] === 1 ? f[Off.ORIGIN_FUNC] : undefined),
  sendTimestamp: (f: Buffer): bigint => f.readBigInt64LE(Off.SEND_TIMESTAMP),
  setSendTimestamp: (f: Buffer, us: bigint): void => {
    f.writeBigInt64LE(us, Off.SEND_TIMESTAMP);
  },
  inline: (f: Buffer): Buffer => {
    const n = f.readInt32LE(Off.PAYLOAD_SIZE);
    if (n < 0 || n > INLINE_CAPACITY) throw new WireError(`frame has no inline payload (payload_size ${n})`);
    return f.subarray(Off.INLINE, Off.INLINE + n);
  },
};

/** Cuts a byte stream into 1024-byte frames. */
export class IpcFrameReader {
  private pending: Buffer | null = null;
  feed(chunk: Buffer, onFrame: (frame: Buffer) => void): void {
    let data = chunk;
    if (this.pending) {
      data = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let off = 0;
    while (data.length - off >= MESSAGE_SIZE) {
      onFrame(data.subarray(off, off + MESSAGE_SIZE));
      off += MESSAGE_SIZE;
    }
    if (off < data.length) this.pending = Buffer.from(data.subarray(off));
  }
  get bufferedBytes(): number {
    return this.pending?.length ?? 0;
  }
}

/** CLOCK_MONOTONIC in µs, comparable with the C workers' send_timestamp. */
export function monotonicMicros(): bigint {
  return process.hrtime.bigint() / 1000n;
}

// performance.now() runs on the same clock (uv_hrtime, CLOCK_MONOTONIC) from a fixed origin: one offset makes it
// CLOCK_MONOTONIC µs as a plain number (exact to the µs for centuries), with no BigInt per call.
// Read as the tightest of a few brackets of hrtime around performance.now() (the first calls are slow).
const MONOTONIC_ORIGIN_US = (() => {
  let best = Infinity;
  let origin = 0;
  for (let i = 0; i < 8; i++) {
    const a = Number(process.hrtime.bigint()) / 1000;
    const p = performance.now() * 1000;
    const b = Number(process.hrtime.bigint()) / 1000;
    if (b - a < best) {
      best = b - a;
      origin = (a + b) / 2 - p;
    }
  }
  return origin;
})();

/** monotonicMicros() as a number: the hot path's clock. */
export function monotonicMicrosNumber(): number {
  return Math.round(MONOTONIC_ORIGIN_US + performance.now() * 1000);
}

const TWO_32 = 2 ** 32;

/** Writes send_timestamp (i64 µs) from a number: the hot path's form of ipc.setSendTimestamp. */
export function setSendTimestampUs(f: Buffer, us: number): void {
  f.writeUInt32LE(us % TWO_32, Off.SEND_TIMESTAMP);
  f.writeUInt32LE(Math.floor(us / TWO_32), Off.SEND_TIMESTAMP + 4);
}
