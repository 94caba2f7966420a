/**
 * The IPC root's files, named as Nightcore names them (spec §5.3):
 *   <root>/engine.sock, <root>/fifo/worker_<cid>_{input,output},
 *   <root>/shm/<full_call_id>.{i,o}
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, unlinkSync, writeSync, constants as C } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { lastErrno, libc } from './libc.js';

const mkfifoNative = libc.func('int mkfifo(const char *path, uint32_t mode)');

/** What an IPC root holds (merge.sock: the merge runtimes' control socket); anything else is not ours to wipe. */
export const IPC_ROOT_ENTRIES: readonly string[] = ['engine.sock', 'merge.sock', 'shm', 'fifo'];

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
   * (Nightcore would `rm -rf` whatever it is pointed at).
   */
  async prepare(): Promise<void> {
    if (existsSync(this.socketPath) && (await socketIsLive(this.socketPath))) {
      throw new Error(`another engine is serving ${this.socketPath}; give this one its own --root_path_for_ipc`);
    }
    if (existsSync(this.root)) {
      const foreign = readdirSync(this.root).filter((n) => !IPC_ROOT_ENTRIES.includes(n));
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

/** Removes `root` when it is an IPC root no live engine serves (left by a launcher that was killed). */
export async function removeAbandonedIpcRoot(root: string): Promise<boolean> {
  const sock = join(root, 'engine.sock');
  if (!existsSync(root) || (existsSync(sock) && (await socketIsLive(sock)))) return false;
  if (readdirSync(root).some((n) => !IPC_ROOT_ENTRIES.includes(n))) return false;
  rmSync(root, { recursive: true, force: true });
  return true;
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
