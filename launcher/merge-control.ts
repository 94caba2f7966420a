/**
 * The launcher's side of run-time merging for single workers: injects the
 * merge runtime into a caller worker (with the worker held out of dispatch,
 * so it sits at a safe point), accepts the runtime's connection on
 * <ipc root>/merge.sock, and sends it LOAD / ROUTE / UNLOAD / STATS
 * (proto/merge-wire.ts). Statistics of local calls are folded into the
 * launcher's edge statistics, so the call graph stays complete after a merge.
 */
import net from 'node:net';
import { peerCred } from '../common/peer-cred.js';
import { join } from 'node:path';
import type { Logger } from '../common/log.js';
import { NATIVE_BUILD } from '../common/paths.js';
import {
  decodeFault, decodeHello, decodeReply, encode, type Fault, type Hello, type Isolation, MP_REPLY, MpFrameReader, MpType,
  readHeader, type StatsReply,
} from '../proto/merge-wire.js';
import { inject, type InjectFn, type InjectReport } from './injector.js';
import type { NodeAgent, Worker } from './node-agent.js';
import { rmQuiet } from './ipc-files.js';
import { libc } from '../common/libc.js';

const tgkill = libc.func('int tgkill(int tgid, int tid, int sig)');
const SIGURG = 23;
/** How long a worker stays held waiting for the runtime's HELLO (calls to it queue meanwhile). */
const HELD_HELLO_MS = 1500;

export const MERGE_RUNTIME_LIBRARY = join(NATIVE_BUILD, 'libnightfuse_merge.so');
export const MERGE_ENTRY = 'nightfuse_merge_start';

/** What nightfuse_merge_start's return codes mean. */
const ENTRY_ERRORS: Record<number, string> = {
  2: 'the process is not a Nightfuse worker host (no nightfuse_route_hook): merging needs nightfuse-worker',
  3: 'the merge runtime could not start its thread',
  4: 'the control socket path is too long',
  5: 'the merge runtime could not connect to the launcher',
};

export class MergeError extends Error {
  override name = 'MergeError';
}

export class MergeSession {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (f: Buffer) => void; timer: NodeJS.Timeout }>();
  closed = false;
  /** cumulative counters already folded into the edge statistics, per callee */
  readonly reported = new Map<string, { calls: number; failures: number; cycles: number }>();
  lastStats: StatsReply | undefined;

  constructor(readonly worker: Worker, readonly hello: Hello, private readonly socket: net.Socket) {}

  onFrame(f: Buffer): void {
    const h = readHeader(f);
    if (!(h.type & MP_REPLY)) return;
    const w = this.waiting.get(h.requestId);
    if (!w) return;
    this.waiting.delete(h.requestId);
    clearTimeout(w.timer);
    w.resolve(f);
  }

  close(why: string): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    for (const [id, w] of this.waiting) {
      clearTimeout(w.timer);
      w.resolve(Buffer.alloc(0));
      this.waiting.delete(id);
    }
    void why;
  }

  private async request(build: (id: number) => Buffer, what: string, timeoutMs = 10000): Promise<{ message: string; stats?: StatsReply }> {
    if (this.closed) throw new MergeError(`${what}: worker ${this.worker.clientId}'s merge runtime is disconnected`);
    const id = this.nextId++;
    const frame = await new Promise<Buffer>((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve(Buffer.alloc(0));
      }, timeoutMs);
      this.waiting.set(id, { resolve, timer });
      this.socket.write(build(id));
    });
    if (frame.length === 0) throw new MergeError(`${what}: no answer from worker ${this.worker.clientId} (pid ${this.hello.pid})`);
    const r = decodeReply(frame);
    if (r.header.status !== 0) throw new MergeError(`${what}: ${r.message} (status ${r.header.status})`);
    return r;
  }

  load(callee: string, library: string, isolation: Isolation, instances = 1, stackKib = 0): Promise<{ message: string }> {
    return this.request((id) => encode.load(id, callee, library, isolation, instances, stackKib), `LOAD ${callee}`);
  }
  route(callee: string, on: boolean): Promise<{ message: string }> {
    return this.request((id) => encode.route(id, callee, on), `ROUTE ${callee} ${on ? 'on' : 'off'}`);
  }
  unload(callee: string, timeoutMs = 5000): Promise<{ message: string }> {
    return this.request((id) => encode.unload(id, callee, timeoutMs), `UNLOAD ${callee}`, timeoutMs + 5000);
  }
  async stats(): Promise<StatsReply> {
    const r = await this.request((id) => encode.stats(id), 'STATS');
    this.lastStats = r.stats!;
    return r.stats!;
  }
}

