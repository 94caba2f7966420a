/**
 * The one buffer every hot-path socket of a process reads into: worker output
 * FIFOs (net.Socket's documented `onread` option) and accepted HTTP
 * connections (the same two slots on the socket, set after accept: node 20
 * has no server option for it). It saves, per read, a 64 KiB allocation, a
 * Readable push and a 'data' event (a fifth of the node agent's CPU per call
 * and ~10 % of the gateway's: BENCHMARKS.md).
 *
 * One buffer is enough, for both roles in one process too: libuv runs one read
 * callback at a time and nothing in a handler reads a socket synchronously.
 * The rule that comes with it: a chunk is a view valid only while its callback
 * runs. Whoever keeps bytes copies them (a call's input, an unfinished frame
 * or request, what writeNow must queue).
 */
import net from 'node:net';

export const SHARED_READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/** Called with each read: `n` bytes at the start of `buf` (SHARED_READ_BUFFER). false pauses the socket. */
export type SharedReadCallback = (this: net.Socket, n: number, buf: Uint8Array) => boolean | void;

const SLOTS = ((): { kBuffer: symbol; kBufferCb: symbol } | undefined => {
  const probe = new net.Socket();
  const find = (name: string) => Object.getOwnPropertySymbols(probe).find((x) => x.description === name);
  const kBuffer = find('kBuffer');
  const kBufferCb = find('kBufferCb');
  probe.destroy();
  return kBuffer && kBufferCb ? { kBuffer, kBufferCb } : undefined;
})();

type SlotSocket = net.Socket & Record<symbol, unknown> & { _handle?: { useUserBuffer?: (b: Uint8Array) => void } };

/** `onread` options for a socket we create (a FIFO end). */
export function sharedOnRead(callback: (n: number, buf: Buffer) => void): net.OnReadOpts {
  return { buffer: SHARED_READ_BUFFER, callback: (n, buf) => (callback(n, buf as Buffer), true) };
}

/**
 * Makes an accepted socket read into SHARED_READ_BUFFER, calling `callback`
 * instead of emitting 'data'. false where node's slots are not found (another
 * node version): the caller then reads through 'data'.
 */
export function readAcceptedIntoShared(socket: net.Socket, callback: SharedReadCallback): boolean {
  const u = socket as SlotSocket;
  if (!SLOTS || typeof u._handle?.useUserBuffer !== 'function' || u[SLOTS.kBuffer] !== null) return false;
  u[SLOTS.kBuffer] = SHARED_READ_BUFFER;
  u[SLOTS.kBufferCb] = callback;
  u._handle.useUserBuffer(SHARED_READ_BUFFER);
  return true;
}

/** After a hand-off to node:http: each read is copied out and pushed into the socket's stream, as node would. */
export function pushCopiesFrom(socket: net.Socket): void {
  if (SLOTS && (socket as SlotSocket)[SLOTS.kBufferCb] != null) (socket as SlotSocket)[SLOTS.kBufferCb] = pushCopy;
}

function pushCopy(this: net.Socket, n: number, buf: Uint8Array): boolean {
  return this.push(Buffer.from(buf.subarray(0, n)));
}
