/**
 * The node agent: Nightcore's engine and launcher roles for one node.
 *
 * - serves <ipc root>/engine.sock; workers handshake there, then talk over
 *   their two FIFOs (Nightcore's worker protocol, spec §5);
 * - spawns and supervises worker processes per function (minWorkers..maxWorkers),
 *   restarting crashed ones and failing their in-flight calls at once;
 * - dispatches external calls (from the gateway link) and nested calls
 *   (INVOKE_FUNC from workers) to idle workers, LIFO, queueing FIFO when all
 *   are busy;
 * - records every nested call on its caller->callee edge (EdgeStats).
 */
import { closeSync, openSync, constants as FC } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { FuncConfig, FuncEntry } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import {
  encodeIpc,
  type GatewayMessage,
  INLINE_CAPACITY,
  ipc,
  IpcFrameReader,
  MESSAGE_SIZE,
  MessageType,
  monotonicMicrosNumber,
  setSendTimestampUs,
} from '../proto/wire.js';
import { EdgeStats } from './edge-stats.js';
import type { GatewayConn } from './gateway-link.js';
import { IpcRoot } from './ipc-files.js';
import { spawnProcess, type SpawnedProcess } from './spawn.js';
import { type Call, type FunctionCounters, FunctionPool, Worker } from './workers.js';

export { FunctionPool, Worker, type FunctionCounters, type WorkerState } from './workers.js';
import { writeNow } from '../common/write-now.js';

export interface NodeAgentOptions {
  config: FuncConfig;
  ipcRoot: string;
  workerHost: string;
  log: Logger;
  /** directory for <funcName>_worker_<n>.stdout/.stderr; unset: inherit the launcher's */
  outputDir?: string;
  /** how long a spawned worker may take to handshake */
  handshakeTimeoutMs?: number;
  /** extra environment for workers */
  workerEnv?: Record<string, string>;
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

export class NodeAgent {
  readonly ipc: IpcRoot;
  readonly pools = new Map<number, FunctionPool>();
  readonly edges = new EdgeStats();
  private readonly workersByClient = new Map<number, Worker>();
  /** external calls in flight, by full call id */
  private readonly external = new Map<bigint, Call>();
  private server: net.Server | undefined;
  private nextClientId = 1;
  private stopping = false;
  private readonly log: Logger;
  /** set by whoever owns the gateway link */
  sendToGateway: (conn: GatewayConn | undefined, type: MessageType, id: bigint, value: number, payload?: Buffer) => void = () => {};
  /** hooks for observers (metrics, merge orchestration) */
  onWorkerReady: ((w: Worker) => void) | undefined;
  onWorkerExit: ((w: Worker) => void) | undefined;

  get config(): FuncConfig {
    return this.opts.config;
  }

  constructor(private readonly opts: NodeAgentOptions) {
    this.log = opts.log;
    this.ipc = new IpcRoot(opts.ipcRoot);
    for (const e of opts.config.entries) this.pools.set(e.funcId, new FunctionPool(e));
  }

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
  async whenReady(timeoutMs = 15000): Promise<void> {
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

  // ------------------------------------------------------------ worker life

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
    w.outSock = new net.Socket({ fd: fds.outFd, readable: true, writable: false });
    w.inSock.on('error', (err) => this.workerDead(w, `input FIFO: ${err.message}`));
    w.outSock.on('error', (err) => this.workerDead(w, `output FIFO: ${err.message}`));
    const reader = new IpcFrameReader();
    w.outSock.on('data', (chunk: Buffer) => reader.feed(chunk, (f) => this.onWorkerFrame(w, f)));
    sock.on('close', () => this.workerDead(w, 'engine socket closed'));
    sock.on('data', () => {
      /* unused after the handshake, as in Nightcore */
    });
    sock.write(encodeIpc({ type: MessageType.HANDSHAKE_RESPONSE, fullCallId: 0n, payloadSize: 0, flags: 0 }));
    w.state = 'idle';
    w.pool.crashStreak = 0;
    this.log.debug({ func: w.pool.entry.funcName, clientId, workerPid: w.pid }, 'worker ready');
    this.onWorkerReady?.(w);
    this.releaseWorker(w);
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
    if (call) this.finishFailed(call, `worker ${w.clientId} died`);
    const waiter = w.heldWaiter;
    w.heldWaiter = undefined;
    waiter?.();
    // Results of this worker's own nested calls have nowhere to go; finish() cleans them up.
    this.onWorkerExit?.(w);
    if (this.stopping) return;
    if (w.retiring) return void this.ensureCapacity(pool); // replaced on purpose, not a crash
    pool.counters.restarts++;
    const quick = Date.now() - w.startedAt < 1000 || !wasReady;
    pool.crashStreak = quick ? pool.crashStreak + 1 : 0;
    this.ensureCapacity(pool);
  }

