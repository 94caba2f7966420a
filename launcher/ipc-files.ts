/**
 * The IPC root's files, named as Nightcore names them (spec §5.3):
 *   <root>/engine.sock, <root>/fifo/worker_<cid>_{input,output},
 *   <root>/shm/<full_call_id>.{i,o}
 * plus Nightfuse's own: <root>/merge.sock (merge runtimes connect there) and
 * <root>/.nightfuse-ipc-root, which says which launcher process owns the root,
 * so that a launcher killed with SIGKILL can be started again on the same root
 * (its leftovers are recognisably its own) while a live owner is never evicted.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync, writeSync, constants as C } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { lastErrno, libc } from '../common/libc.js';

const mkfifoNative = libc.func('int mkfifo(const char *path, uint32_t mode)');

export class IpcRoot {
  readonly shmDir: string;
  readonly fifoDir: string;
  readonly socketPath: string;

  constructor(readonly root: string) {
    this.shmDir = join(root, 'shm');
    this.fifoDir = join(root, 'fifo');
    this.socketPath = join(root, 'engine.sock');
  }

  /**
   * Recreates the root empty, as Nightcore's engine does, but refuses to wipe
   * a directory holding anything other than an IPC root's own entries
   * (Nightcore would `rm -rf` whatever it is pointed at), and refuses a root
   * that a live engine serves or a live launcher owns.
   */
  async prepare(): Promise<void> {
    if (existsSync(this.socketPath) && (await socketIsLive(this.socketPath))) {
      throw new Error(`another engine is serving ${this.socketPath}; give this one its own --root_path_for_ipc`);
    }
    if (existsSync(this.root)) {
      const owner = readOwner(this.root);
      if (owner && processAlive(owner)) {
        throw new Error(`${this.root} belongs to launcher pid ${owner.pid}, which is still running; give this one its own --root_path_for_ipc`);
      }
      const foreign = foreignEntries(this.root);
      if (foreign.length > 0) {
        throw new Error(
          `refusing to wipe ${this.root}: it holds ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}, ` +
            'which is not an IPC root; pick an empty or dedicated --root_path_for_ipc',
        );
      }
      rmSync(this.root, { recursive: true, force: true });
    }
    mkdirSync(this.shmDir, { recursive: true, mode: 0o775 });
    mkdirSync(this.fifoDir, { recursive: true, mode: 0o775 });
    writeFileSync(join(this.root, OWNER_FILE), JSON.stringify(selfOwner()) + '\n', { mode: 0o644 });
  }

  workerFifo(clientId: number, dir: 'input' | 'output'): string {
    return join(this.fifoDir, `worker_${clientId}_${dir}`);
  }

  shmPath(fullCallId: bigint, suffix: 'i' | 'o'): string {
    return join(this.shmDir, `${fullCallId}.${suffix}`);
  }

  mkfifo(path: string): void {
    if (mkfifoNative(path, 0o664) !== 0) {
      const e = lastErrno();
      throw new Error(`mkfifo ${path} failed (errno ${e})`);
    }
  }

  /** Creates both FIFOs of a worker (before it is told its client id). */
  createWorkerFifos(clientId: number): void {
    for (const dir of ['input', 'output'] as const) {
      const p = this.workerFifo(clientId, dir);
      rmQuiet(p);
      this.mkfifo(p);
    }
  }

  removeWorkerFifos(clientId: number): void {
    rmQuiet(this.workerFifo(clientId, 'input'));
    rmQuiet(this.workerFifo(clientId, 'output'));
  }

  /** Opens the engine's ends: write end of input (the worker reads it already), read end of output. */
  openWorkerFifos(clientId: number): { inFd: number; outFd: number } {
    const inFd = openSync(this.workerFifo(clientId, 'input'), C.O_WRONLY | C.O_NONBLOCK);
    try {
      // O_RDWR: the read end never sees EOF before the worker opens its write
      // end (it does so only after our handshake response); worker death is
      // detected on the handshake socket and by the process exit instead.
      const outFd = openSync(this.workerFifo(clientId, 'output'), C.O_RDWR | C.O_NONBLOCK);
      return { inFd, outFd };
    } catch (err) {
      closeSync(inFd);
      throw err;
    }
  }

  /** Writes a payload file the way Nightcore's peers expect (O_EXCL, 0664, complete before the frame). */
  writeShm(fullCallId: bigint, suffix: 'i' | 'o', data: Buffer): void {
    const fd = openSync(this.shmPath(fullCallId, suffix), C.O_CREAT | C.O_EXCL | C.O_WRONLY, 0o664);
    try {
      let off = 0;
      while (off < data.length) off += writeSync(fd, data, off, data.length - off);
    } finally {
      closeSync(fd);
    }
  }

  /** Reads and removes a payload file; checks its size against the frame's. */
  takeShm(fullCallId: bigint, suffix: 'i' | 'o', expectedSize: number): Buffer {
    const p = this.shmPath(fullCallId, suffix);
    try {
      const data = readFileSync(p);
      if (data.length !== expectedSize) {
        throw new Error(`${p} has ${data.length} bytes, the frame says ${expectedSize}`);
      }
      return data;
    } finally {
      rmQuiet(p);
    }
  }

  removeShm(fullCallId: bigint, suffix: 'i' | 'o'): void {
    rmQuiet(this.shmPath(fullCallId, suffix));
  }

  destroy(): void {
    rmSync(this.root, { recursive: true, force: true });
  }
}

