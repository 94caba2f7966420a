/**
 * The launcher's end of the control plane: attaches to the gateway, says
 * hello, reports stats every `intervalMs`, and hands commands to a handler.
 * Reconnects with backoff, like the gateway link.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/log.js';
import { ControlPlaneClient, type GatewayCommand, type NodeReport, type Stats } from '../proto/control.js';
import type { NodeAgent } from './node-agent.js';

export interface ControlClientOptions {
  host: string;
  port: number;
  nodeId: number;
  hostname: string;
  agent: NodeAgent;
  log: Logger;
  intervalMs?: number;
  /** extra stats (merge state) from the merge orchestrator */
  extraStats?: () => Partial<Stats>;
  onCommand?: (cmd: GatewayCommand, reply: (r: NodeReport) => void) => void;
}

export class ControlClient {
  private client: grpc.Client | undefined;
  private call: grpc.ClientDuplexStream<NodeReport, GatewayCommand> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoff = 100;
  private stopped = false;
  /** the gateway has spoken on the current stream (deploy: readiness; issue 7 replaces this with its Welcome) */
  private heard = false;

  constructor(private readonly o: ControlClientOptions) {}

  start(): void {
    this.client = new ControlPlaneClient(`${this.o.host}:${this.o.port}`, grpc.credentials.createInsecure());
    this.attach();
  }

  /** Sends fresh stats now (before answering a command, so the gateway's view is current). */
  sendStats(): void {
    this.call?.write({ stats: this.stats() });
  }

  /** Sends a report now if attached (merge events); dropped otherwise. */
  send(r: NodeReport): void {
    this.call?.write(r);
  }

  stats(): Stats {
    const st = this.o.agent.status();
    return {
      at_ms: Date.now(),
      functions: st.map((f) => ({
        name: f.funcName, func_id: f.funcId, workers: f.workers, idle: f.idle, busy: f.busy, queued: f.queued,
        calls: f.counters.calls, failures: f.counters.failures, restarts: f.counters.restarts, pids: f.pids,
      })),
      edges: this.o.agent.edges.snapshot().map((e) => ({
        caller: e.caller, callee: e.callee, calls: e.calls, failures: e.failures, input_bytes: e.inputBytes,
        output_bytes: e.outputBytes, dispatch_delay_us: e.dispatchDelayUs, processing_us: e.processingUs,
        rpc_us: e.rpcUs, queue_us: e.queueUs, rate_per_sec: e.ratePerSec, local_calls: e.localCalls,
      })),
      merges: [],
      ...this.o.extraStats?.(),
    };
  }

  private attach(): void {
    if (this.stopped || !this.client) return;
    const call = (this.client as unknown as { Attach(): grpc.ClientDuplexStream<NodeReport, GatewayCommand> }).Attach();
    this.call = call;
    this.heard = false;
    let up = false;
    call.on('data', (cmd: GatewayCommand) => {
      if (this.call === call) this.heard = true;
      if (!up) {
        up = true;
        this.backoff = 100;
      }
      this.o.onCommand?.(cmd, (r) => call.write(r));
    });
    const retry = (why: string) => {
      if (this.call !== call) return;
      this.call = undefined;
      this.heard = false;
      clearInterval(this.timer);
      if (this.stopped) return;
      this.o.log.debug({ why, backoffMs: this.backoff }, 'control plane detached; retrying');
      this.retry = setTimeout(() => this.attach(), this.backoff);
      this.backoff = Math.min(2000, this.backoff * 2);
    };
    call.on('error', (err) => retry(err.message));
    call.on('end', () => retry('stream ended'));
    call.write({
      hello: { node_id: this.o.nodeId, hostname: this.o.hostname, pid: process.pid, functions: [...this.o.agent.pools.values()].map((p) => p.entry.funcName) },
    });
    call.write({ stats: this.stats() });
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      up = true;
      this.backoff = 100;
      call.write({ stats: this.stats() });
    }, this.o.intervalMs ?? 1000);
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    this.call?.end();
    this.client?.close();
  }

  // ---- deploy (issue 11): thin stand-ins until issue 7's control plane lands; the lead replaces them when merging.

  /** Attached: the gateway has answered on the current stream. */
  get attached(): boolean {
    return this.call !== undefined && this.heard;
  }

  /**
   * Tells the gateway this node is leaving, so it dispatches nothing more here.
   * The drain report is issue 7's message (proto/control.proto, not on main
   * yet): until it exists there is nothing to send, so this refuses, and the
   * launcher drains as it would behind a gateway without a control plane.
   */
  announceDrain(): Promise<void> {
    return Promise.reject(new Error('this control plane has no drain report yet (issue 7)'));
  }
}
