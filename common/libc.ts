/** The one handle on libc through koffi (mkfifo, posix_spawn, tgkill, setsockopt, …), and errno. */
import koffi from 'koffi';

export const libc = koffi.load('libc.so.6');

const errnoLocation = libc.func('int *__errno_location(void)');

/** errno of the calling thread, right after a failed libc call. */
export function lastErrno(): number {
  return koffi.decode(errnoLocation(), 'int') as number;
}

/** glibc's malloc_trim(pad): gives every free page of every arena back to the kernel; 1 if any was. */
export const mallocTrim = libc.func('int malloc_trim(size_t pad)') as (pad: number) => number;