const OWNER_FILE = '.nightfuse-ipc-root';

interface Owner {
  pid: number;
  /** the process's start time (clock ticks since boot, /proc/<pid>/stat field 22): pids are reused */
  start: string;
}

function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function selfOwner(): Owner {
  return { pid: process.pid, start: startTimeOf(process.pid) ?? '' };
}

function readOwner(root: string): Owner | undefined {
  try {
    const o = JSON.parse(readFileSync(join(root, OWNER_FILE), 'utf8')) as Owner;
    return Number.isInteger(o.pid) && typeof o.start === 'string' ? o : undefined;
  } catch {
    return undefined;
  }
}

function processAlive(o: Owner): boolean {
  return o.pid !== process.pid && startTimeOf(o.pid) === o.start;
}

/** Entries of `root` that no IPC root of ours (or Nightcore's) would hold. */
function foreignEntries(root: string): string[] {
  const known: Record<string, RegExp | null> = {
    'engine.sock': null, 'merge.sock': null, [OWNER_FILE]: null,
    shm: /^\d+\.[io]$/, fifo: /^worker_\d+_(input|output)$/,
  };
  const out: string[] = [];
  for (const name of readdirSync(root)) {
    if (!(name in known)) {
      out.push(name);
      continue;
    }
    const inner = known[name];
    if (!inner) continue;
    try {
      for (const sub of readdirSync(join(root, name))) if (!inner.test(sub)) out.push(`${name}/${sub}`);
    } catch {
      out.push(name); // a file where a folder belongs
    }
  }
  return out;
}

/**
 * Removes an IPC root whose owner is gone (`nightfuse up`, after its launcher
 * ended however it ended). Leaves alone a root that is not one, or whose owner
 * still runs; returns whether it removed it.
 */
export function removeIpcRoot(root: string): boolean {
  if (!existsSync(root)) return false;
  const owner = readOwner(root);
  if (!owner || processAlive(owner) || foreignEntries(root).length > 0) return false;
  rmSync(root, { recursive: true, force: true });
  return true;
}

function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function rmQuiet(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* already gone */
  }
}

/** Nightcore's --node_id=-1 rule: a 16-bit hash of /proc/sys/kernel/hostname, newline included. */
export function hostnameNodeId(text?: string): number {
  const content = text ?? readFileSync('/proc/sys/kernel/hostname', 'latin1');
  let h = 0;
  for (let i = 0; i < content.length; i++) {
    let c = content.charCodeAt(i) & 0xff;
    if (c >= 0x80) c -= 0x100; // signed char
    h = (h * 177 + c) & 0xffff;
  }
  return h;
}
