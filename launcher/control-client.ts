/**
 * The launcher's end of the control plane: attaches to the gateway, answers
 * its challenge with a hello (and, with a cluster token, a proof), checks the
 * gateway's proof in Welcome, then reports stats every `intervalMs` and at
 * once when asked, sends heartbeats, and hands commands to a handler. A
 * gateway silent for its announced silence_ms is given up on (`onGatewaySilent`:
 * the engine link reconnects too). Reconnects with backoff, like the gateway link.
 */
import * as grpc from '@grpc/grpc-js';
import { nonce, proof, proofMatches } from '../common/cluster-auth.js';
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
  /** cluster token ('' or absent: none) */
  token?: string;
  /** this launcher process's identity, the same as on the engine link */
  instance: Buffer;
  authTimeoutMs?: number;
  /** the gateway said nothing for its silence window: the engine link should reconnect too */
  onGatewaySilent?: () => void;
}

export class ControlClient {
  private client: grpc.Client | undefined;
  /** the attached stream (after Welcome) */
  private call: grpc.ClientDuplexStream<NodeReport, GatewayCommand> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoff = 100;
  private stopped = false;
  /** refusals and failed attaches by reason (wrong token, duplicate node id, …) */
  readonly refusals = new Map<string, number>();

  constructor(private readonly o: ControlClientOptions) {}

  get attached(): boolean {
    return this.call !== undefined;
  }

  start(): void {
    this.client = new ControlPlaneClient(`${this.o.host}:${this.o.port}`, grpc.credentials.createInsecure());
    this.attach();
  }

  /** Sends fresh stats now (on attach, after every merge event, before answering a command). */
  sendStats(): void {
    this.call?.write({ stats: this.stats() });
  }

  /** Sends a report now if attached (merge events); dropped otherwise. */
  send(r: NodeReport): void {
    this.call?.write(r);
  }

  /** Tells the gateway this node is leaving (no new calls); resolves once written, or at once when detached. */
  announceDrain(reason = 'shutting down'): Promise<void> {
    const call = this.call;
    if (!call) return Promise.resolve();
    return new Promise((resolve) => call.write({ drain: { reason } }, () => resolve()));
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

  private refused(reason: string, message: string): void {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
    this.o.log.error({ reason, gateway: `${this.o.host}:${this.o.port}` }, `control plane not attached: ${message}`);
  }

  private attach(): void {
    if (this.stopped || !this.client) return;
    const call = (this.client as unknown as { Attach(): grpc.ClientDuplexStream<NodeReport, GatewayCommand> }).Attach();
    const token = this.o.token ?? '';
    const ourNonce = nonce();
    let challenge: Buffer | undefined;
    let attached = false;
    let lastHeard = Date.now();
    let silenceMs = 0;
    let done = false;
    const authTimer = setTimeout(() => {
      this.refused('timeout', `no welcome from the gateway within ${this.o.authTimeoutMs ?? 5000} ms`);
      call.cancel();
    }, this.o.authTimeoutMs ?? 5000);
    const retry = (why: string) => {
      if (done) return;
      done = true;
      clearTimeout(authTimer);
      if (this.call === call) {
        this.call = undefined;
        clearInterval(this.timer);
      }
      if (this.stopped) return;
      this.o.log.debug({ why, backoffMs: this.backoff }, 'control plane detached; retrying');
      this.retry = setTimeout(() => this.attach(), this.backoff);
      this.backoff = Math.min(2000, this.backoff * 2);
    };
    call.on('data', (cmd: GatewayCommand) => {
      lastHeard = Date.now();
      if (!attached) {
        if (cmd.challenge && !challenge) {
          challenge = Buffer.from(cmd.challenge.nonce);
          const { nodeId, instance } = { nodeId: this.o.nodeId, instance: this.o.instance };
          call.write({
            hello: {
              node_id: nodeId, hostname: this.o.hostname, pid: process.pid, functions: [...this.o.agent.pools.values()].map((p) => p.entry.funcName),
              instance_id: instance, nonce: ourNonce, proof: token ? proof(token, 'control-node', [nodeId, instance, ourNonce, challenge]) : Buffer.alloc(0),
              stats: this.stats(),
            },
          });
          return;
        }
        if (cmd.welcome && challenge) {
          if (token && !proofMatches(proof(token, 'control-gateway', [this.o.nodeId, this.o.instance, ourNonce, challenge]), cmd.welcome.proof)) {
            this.refused('bad_gateway_proof', 'the gateway could not prove the cluster token (is it the same on both sides?)');
            call.cancel();
            return;
          }
          clearTimeout(authTimer);
          attached = true;
          this.call = call;
          this.backoff = 100;
          silenceMs = cmd.welcome.silence_ms;
          this.o.log.info({ gateway: `${this.o.host}:${this.o.port}`, authenticated: Boolean(token) }, 'attached to the control plane');
          this.sendStats(); // the gateway's view is current at once
          this.startTimers(call, () => lastHeard, silenceMs);
          return;
        }
        this.refused('protocol', 'the gateway did not follow the attach protocol');
        call.cancel();
        return;
      }
      if (cmd.heartbeat || cmd.challenge || cmd.welcome) return;
      this.o.onCommand?.(cmd, (r) => call.write(r));
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.UNAUTHENTICATED || err.code === grpc.status.ALREADY_EXISTS || err.code === grpc.status.RESOURCE_EXHAUSTED) {
        this.refused(grpc.status[err.code], err.details);
      }
      retry(err.message);
    });
    call.on('end', () => retry('stream ended'));
  }

  private startTimers(call: grpc.ClientDuplexStream<NodeReport, GatewayCommand>, lastHeard: () => number, silenceMs: number): void {
    clearInterval(this.timer);
    const interval = this.o.intervalMs ?? 1000;
    const beat = silenceMs > 0 ? Math.max(50, Math.floor(silenceMs / 4)) : interval;
    let sinceStats = 0;
    this.timer = setInterval(() => {
      if (silenceMs > 0 && Date.now() - lastHeard() > silenceMs) {
        this.o.log.warn({ silentMs: Date.now() - lastHeard() }, 'gateway silent on the control plane; reconnecting');
        call.cancel();
        this.o.onGatewaySilent?.();
        return;
      }
      sinceStats += beat;
      if (sinceStats >= interval) {
        sinceStats = 0;
        call.write({ stats: this.stats() });
      } else call.write({ heartbeat: { at_ms: Date.now() } });
    }, beat);
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    this.call?.end();
    this.client?.close();
  }
}
