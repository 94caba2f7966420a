/**
 * A net.Socket's file descriptor, for the few calls node does not offer
 * (setsockopt, getsockopt, a direct write): node keeps it on the private
 * handle, so this is the one place that reaches for it.
 */
import type net from 'node:net';

/** getsockopt/setsockopt's level for options of the socket itself (Linux). */
export const SOL_SOCKET = 1;

type WithFd = net.Socket & { _handle?: { fd?: number } | null };

/** The descriptor, or undefined when the socket has none (yet, or any more). */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as WithFd)._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}
