/**
 * x86-64 Linux system call names for the numbers the injector reports (the
 * call a thread was blocked in when it was used as the safe point). Only
 * the calls a thread is found waiting or working in; others print as
 * "syscall N". Numbers from the kernel's arch/x86/entry/syscalls/syscall_64.tbl.
 */
const X86_64: Record<number, string> = {
  0: 'read', 1: 'write', 2: 'open', 3: 'close', 4: 'stat', 5: 'fstat', 6: 'lstat', 7: 'poll', 8: 'lseek', 9: 'mmap',
  10: 'mprotect', 11: 'munmap', 12: 'brk', 13: 'rt_sigaction', 14: 'rt_sigprocmask', 16: 'ioctl', 17: 'pread64',
  18: 'pwrite64', 19: 'readv', 20: 'writev', 22: 'pipe', 23: 'select', 24: 'sched_yield', 32: 'dup', 33: 'dup2',
  34: 'pause', 35: 'nanosleep', 39: 'getpid', 41: 'socket', 42: 'connect', 43: 'accept', 44: 'sendto', 45: 'recvfrom',
  46: 'sendmsg', 47: 'recvmsg', 56: 'clone', 57: 'fork', 59: 'execve', 60: 'exit', 61: 'wait4', 62: 'kill', 72: 'fcntl',
  74: 'fsync', 89: 'readlink', 96: 'gettimeofday', 128: 'rt_sigtimedwait', 130: 'rt_sigsuspend', 186: 'gettid',
  202: 'futex', 208: 'io_getevents', 213: 'epoll_create', 219: 'restart_syscall', 228: 'clock_gettime',
  230: 'clock_nanosleep', 231: 'exit_group', 232: 'epoll_wait', 233: 'epoll_ctl', 234: 'tgkill', 247: 'waitid',
  257: 'openat', 262: 'newfstatat', 270: 'pselect6', 271: 'ppoll', 281: 'epoll_pwait', 284: 'eventfd', 288: 'accept4',
  290: 'eventfd2', 291: 'epoll_create1', 293: 'pipe2', 299: 'recvmmsg', 307: 'sendmmsg', 318: 'getrandom',
  426: 'io_uring_enter', 435: 'clone3', 441: 'epoll_pwait2',
};

/** "read(2)" for a known number, "syscall 999" otherwise. */
export function syscallName(nr: number): string {
  const name = X86_64[nr];
  return name ? `${name}(2)` : `syscall ${nr}`;
}