  /** Keeps minWorkers alive and starts workers for queued calls, with backoff on crash loops. */
  private ensureCapacity(pool: FunctionPool): void {
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

  // ------------------------------------------------------------ dispatching

  private submit(call: Call, pool: FunctionPool): void {
    const w = pool.popIdle();
    if (w) {
      this.send(w, call);
      return;
    }
    pool.enqueue(call);
    this.ensureCapacity(pool);
  }

  private send(w: Worker, call: Call): void {
    w.state = 'busy';
    w.current = call;
    const now = monotonicMicrosNumber();
    call.dispatchedUs = now;
    setSendTimestampUs(call.frame, now);
    writeNow(w.inSock!, call.frame);
  }

  /** A worker became free: give it the oldest queued call, or park it. */
  private releaseWorker(w: Worker): void {
    if (w.state === 'dead') return;
    if (w.retiring) {
      w.state = 'idle';
      this.stopRetired(w);
      return;
    }
    if (w.held) {
      w.state = 'idle';
      const waiter = w.heldWaiter;
      w.heldWaiter = undefined;
      waiter?.();
      return;
    }
    const next = w.pool.dequeue();
    if (next) this.send(w, next);
    else {
      w.state = 'idle';
      w.pool.idle.push(w);
    }
  }

  /** DISPATCH_FUNC_CALL from the gateway. */
  dispatchExternal(m: GatewayMessage, conn: GatewayConn | undefined): void {
    const id = m.fullCallId;
    const funcId = Number(id & 0xffn);
    const pool = this.pools.get(funcId);
    if (!pool) return this.failExternal(id, funcId, conn, undefined, 'unknown func_id');
    pool.counters.calls++;
    if (!pool.runnable) return this.failExternal(id, funcId, conn, pool, 'function has no library or command on this node');
    if (this.external.has(id)) return this.failExternal(id, funcId, conn, pool, 'a call with the same id is still in flight (gateway restarted?)');
    const input = m.payload;
    let frame: Buffer;
    let ownsInputShm = false;
    if (input.length <= INLINE_CAPACITY) {
      frame = encodeIpc({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: id, inline: input });
    } else {
      try {
        this.writeShmReplacingStale(id, 'i', input);
      } catch (err) {
        return this.failExternal(id, funcId, conn, pool, `cannot write input file: ${(err as Error).message}`);
      }
      ownsInputShm = true;
      frame = encodeIpc({ type: MessageType.DISPATCH_FUNC_CALL, fullCallId: id, payloadSize: -input.length });
    }
    const call: Call = { id, funcId, frame, source: { kind: 'gateway', conn }, inputSize: input.length, ownsInputShm, receivedUs: monotonicMicrosNumber() };
    this.external.set(id, call);
    this.submit(call, pool);
  }

  private failExternal(id: bigint, funcId: number, conn: GatewayConn | undefined, pool: FunctionPool | undefined, why: string): void {
    this.log.warn({ call: String(id), funcId, why }, 'external call failed');
    if (pool) pool.counters.failures++;
    this.sendToGateway(conn, MessageType.FUNC_CALL_FAILED, id, 0);
  }

  /** A leftover <id>.i from a lost call (ids restart when the gateway does) is stale: replace it. */
  private writeShmReplacingStale(id: bigint, suffix: 'i' | 'o', data: Buffer): void {
    try {
      this.ipc.writeShm(id, suffix, data);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      this.ipc.removeShm(id, suffix);
      this.ipc.writeShm(id, suffix, data);
    }
  }

  private onWorkerFrame(w: Worker, f: Buffer): void {
    switch (ipc.type(f)) {
      case MessageType.FUNC_CALL_COMPLETE:
      case MessageType.FUNC_CALL_FAILED:
        return this.onWorkerResult(w, f);
      case MessageType.INVOKE_FUNC:
        return this.onInvoke(w, f);
      default:
        this.log.warn({ clientId: w.clientId, type: ipc.type(f) }, 'ignoring unexpected frame from worker');
    }
  }

  private onWorkerResult(w: Worker, f: Buffer): void {
    const id = ipc.fullCallId(f);
    const call = w.current;
    if (!call || call.id !== id) {
      this.log.warn({ clientId: w.clientId, call: String(id) }, 'result for a call this worker is not running; dropped');
      if (ipc.type(f) === MessageType.FUNC_CALL_COMPLETE && ipc.payloadSize(f) < 0) this.ipc.removeShm(id, 'o');
      return;
    }
    w.current = undefined;
    this.releaseWorker(w);
    this.finish(call, f);
  }

  private onInvoke(caller: Worker, f: Buffer): void {
    const id = ipc.fullCallId(f);
    const calleeId = ipc.funcId(f);
    const pool = this.pools.get(calleeId);
    const size = ipc.payloadSize(f);
    // The same frame becomes the DISPATCH: ids and payload stay, the type
    // changes and bytes 8-15 (parent_call_id) are zero in a DISPATCH.
    const frame = Buffer.from(f);
    frame[0] = (frame[0] & 0xf0) | MessageType.DISPATCH_FUNC_CALL;
    frame.fill(0, 8, 16);
    frame.fill(0, 32, 64); // padding, including our origin extension, is zero in a DISPATCH
    // A merged callee's own calls leave from its caller's process: attribute them to the callee.
    const origin = ipc.originFuncId(f);
    const callerFunc = (origin !== undefined ? this.pools.get(origin)?.entry.funcName : undefined) ?? caller.pool.entry.funcName;
    const call: Call = {
      id, funcId: calleeId, frame, source: { kind: 'nested', caller, callerFunc }, inputSize: Math.abs(size),
      ownsInputShm: false, receivedUs: monotonicMicrosNumber(),
    };
    if (!pool || !pool.runnable || caller.nested.has(id)) {
      // Nightcore drops such calls and the caller hangs; we fail them.
      this.log.warn({ caller: caller.pool.entry.funcName, calleeFuncId: calleeId, call: String(id) }, 'nested call to an unknown or unrunnable function, or a duplicate id: failed');
      this.finishFailed(call, 'unknown callee');
      return;
    }
    pool.counters.calls++;
    caller.nested.set(id, call);
    this.submit(call, pool);
  }

  private finishFailed(call: Call, why: string): void {
    this.finish(call, encodeIpc({ type: MessageType.FUNC_CALL_FAILED, fullCallId: call.id }), why);
  }

  /** Delivers a COMPLETE/FAILED frame for `call` to where it came from, once. */
  private finish(call: Call, f: Buffer, why?: string): void {
    if (call.done) return;
    call.done = true;
    const pool = this.pools.get(call.funcId);
    const failed = ipc.type(f) !== MessageType.FUNC_CALL_COMPLETE;
    if (failed && pool) pool.counters.failures++;
    if (!failed && pool) pool.counters.processingUs += Math.max(0, ipc.processingTime(f));
    const size = failed ? 0 : ipc.payloadSize(f);
    if (call.source.kind === 'gateway') {
      this.external.delete(call.id);
      if (call.ownsInputShm) this.ipc.removeShm(call.id, 'i');
      let output: Buffer | undefined;
      let ok = !failed;
      if (ok) {
        try {
          output = size >= 0 ? Buffer.from(ipc.inline(f)) : this.ipc.takeShm(call.id, 'o', -size);
        } catch (err) {
          this.log.error({ call: String(call.id), err: (err as Error).message }, 'cannot read call output');
          ok = false;
        }
      }
      if (why) this.log.warn({ call: String(call.id), why }, 'call failed');
      if (ok) this.sendToGateway(call.source.conn, MessageType.FUNC_CALL_COMPLETE, call.id, ipc.processingTime(f), output);
      else this.sendToGateway(call.source.conn, MessageType.FUNC_CALL_FAILED, call.id, 0);
      return;
    }
    const caller = call.source.caller;
    caller.nested.delete(call.id);
    const now = monotonicMicrosNumber();
    this.edges.record(call.source.callerFunc, pool?.entry.funcName ?? `#${call.funcId}`, {
      inputBytes: call.inputSize,
      outputBytes: Math.abs(size),
      dispatchDelayUs: failed ? 0 : ipc.dispatchDelay(f),
      processingUs: failed ? 0 : ipc.processingTime(f),
      rpcUs: now - call.receivedUs,
      queueUs: call.dispatchedUs ? call.dispatchedUs - call.receivedUs : 0,
      failed,
    });
    if (caller.state === 'dead' || !caller.inSock) {
      // The caller would have removed these files after its invoke returned.
      if (!failed && size < 0) this.ipc.removeShm(call.id, 'o');
      if (ipc.payloadSize(call.frame) < 0) this.ipc.removeShm(call.id, 'i');
      return;
    }
    setSendTimestampUs(f, now);
    writeNow(caller.inSock, f);
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
      this.releaseWorker(w);
    };
  }

