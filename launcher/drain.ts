/**
 * The launcher's readiness (its --probe_port) and its drain on SIGTERM.
 *
 * Ready: not draining, connected to the gateway (the engine link has come up;
 * with a control plane, attached to it too) and every function that has a
 * library or command here has its minWorkers ready.
 *
 * Drain: readiness goes false, the gateway is told first (the control plane's
 * drain report takes this node out of dispatch), then the calls the gateway
 * gave us finish, up to the deadline. A call the gateway dispatched just
 * before it read the report may still arrive (the engine link is another
 * connection, with its own ordering), so "finished" means nothing in flight
 * and nothing new for QUIET_MS. Without a control plane (a plain Nightcore
 * gateway) nothing can be told: the drain waits for a moment with nothing in
 * flight instead. Once closing, a late call is answered FAILED at once rather
 * than dropped.
 */
import { type Readiness, waitUntil, withTimeout } from '../common/lifecycle.js';
import type { Logger } from '../common/log.js';
import type { NodeAgent } from './node-agent.js';
import { CallTable } from '../common/call-table.js';

/** After the drain report: this long with nothing new means the gateway has stopped sending. */
export const QUIET_MS = 250;
/** How long the drain report may take before the drain goes on without it. */
export const ANNOUNCE_TIMEOUT_MS = 2000;

export interface LauncherDrainOptions {
  agent: NodeAgent;
  log: Logger;
  /** tells the gateway to take this node out of dispatch; absent without a control plane */
  announce?: () => Promise<void>;
  /** attached to the control plane (absent without one) */
  controlAttached?: () => boolean;
}

export class LauncherDrain {
  draining = false;
  /** after the drain (or on a second signal, which cuts it short): new calls are refused */
  closing = false;
  private engineUp = false;
  /** external calls in flight by full call id (a count: the gateway may reuse an id after a restart) */
  private readonly inflight = new CallTable<number>();
  private lastDispatchAt = 0;

  constructor(private readonly o: LauncherDrainOptions) {}

  get inFlight(): number {
    return this.inflight.size;
  }

  /** The engine link connected (GatewayLink's onConnected). */
  engineConnected(): void {
    this.engineUp = true;
  }

  /** A DISPATCH arrived; false when closing (answer it FAILED). */
  dispatched(id: bigint): boolean {
    if (this.closing) return false;
    this.inflight.set(id, (this.inflight.get(id) ?? 0) + 1);
    this.lastDispatchAt = Date.now();
    return true;
  }

  /** A COMPLETE/FAILED for `id` is being sent to the gateway. */
  answered(id: bigint): void {
    const n = this.inflight.get(id);
    if (n === undefined) return;
    if (n <= 1) this.inflight.delete(id);
    else this.inflight.set(id, n - 1);
  }

  readiness(): Readiness {
    if (this.draining) return { ok: false, reason: 'draining' };
    if (!this.engineUp) return { ok: false, reason: 'not connected to the gateway yet' };
    if (this.o.controlAttached && !this.o.controlAttached()) return { ok: false, reason: 'not attached to the control plane' };
    const short: string[] = [];
    for (const p of this.o.agent.pools.values()) {
      if (!p.runnable) continue;
      const ready = this.o.agent.readyWorkersOf(p.entry.funcName).length;
      if (ready < p.minWorkers) short.push(`${p.entry.funcName} ${ready}/${p.minWorkers}`);
    }
    if (short.length > 0) return { ok: false, reason: `workers starting: ${short.join(', ')}` };
    return { ok: true, reason: 'attached, workers up' };
  }

  /** Tells the gateway, then waits for the calls in flight; resolves with how many were left at the deadline. */
  async drain(timeoutMs: number): Promise<number> {
    this.draining = true;
    const { log } = this.o;
    let told = false;
    if (this.o.announce) {
      const r = await withTimeout(this.o.announce().then(() => true, (err: Error) => {
        log.warn({ err: err.message }, 'drain report to the gateway failed');
        return false;
      }), ANNOUNCE_TIMEOUT_MS);
      told = r === true;
      if (r === undefined) log.warn({ timeoutMs: ANNOUNCE_TIMEOUT_MS }, 'drain report to the gateway not sent in time');
    }
    const quiet = told ? QUIET_MS : 0;
    log.info({ inFlight: this.inflight.size, timeoutMs, gatewayTold: told }, 'draining: waiting for the calls in flight');
    // `closing` set meanwhile (a second signal) cuts the wait short.
    const done = await waitUntil(() => this.closing || (this.inflight.size === 0 && Date.now() - this.lastDispatchAt >= quiet), timeoutMs);
    this.closing = true;
    const left = this.inflight.size;
    if (done) log.info('drained: every call in flight finished');
    else log.warn({ left, timeoutMs }, 'drain deadline passed with calls in flight; they fail now');
    return left;
  }
}
