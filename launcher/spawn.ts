/**
 * Starts worker processes with posix_spawn (through koffi), not with
 * child_process. Why: the launcher ptraces its workers, and the kernel reports
 * a tracee's stops to any waitpid() of the tracer's thread group. libuv waits
 * on every child it spawned, so it would swallow the injector's stop events
 * (and report the worker as exited). Workers spawned here are our children
 * but unknown to libuv; we watch them through the fd-3 socketpair (it closes
 * when the process exits) and reap them ourselves.
 */
import net from 'node:net';
import { lastErrno, libc } from '../common/libc.js';

const socketpair = libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)');
const faInit = libc.func('int posix_spawn_file_actions_init(void *fa)');
const faDestroy = libc.func('int posix_spawn_file_actions_destroy(void *fa)');
const faDup2 = libc.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)');
const faOpen = libc.func('int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, uint32_t mode)');
const posixSpawn = libc.func('int posix_spawn(_Out_ int *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)');
const waitpidNative = libc.func('int waitpid(int pid, _Out_ int *status, int options)');
const closeNative = libc.func('int close(int fd)');
const prctl = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
const PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_CLEAR_ALL = 4;

/**
 * Function code must not inherit the launcher's CAP_SYS_PTRACE. Some runtimes
 * (podman, for non-root users) grant an added capability as *ambient*, which
 * exec passes on to every child; clearing the launcher's ambient set keeps
 * its own effective capabilities and gives its (non-root) workers none.
 * Returns false where the kernel has no ambient capabilities (nothing to clear).
 */
export function clearAmbientCapabilities(): boolean {
  return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) === 0;
}

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const O_RDONLY = 0;
const WNOHANG = 1;
const FA_SIZE = 256; // sizeof(posix_spawn_file_actions_t) is 80 on glibc x86-64

export interface ExitInfo {
  code: number | null;
  signal: number | null;
}

export interface SpawnedProcess {
  pid: number;
  /** our end of the fd-3 socketpair */
  control: net.Socket;
  /** resolves once the process has exited and been reaped */
  exited: Promise<ExitInfo>;
  /** true once reaped */
  readonly done: boolean;
  kill(signal?: NodeJS.Signals): void;
}

export interface SpawnOptions {
  file: string;
  args: string[];
  env: Record<string, string | undefined>;
  /** fd to use as the child's stdout/stderr; undefined: inherit ours */
  stdoutFd?: number;
  stderrFd?: number;
  /** also put the socketpair on the child's stdin and stdout (tools and tests talking to a child) */
  stdioOnControl?: boolean;
}

/** Non-blocking reap: the exit info, or undefined while it still runs. */
export function tryReap(pid: number): ExitInfo | undefined {
  const st = new Int32Array(1);
  const r = waitpidNative(pid, st, WNOHANG) as number;
  if (r === 0) return undefined;
  if (r < 0) return { code: null, signal: null }; // already reaped elsewhere (ECHILD)
  const s = st[0];
  if ((s & 0x7f) === 0) return { code: (s >> 8) & 0xff, signal: null };
  return { code: null, signal: s & 0x7f };
}

export function spawnProcess(o: SpawnOptions): SpawnedProcess {
  const sv = new Int32Array(2);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0) {
    throw new Error(`socketpair failed (errno ${lastErrno()})`);
  }
  const [ours, theirs] = [sv[0], sv[1]];
  const fa = Buffer.alloc(FA_SIZE);
  faInit(fa);
  try {
    if (o.stdioOnControl) {
      faDup2(fa, theirs, 0);
      faDup2(fa, theirs, 1);
    } else {
      faOpen(fa, 0, '/dev/null', O_RDONLY, 0);
    }
    if (o.stdoutFd !== undefined) faDup2(fa, o.stdoutFd, 1);
    if (o.stderrFd !== undefined) faDup2(fa, o.stderrFd, 2);
    faDup2(fa, theirs, 3); // dup2 clears close-on-exec on fd 3
    const argv = [o.file, ...o.args, null];
    const envp = [...Object.entries(o.env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`), null];
    const pidOut = new Int32Array(1);
    const rc = posixSpawn(pidOut, o.file, fa, null, argv, envp) as number;
    if (rc !== 0) {
      closeNative(ours);
      throw new Error(`cannot start ${o.file}: posix_spawn error ${rc}`);
    }
    const pid = pidOut[0];
    const control = new net.Socket({ fd: ours, readable: true, writable: true });
    control.on('error', () => {});
    let done = false;
    let resolveExit!: (e: ExitInfo) => void;
    const exited = new Promise<ExitInfo>((r) => (resolveExit = r));
    const poll = () => {
      const e = tryReap(pid);
      if (e) {
        done = true;
        resolveExit(e);
        return true;
      }
      return false;
    };
    // The socketpair closes when the process (the only other holder) exits;
    // then reap, retrying briefly: the close can arrive before the zombie.
    control.on('close', () => {
      if (poll()) return;
      const t = setInterval(() => {
        if (poll()) clearInterval(t);
      }, 20);
    });
    return {
      pid,
      control,
      exited,
      get done() {
        return done;
      },
      kill(signal: NodeJS.Signals = 'SIGKILL') {
        if (done) return;
        try {
          process.kill(pid, signal);
        } catch {
          /* gone */
        }
      },
    };
  } finally {
    faDestroy(fa);
    closeNative(theirs);
  }
}