export interface MergeControlOptions {
  agent: NodeAgent;
  log: Logger;
  runtimeLibrary?: string;
  /** a merged callee faulted: the worker may be damaged (retire it); called before the faulting call may return */
  onFault?: (s: MergeSession, f: Fault) => void;
  /** how long injection waits for a thread in a system call */
  safeWaitMs?: number;
  /** the injector to use (default: ours; benchmarks pass another build's, see loadInjector) */
  injector?: InjectFn;
  /** whose calls a callee loaded in a worker serves (the merged pair's caller); default: the worker's function */
  callerOf?: (clientId: number, callee: string) => string | undefined;
}

export class MergeControl {
  readonly socketPath: string;
  readonly sessions = new Map<number, MergeSession>(); // by client id
  private server: net.Server | undefined;
  private readonly helloWaiters = new Map<number, (s: MergeSession) => void>(); // by client id
  private readonly attaching = new Map<number, Promise<MergeSession>>();
  readonly injections: InjectReport[] = [];

  constructor(private readonly o: MergeControlOptions) {
    this.socketPath = join(o.agent.ipc.root, 'merge.sock');
  }

  async start(): Promise<void> {
    rmQuiet(this.socketPath);
    this.server = net.createServer((s) => this.onConnection(s));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.socketPath, () => resolve());
    });
  }

  private onConnection(socket: net.Socket): void {
    const reader = new MpFrameReader();
    let session: MergeSession | undefined;
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      let frames: Buffer[];
      try {
        frames = reader.feed(chunk);
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'malformed frame from a merge runtime; closing');
        socket.destroy();
        return;
      }
      for (const f of frames) {
        const type = readHeader(f).type;
        if (!session) {
          if (type !== MpType.HELLO) return void socket.destroy();
          let hello: Hello;
          try {
            hello = decodeHello(f);
          } catch {
            return void socket.destroy();
          }
          const w = this.o.agent.workerByClientId(hello.clientId);
          // Only workers this launcher started, matched by client id and by pid, the pid as the kernel
          // knows the peer (SO_PEERCRED): one worker must not pass itself off as another.
          const peer = peerCred(socket);
          if (!w || w.pid !== hello.pid || peer?.pid !== w.pid || w.state === 'dead') {
            this.o.log.warn({ hello, peerPid: peer?.pid }, 'merge runtime hello from a process that is not one of our workers; closing');
            return void socket.destroy();
          }
          session = new MergeSession(w, hello, socket);
          this.sessions.get(hello.clientId)?.close('replaced');
          this.sessions.set(hello.clientId, session);
          this.helloWaiters.get(hello.clientId)?.(session);
          this.helloWaiters.delete(hello.clientId);
          continue;
        }
        if (type === MpType.FAULT) {
          let fault: Fault | undefined;
          try {
            fault = decodeFault(f);
          } catch (err) {
            this.o.log.warn({ err: (err as Error).message }, 'malformed FAULT event');
          }
          if (fault) {
            this.o.log.error({ worker: session.worker.clientId, workerPid: session.hello.pid, ...fault }, 'merged callee faulted; its route is off and the worker is possibly damaged');
            try {
              this.o.onFault?.(session, fault); // takes the worker out of dispatch, synchronously
            } finally {
              // The faulting call is still waiting in the worker: only now may it return.
              if (fault.id !== 0 && !socket.destroyed) socket.write(encode.faultAck(fault.id));
            }
          }
          continue;
        }
        session.onFrame(f);
      }
    });
    socket.on('close', () => {
      if (session) {
        session.close('disconnected');
        if (this.sessions.get(session.hello.clientId) === session) this.sessions.delete(session.hello.clientId);
      }
    });
  }

  /** The worker's merge session, injecting the runtime first if needed. */
  attach(w: Worker, timeoutMs = 10000): Promise<MergeSession> {
    const existing = this.sessions.get(w.clientId);
    if (existing && !existing.closed) return Promise.resolve(existing);
    const pending = this.attaching.get(w.clientId);
    if (pending) return pending;
    const p = this.doAttach(w, timeoutMs).finally(() => this.attaching.delete(w.clientId));
    this.attaching.set(w.clientId, p);
    return p;
  }

  private waitHello(clientId: number, timeoutMs: number): Promise<MergeSession | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.helloWaiters.delete(clientId);
        resolve(undefined);
      }, timeoutMs);
      this.helloWaiters.set(clientId, (s) => {
        clearTimeout(timer);
        resolve(s);
      });
    });
  }

  /**
   * One injection with the worker held out of dispatch. With no entry, the
   * runtime's constructor armed a SIGURG handler: the start signal goes to the
   * worker's main thread while it is still held (blocked in read(2)), and the
   * hold lasts until the runtime says HELLO, at most HELD_HELLO_MS.
   */
  private async injectHeld(w: Worker, entry: string | undefined, hello: Promise<MergeSession | undefined>): Promise<{ report: InjectReport; session?: MergeSession }> {
    const release = await this.o.agent.hold(w);
    let report: InjectReport;
    let session: MergeSession | undefined;
    try {
      if ((w.state as string) === 'dead') throw new MergeError(`worker ${w.clientId} died while being held`);
      report = await (this.o.injector ?? inject)(w.pid, this.o.runtimeLibrary ?? MERGE_RUNTIME_LIBRARY, {
        entry, arg: entry ? this.socketPath : undefined, safeWaitMs: this.o.safeWaitMs ?? 50, timeoutMs: 5000,
      });
      if (report.ok && !entry) tgkill(w.pid, w.pid, SIGURG);
      if (report.ok) session = await Promise.race([hello, new Promise<undefined>((r) => setTimeout(r, HELD_HELLO_MS))]);
    } finally {
      release();
    }
    // A remote call left to finish may never finish (it waits for something that never comes), and a
    // damaged target is what it says: either way the worker is replaced rather than trusted again.
    if (report.leftRunning || report.damaged) {
      this.o.agent.retireWorker(w, report.damaged ? `injection left it damaged: ${report.error}` : `an injected call was left running: ${report.error}`);
    }
    this.injections.push(report);
    if (this.injections.length > 1000) this.injections.shift();
    this.o.log.info({ worker: w.clientId, workerPid: w.pid, entry, ok: report.ok, stoppedUs: Math.round(report.stoppedUs), totalUs: Math.round(report.totalUs), error: report.error || undefined }, 'merge runtime injection');
    return { report, session };
  }

  /**
   * Loads the runtime with no entry call (see injectHeld): only dlopen happens
   * in the stopped window. If no HELLO follows (an old runtime still loaded but
   * disconnected, or a process that is not a worker host), the explicit entry
   * starts it or says why not.
   */
  private async doAttach(w: Worker, timeoutMs: number): Promise<MergeSession> {
    if (!w.pid || w.state === 'dead' || w.state === 'starting') throw new MergeError(`worker ${w.clientId} is not running`);
    let r = await this.injectHeld(w, undefined, this.waitHello(w.clientId, Math.min(timeoutMs, HELD_HELLO_MS)));
    if (!r.report.ok) {
      this.helloWaiters.delete(w.clientId);
      throw new MergeError(`injecting the merge runtime into worker ${w.clientId} (pid ${w.pid}) failed: ${r.report.error}`);
    }
    if (r.session) return r.session;
    const hello = this.waitHello(w.clientId, timeoutMs);
    r = await this.injectHeld(w, MERGE_ENTRY, hello);
    if (!r.report.ok) {
      this.helloWaiters.delete(w.clientId);
      const why = ENTRY_ERRORS[r.report.entryResult] ?? r.report.error;
      throw new MergeError(`starting the merge runtime in worker ${w.clientId} (pid ${w.pid}) failed: ${why}`);
    }
    const s = r.session ?? (await hello);
    if (!s) throw new MergeError(`worker ${w.clientId}'s merge runtime did not connect within ${timeoutMs} ms`);
    return s;
  }

  /** Polls STATS from every session and folds new local calls into the edge statistics. */
  async collect(): Promise<void> {
    await Promise.all([...this.sessions.values()].map(async (s) => {
      if (s.closed) return;
      let st: StatsReply;
      try {
        st = await s.stats();
      } catch {
        return;
      }
      for (const c of st.callees) {
        const prev = s.reported.get(c.name) ?? { calls: 0, failures: 0, cycles: 0 };
        const dCalls = c.calls - prev.calls;
        if (dCalls > 0 && st.tscHz > 0) {
          const us = ((c.totalCycles - prev.cycles) / st.tscHz) * 1e6;
          const caller = this.o.callerOf?.(s.worker.clientId, c.name) ?? s.worker.pool.entry.funcName;
          this.o.agent.edges.recordLocal(caller, c.name, dCalls, c.failures - prev.failures, us);
        }
        s.reported.set(c.name, { calls: c.calls, failures: c.failures, cycles: c.totalCycles });
      }
    }));
  }

  async stop(): Promise<void> {
    for (const s of this.sessions.values()) s.close('stopping');
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    rmQuiet(this.socketPath);
  }
}
