/** The one handle on libc through koffi (mkfifo, posix_spawn, tgkill, setsockopt, …), and errno. */
import koffi from 'koffi';

export const libc = koffi.load('libc.so.6');

const errnoLocation = libc.func('int *__errno_location(void)');

/** errno of the calling thread, right after a failed libc call. */
export function lastErrno(): number {
  return koffi.decode(errnoLocation(), 'int') as number;
}
