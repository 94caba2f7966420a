/**
 * The node agent: Nightcore's engine and launcher roles for one node, a
 * façade over three parts that share its pools and IPC root:
 *
 * - worker-supervisor.ts: engine.sock, spawning and supervising worker
 *   processes per function (minWorkers..maxWorkers), restarting crashed ones
 *   and failing their in-flight calls at once, holding and retiring them;
 * - dispatch.ts: external calls (from the gateway link) and nested calls to
 *   idle workers, LIFO, queueing FIFO when all are busy; results back, once;
 * - nested-calls.ts: INVOKE_FUNC from workers, each recorded on its
 *   caller->callee edge (EdgeStats).
 */
import type { FuncConfig } from '../common/func-config.js';
import type { Logger } from '../common/log.js';
import type { GatewayMessage } from '../proto/wire.js';
import { Dispatcher, type GatewaySink, type SendToGateway } from './dispatch.js';
import { EdgeStats } from './edge-stats.js';
import type { GatewayConn } from './gateway-link.js';
import { IpcRoot } from './ipc-files.js';
import { NestedCalls } from './nested-calls.js';
import { type WorkerObserver, WorkerSupervisor, type WorkerSupervisorOptions } from './worker-supervisor.js';
import { type FunctionCounters, FunctionPool, type Worker } from './workers.js';

export { FunctionPool, Worker, type FunctionCounters, type WorkerState } from './workers.js';

export interface NodeAgentOptions extends WorkerSupervisorOptions {
  ipcRoot: string;
  log: Logger;
}

export class NodeAgent implements GatewaySink, WorkerObserver {
  readonly ipc: IpcRoot;
  readonly pools = new Map<number, FunctionPool>();
  readonly edges = new EdgeStats();
  private readonly supervisor: WorkerSupervisor;
  private readonly dispatch: Dispatcher;
  /** set by whoever owns the gateway link */
  sendToGateway: SendToGateway = () => {};
  /** hooks for observers (metrics, merge orchestration) */
  onWorkerReady: ((w: Worker) => void) | undefined;
  onWorkerExit: ((w: Worker) => void) | undefined;

  get config(): FuncConfig {
    return this.opts.config;
  }

  constructor(private readonly opts: NodeAgentOptions) {
    this.ipc = new IpcRoot(opts.ipcRoot);
    for (const e of opts.config.entries) this.pools.set(e.funcId, new FunctionPool(e));
    this.dispatch = new Dispatcher(this.pools, this.ipc, opts.log, this);
    this.supervisor = new WorkerSupervisor(opts, this.pools, this.ipc, opts.log, this.dispatch, this);
    this.dispatch.connect(this.supervisor, new NestedCalls(this.pools, this.ipc, opts.log, this.edges, this.dispatch));
  }

  start(): Promise<void> {
    return this.supervisor.start();
  }

  /** Resolves once every function with a library/command has minWorkers ready workers. */
  whenReady(timeoutMs = 15000): Promise<void> {
    return this.supervisor.whenReady(timeoutMs);
  }

  /** DISPATCH_FUNC_CALL from the gateway. */
  dispatchExternal(m: GatewayMessage, conn: GatewayConn | undefined): void {
    this.dispatch.dispatchExternal(m, conn);
  }

  /** Out of dispatch, and idle, until the returned release() (WorkerSupervisor.hold). */
  hold(w: Worker): Promise<() => void> {
    return this.supervisor.hold(w);
  }

  /** Replaced now, stopped once its call is done or `drainMs` has passed (WorkerSupervisor.retireWorker). */
  retireWorker(w: Worker, reason: string, drainMs = 10000): void {
    this.supervisor.retireWorker(w, reason, drainMs);
  }

  workerByClientId(clientId: number): Worker | undefined {
    return this.supervisor.workerByClientId(clientId);
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

  /** calls taken so far, every function together (a counter that moves with work: common/idle-trim.ts) */
  get callsTaken(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.counters.calls;
    return n;
  }

  async stop(): Promise<void> {
    if (this.supervisor.stopping) return;
    await this.supervisor.stop();
    this.ipc.destroy();
  }
}