  /**
   * Drains and replaces a worker that may be damaged: a replacement starts
   * now, no call is dispatched to it any more, its current call (if any) may
   * finish (within `drainMs`), then it is stopped. No call fails because of it.
   */
  retireWorker(w: Worker, reason: string, drainMs = 10000): void {
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

  private stopRetired(w: Worker): void {
    w.proc.kill('SIGTERM');
    const kill = setTimeout(() => w.proc.kill('SIGKILL'), 2000);
    kill.unref();
    void w.proc.exited.then(() => clearTimeout(kill));
  }

  workerByClientId(clientId: number): Worker | undefined {
    return this.workersByClient.get(clientId);
  }

  // ------------------------------------------------------------ status

  status(): { funcName: string; funcId: number; workers: number; idle: number; busy: number; starting: number; queued: number; counters: FunctionCounters; pids: number[] }[] {
    return [...this.pools.values()].map((p) => {
      const ws = [...p.workers.values()];
      return {
        funcName: p.entry.funcName,
        funcId: p.entry.funcId,
        workers: ws.filter((w) => w.ready).length,
        idle: ws.filter((w) => w.state === 'idle').length,
        busy: ws.filter((w) => w.state === 'busy').length,
        starting: ws.filter((w) => w.state === 'starting').length,
        queued: p.queued,
        counters: { ...p.counters },
        pids: ws.map((w) => w.pid).filter((x): x is number => x !== undefined),
      };
    });
  }

  /** The function's workers that can take calls. */
  readyWorkersOf(funcName: string): Worker[] {
    return this.workersOf(funcName).filter((w) => w.ready);
  }

  workersOf(funcName: string): Worker[] {
    const p = [...this.pools.values()].find((x) => x.entry.funcName === funcName);
    return p ? [...p.workers.values()] : [];
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
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
    for (const call of this.external.values()) this.finishFailed(call, 'node agent stopping');
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 2000))]);
    this.ipc.destroy();
  }
}
