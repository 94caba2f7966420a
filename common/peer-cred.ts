/**
 * The process at the other end of a Unix socket, as the kernel saw it connect
 * (SO_PEERCRED): a peer cannot lie about it, unlike a pid it sends itself.
 */
import type net from 'node:net';
import { libc } from './libc.js';
import { SOL_SOCKET, socketFd } from './socket-fd.js';

const getsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *value, _Inout_ uint32_t *len)');
const SO_PEERCRED = 17;

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** The peer's credentials, or undefined when the socket has no descriptor (or is not a Unix socket). */
export function peerCred(socket: net.Socket): PeerCred | undefined {
  const fd = socketFd(socket);
  if (fd === undefined) return undefined;
  const buf = Buffer.alloc(12); // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
  const len = [12];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, buf, len) !== 0 || len[0] < 12) return undefined;
  return { pid: buf.readInt32LE(0), uid: buf.readUInt32LE(4), gid: buf.readUInt32LE(8) };
}
