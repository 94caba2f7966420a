/**
 * Writes to a socket (TCP, or a FIFO wrapped in net.Socket) with one write(2)
 * right now, past the stream machinery (WriteWrap, callbacks, nextTicks per
 * write), when nothing is queued on it: the hot path's answers and frames
 * are small and the kernel buffer is almost always free. What the kernel does
 * not take, or anything while writes are queued, goes through socket.write,
 * so order and backpressure stay the stream's; it is copied first, because
 * `data` may be a view of a read buffer that is reused (worker-supervisor.ts).
 */
import { writeSync } from 'node:fs';
import type net from 'node:net';
import { socketFd } from './socket-fd.js';

export function writeNow(socket: net.Socket, data: Buffer): void {
  const fd = socketFd(socket);
  if (fd !== undefined && socket.writableLength === 0 && socket.writable && !socket.connecting) {
    let n = 0;
    try {
      n = writeSync(fd, data);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') {
        socket.destroy(err as Error);
        return;
      }
    }
    if (n === data.length) return;
    data = data.subarray(n);
  }
  socket.write(Buffer.from(data));
}
