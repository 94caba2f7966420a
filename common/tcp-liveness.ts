/**
 * Dead-peer detection on the cluster's TCP links, at the kernel level (a real
 * Nightcore peer sees nothing of it): keepalive probes after 1 s idle, every
 * second, 2 tries; and TCP_USER_TIMEOUT, so that data left unacknowledged for
 * 2.5 s also ends the connection (with it set, the kernel also uses it to end
 * a connection whose probes go unanswered). Linux's defaults (2 h idle, 75 s x 9)
 * would let a cut link look connected for hours. Node sets only the idle time
 * itself, so the rest goes through setsockopt on the socket's descriptor.
 */
import type net from 'node:net';
import { libc } from './libc.js';
import { SOL_SOCKET, socketFd } from './socket-fd.js';

const setsockopt = libc.func('int setsockopt(int fd, int level, int name, const int *value, uint32_t len)');
const SO_KEEPALIVE = 9;
const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_USER_TIMEOUT = 18;

export interface LivenessSettings {
  /** keepalive knobs are whole seconds in the kernel */
  idleSec: number;
  intervalSec: number;
  probes: number;
  userTimeoutMs: number;
}

export const DEFAULT_LIVENESS: LivenessSettings = { idleSec: 1, intervalSec: 1, probes: 2, userTimeoutMs: 2500 };

function set(fd: number, level: number, name: number, value: number): void {
  setsockopt(fd, level, name, [value], 4);
}

/** Applies the settings to a connected TCP socket; a socket without a descriptor yet is left as it is. */
export function tuneLiveness(socket: net.Socket, s: LivenessSettings = DEFAULT_LIVENESS): void {
  socket.setKeepAlive(true, s.idleSec * 1000);
  const fd = socketFd(socket);
  if (fd === undefined) return;
  set(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set(fd, IPPROTO_TCP, TCP_KEEPIDLE, s.idleSec);
  set(fd, IPPROTO_TCP, TCP_KEEPINTVL, s.intervalSec);
  set(fd, IPPROTO_TCP, TCP_KEEPCNT, s.probes);
  set(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, s.userTimeoutMs);
}
