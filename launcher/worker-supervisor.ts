/**
 * The node agent's worker supervision: serves <ipc root>/engine.sock, where
 * workers handshake before they talk over their two FIFOs (Nightcore's worker
 * protocol, spec §5); spawns workers per function (minWorkers..maxWorkers and
 * what the queue needs), restarts crashed ones with backoff on crash loops,
 * fails their in-flight calls at once, and holds or retires workers for merge
 * control. Calls and results are dispatch.ts's.
 */
import { closeSync, openSync, constants as FC } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import { encodeIpc, ipc, IpcFrameReader, MESSAGE_SIZE, MessageType } from '../proto/wire.js';
import type { Dispatcher } from './dispatch.js';
import type { IpcRoot } from './ipc-files.js';
import { spawnProcess, type SpawnedProcess } from './spawn.js';
import { sharedOnRead } from '../common/shared-read.js';
import { type FunctionPool, Worker } from './workers.js';

export interface WorkerSupervisorOptions {
  config: FuncConfig;
  workerHost: string;
  /** directory for <funcName>_worker_<n>.stdout/.stderr; unset: inherit the launcher's */
  outputDir?: string;
  /** how long a spawned worker may take to handshake */
  handshakeTimeoutMs?: number;
  /** extra environment for workers */
  workerEnv?: Record<string, string>;
}

/** Who is told of workers coming and going: NodeAgent, whose hooks observers (metrics, merge orchestration) set. */
export interface WorkerObserver {
  onWorkerReady: ((w: Worker) => void) | undefined;
  onWorkerExit: ((w: Worker) => void) | undefined;
}

const MAX_CLIENT_ID = 16383;

/**
 * The environment workers start from: ours without Nightfuse's own settings.
 * NIGHTFUSE_* carries the cluster and admin tokens and our flags; function
 * code must not read them (a function holding the cluster token could pose as
 * a node).
 */
function workerBaseEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('NIGHTFUSE_')) env[k] = v;
  return env;
}

export class WorkerSupervisor {
  private readonly workersByClient = new Map<number, Worker>();
  private server: net.Server | undefined;
  private nextClientId = 1;
  stopping = false;

  constructor(
    private readonly opts: WorkerSupervisorOptions,
    private readonly pools: ReadonlyMap<number, FunctionPool>,
    private readonly ipc: IpcRoot,
    private readonly log: Logger,
    private readonly dispatch: Dispatcher,
    private readonly observer: WorkerObserver,
  ) {}

  async start(): Promise<void> {
    await this.ipc.prepare();
    this.server = net.createServer((s) => this.onEngineConnection(s));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.ipc.socketPath, () => resolve());
    });
    for (const pool of this.pools.values()) {
      if (!pool.runnable) {
        this.log.warn({ func: pool.entry.funcName }, 'no library or command in func_config: calls to it fail on this node');
        continue;
      }
      for (let i = 0; i < pool.minWorkers; i++) this.spawnWorker(pool);
    }
  }

  /** Resolves once every function with a library/command has minWorkers ready workers. */
  async whenReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const missing = [...this.pools.values()].filter((p) => p.runnable && this.readyCount(p) < p.minWorkers);
      if (missing.length === 0) return;
      if (Date.now() > deadline) {
        throw new Error(`workers not ready after ${timeoutMs} ms: ${missing.map((p) => p.entry.funcName).join(', ')}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private readyCount(p: FunctionPool): number {
    let n = 0;
    for (const w of p.workers.values()) if (w.ready) n++;
    return n;
  }

  workerByClientId(clientId: number): Worker | undefined {
    return this.workersByClient.get(clientId);
  }

  private spawnWorker(pool: FunctionPool): Worker | undefined {
    if (this.stopping) return undefined;
    if (this.nextClientId > MAX_CLIENT_ID) {
      this.log.error({ func: pool.entry.funcName }, 'client ids exhausted (16383 workers started); not starting more');
      return undefined;
    }
    const clientId = this.nextClientId++;
    const fprocessId = pool.nextFprocessId++;
    const e = pool.entry;
    try {
      this.ipc.createWorkerFifos(clientId);
    } catch (err) {
      this.log.error({ func: e.funcName, clientId, err: (err as Error).message }, 'cannot create worker FIFOs');
      return undefined;
    }
    const [cmd, args] = e.library ? [this.opts.workerHost, [e.library]] : ['/bin/bash', ['-c', e.command!]];
    const fds: number[] = [];
    if (this.opts.outputDir) {
      for (const ext of ['stdout', 'stderr']) {
        fds.push(openSync(join(this.opts.outputDir, `${e.funcName}_worker_${fprocessId}.${ext}`), FC.O_CREAT | FC.O_TRUNC | FC.O_WRONLY, 0o664));
      }
    }
    let proc: SpawnedProcess;
    try {
      proc = spawnProcess({
        file: cmd,
        args,
        stdoutFd: fds[0],
        stderrFd: fds[1],
        env: {
          ...workerBaseEnv(),
          ...this.opts.workerEnv,
          FAAS_FUNC_ID: String(e.funcId),
          FAAS_FPROCESS_ID: String(fprocessId),
          FAAS_CLIENT_ID: String(clientId),
          FAAS_MSG_PIPE_FD: '3',
          FAAS_ROOT_PATH_FOR_IPC: this.ipc.root,
        },
      });
    } catch (err) {
      this.log.error({ func: e.funcName, clientId, err: (err as Error).message }, 'cannot start worker');
      this.ipc.removeWorkerFifos(clientId);
      return undefined;
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    const w = new Worker(clientId, fprocessId, pool, proc);
    pool.workers.set(clientId, w);
    pool.counters.spawned++;
    this.workersByClient.set(clientId, w);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(this.opts.config.raw.length, 0);
    proc.control.write(Buffer.concat([len, this.opts.config.raw]));
    proc.control.on('data', () => {
      /* workers never write here */
    });
    void proc.exited.then((x) => this.workerDead(w, x.signal ? `killed by signal ${x.signal}` : `exited with code ${x.code}`));
    w.handshakeTimer = setTimeout(() => {
      if (w.state === 'starting') {
        this.log.error({ func: e.funcName, clientId }, 'worker did not handshake in time; killing it');
        proc.kill('SIGKILL');
      }
    }, this.opts.handshakeTimeoutMs ?? 10000);
    this.log.debug({ func: e.funcName, clientId, workerPid: proc.pid }, 'worker spawned');
    return w;
  }

  private onEngineConnection(sock: net.Socket): void {
    let buf = Buffer.alloc(0);
    let done = false;
    const onData = (chunk: Buffer) => {
      if (done) return;
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MESSAGE_SIZE) {
        // Nightcore's rule: nothing may follow the handshake before the response.
        this.log.warn('peer sent more than one frame before the handshake response; closing');
        sock.destroy();
        return;
      }
      if (buf.length < MESSAGE_SIZE) return;
      done = true;
      sock.off('data', onData);
      this.onHandshake(sock, buf);
    };
    sock.on('data', onData);
    sock.on('error', () => {});
  }

  private onHandshake(sock: net.Socket, frame: Buffer): void {
    const type = ipc.type(frame);
    if (type === MessageType.LAUNCHER_HANDSHAKE) {
      this.log.warn({ funcId: ipc.funcId(frame) }, 'a Nightcore launcher connected; this node agent starts workers itself (give the function a library or command in func_config); closing');
      sock.destroy();
      return;
    }
    if (type !== MessageType.FUNC_WORKER_HANDSHAKE) {
      this.log.warn({ type }, 'unexpected first frame on engine.sock; closing');
      sock.destroy();
      return;
    }
    const clientId = ipc.clientId(frame);
    const funcId = ipc.funcId(frame);
    const w = this.workersByClient.get(clientId);
    if (!w || w.state !== 'starting' || w.pool.entry.funcId !== funcId) {
      this.log.warn({ clientId, funcId }, 'worker handshake for a client id this node did not start, or a wrong function; closing');
      sock.destroy();
      return;
    }
    let fds: { inFd: number; outFd: number };
    try {
      fds = this.ipc.openWorkerFifos(clientId);
    } catch (err) {
      this.log.error({ clientId, err: (err as Error).message }, 'cannot open worker FIFOs (did the worker open its input FIFO first?)');
      sock.destroy();
      w.proc.kill('SIGKILL');
      return;
    }
    clearTimeout(w.handshakeTimer);
    w.hsSock = sock;
    w.inSock = new net.Socket({ fd: fds.inFd, readable: false, writable: true });
    const reader = new IpcFrameReader();
    const onFrame = (f: Buffer): void => this.dispatch.onWorkerFrame(w, f);
    // node reads a socket's fd into `onread.buffer` (documented for net.connect; the constructor takes it too)
    const opts: net.SocketConstructorOpts & { onread: net.OnReadOpts } = {
      fd: fds.outFd, readable: true, writable: false,
      onread: sharedOnRead((n, buf) => reader.feed(buf.subarray(0, n), onFrame)),
    };
    w.outSock = new net.Socket(opts);
    w.inSock.on('error', (err) => this.workerDead(w, `input FIFO: ${err.message}`));
    w.outSock.on('error', (err) => this.workerDead(w, `output FIFO: ${err.message}`));
    sock.on('close', () => this.workerDead(w, 'engine socket closed'));
    sock.on('data', () => {
      /* unused after the handshake, as in Nightcore */
    });
    sock.write(encodeIpc({ type: MessageType.HANDSHAKE_RESPONSE, fullCallId: 0n, payloadSize: 0, flags: 0 }));
    w.state = 'idle';
    w.pool.crashStreak = 0;
    this.log.debug({ func: w.pool.entry.funcName, clientId, workerPid: w.pid }, 'worker ready');
    this.observer.onWorkerReady?.(w);
    this.dispatch.releaseWorker(w);
  }

  private workerDead(w: Worker, reason: string): void {
    if (w.state === 'dead') return;
    const wasReady = w.state !== 'starting';
    w.state = 'dead';
    clearTimeout(w.handshakeTimer);
    const pool = w.pool;
    pool.workers.delete(w.clientId);
    this.workersByClient.delete(w.clientId);
    w.inSock?.destroy();
    w.outSock?.destroy();
    w.hsSock?.destroy();
    w.proc.kill('SIGKILL');
    this.ipc.removeWorkerFifos(w.clientId);
    const call = w.current;
    w.current = undefined;
    if (!this.stopping) {
      this.log.warn({ func: pool.entry.funcName, clientId: w.clientId, workerPid: w.pid, reason, inFlight: call ? String(call.id) : null }, 'worker gone');
    }
    if (call) this.dispatch.finishFailed(call, `worker ${w.clientId} died`);
    const waiter = w.heldWaiter;
    w.heldWaiter = undefined;
    waiter?.();
    // Results of this worker's own nested calls have nowhere to go; NestedCalls.deliver() cleans them up.
    this.observer.onWorkerExit?.(w);
    if (this.stopping) return;
    if (w.retiring) return void this.ensureCapacity(pool); // replaced on purpose, not a crash
    pool.counters.restarts++;
    const quick = Date.now() - w.startedAt < 1000 || !wasReady;
    pool.crashStreak = quick ? pool.crashStreak + 1 : 0;
    this.ensureCapacity(pool);
  }

  /** Keeps minWorkers alive and starts workers for queued calls, with backoff on crash loops. */
  ensureCapacity(pool: FunctionPool): void {
    if (this.stopping || !pool.runnable || pool.respawnTimer) return;
    // counted in one pass: this runs for every call that has to queue
    let live = 0;
    let starting = 0;
    let held = 0; // a held worker (injection in progress, ~1 ms) is capacity about to return: do not start one for it
    for (const w of pool.workers.values()) {
      if (w.state === 'dead') continue;
      live++;
      if (w.state === 'starting') starting++;
      if (w.held) held++;
    }
    const want = Math.min(pool.maxWorkers, Math.max(pool.minWorkers, live + Math.max(0, pool.queued - starting - held)));
    const missing = want - live;
    if (missing <= 0) return;
    if (pool.crashStreak > 2) {
      const delay = Math.min(5000, 100 * 2 ** Math.min(6, pool.crashStreak - 2));
      pool.respawnTimer = setTimeout(() => {
        pool.respawnTimer = undefined;
        if (pool.live < Math.max(1, pool.minWorkers) || pool.queued > 0) this.spawnWorker(pool);
      }, delay);
      this.log.warn({ func: pool.entry.funcName, delayMs: delay, streak: pool.crashStreak }, 'workers keep dying; backing off');
      return;
    }
    for (let i = 0; i < missing; i++) this.spawnWorker(pool);
  }

  /**
   * Takes a worker out of dispatch until the returned release() is called:
   * waits for its current call to finish, so it is idle (blocked reading its
   * input FIFO, a safe point with no user-space lock held) while held.
   */
  async hold(w: Worker): Promise<() => void> {
    if (w.held) throw new Error(`worker ${w.clientId} is already held`);
    w.held = true;
    if (w.state === 'busy' || w.state === 'starting') {
      await new Promise<void>((resolve) => {
        w.heldWaiter = resolve;
      });
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      w.held = false;
      this.dispatch.releaseWorker(w);
    };
  }

  /**
   * Drains and replaces a worker that may be damaged: a replacement starts
   * now, no call is dispatched to it any more, its current call (if any) may
   * finish (within `drainMs`), then it is stopped. No call fails because of it.
   */
  retireWorker(w: Worker, reason: string, drainMs: number): void {
    if (w.retiring || w.state === 'dead') return;
    w.retiring = reason;
    this.log.warn({ func: w.pool.entry.funcName, clientId: w.clientId, workerPid: w.pid, reason, busy: w.state === 'busy' }, 'retiring a possibly damaged worker; starting its replacement');
    this.ensureCapacity(w.pool);
    if (w.state !== 'busy' && w.state !== 'starting' && !w.heldWaiter) this.stopRetired(w);
    // A call that cannot finish (the damage may be a lock held forever) ends with the worker.
    const drain = setTimeout(() => this.workerDead(w, `retired (${reason}): its call did not finish within ${drainMs} ms`), drainMs);
    drain.unref();
    void w.proc.exited.then(() => clearTimeout(drain));
  }

  stopRetired(w: Worker): void {
    w.proc.kill('SIGTERM');
    const kill = setTimeout(() => w.proc.kill('SIGKILL'), 2000);
    kill.unref();
    void w.proc.exited.then(() => clearTimeout(kill));
  }

  /** Stops every worker, failing their calls, then the external calls still queued; waits for the exits (at most 2 s). */
  async stop(): Promise<void> {
    this.stopping = true;
    const exits: Promise<void>[] = [];
    for (const pool of this.pools.values()) {
      clearTimeout(pool.respawnTimer);
      for (const w of pool.workers.values()) {
        exits.push(w.proc.exited.then(() => undefined));
        w.proc.kill('SIGTERM');
        this.workerDead(w, 'stopping');
      }
    }
    this.dispatch.failAllExternal('node agent stopping');
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 2000))]);
  }
}
