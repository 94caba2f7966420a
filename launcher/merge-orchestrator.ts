/**
 * Run-time merging on one node: a decision loop over the edge statistics, and
 * the merges and unmerges it (or an operator) decides, applied to every worker
 * of the caller, one at a time, including workers started later.
 *
 * Per tick (default 1 s): fold the merge runtimes' local-call counters into the
 * edge statistics; for each edge compute its call rate and the share of the
 * caller's processing time spent waiting on this edge's IPC; merge an edge the
 * policy allows once it has been hot for `sustainSec`; unmerge a merged edge
 * that stayed below `unmergeBelowCallsPerSec` for `sustainSec`, whose callee
 * library changed, that the policy now forbids, or whose callee faulted
 * (that worker is also replaced: NodeAgent.retireWorker). After an unmerge the pair is held back for `cooldownSec`.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { Logger } from '../common/log.js';
import { DEFAULT_POLICY, type PairSettings, type Policy } from '../common/policy.js';
import type { Isolation } from '../proto/merge-wire.js';
import type { MergeControl } from './merge-control.js';
import type { NodeAgent, Worker } from './node-agent.js';

export type PairStateName = 'merging' | 'merged' | 'unmerging';

export interface PairState {
  caller: string;
  callee: string;
  state: PairStateName;
  isolation: Isolation;
  instances: number;
  library: string;
  libHash: string;
  since: number;
  manual: boolean;
  reason: string;
  /** per caller worker (client id): merged, or the error */
  workers: Map<number, { ok: boolean; error?: string; ms: number }>;
  /** decision -> route in force, per worker (ms) */
  applyMs: number[];
  coldSince?: number;
}

export interface MergeEvent {
  atMs: number;
  kind: 'merged' | 'unmerged' | 'failed' | 'fault' | 'held_back' | 'decision';
  caller: string;
  callee: string;
  isolation: string;
  reason: string;
  detail: Record<string, unknown>;
}

interface EdgeWindow {
  calls: number;
  rpcUs: number;
  callerProcUs: number;
  at: number;
  hotSince?: number;
  rate: number;
  share: number;
}

const key = (caller: string, callee: string) => `${caller}\u0000${callee}`;

export class MergeOrchestrator {
  policy: Policy = DEFAULT_POLICY;
  readonly pairs = new Map<string, PairState>();
  private readonly heldUntil = new Map<string, number>();
  private readonly windows = new Map<string, EdgeWindow>();
  private readonly libHashes = new Map<string, { mtimeMs: number; size: number; hash: string }>();
  readonly decisions = { merge: 0, unmerge: 0, failed: 0, fault: 0 };
  /** decision rounds completed (reported, so a "not merged" result can wait for rounds that ran) */
  ticks = 0;
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  /** merges and unmerges run one at a time, whoever asked */
  private ops: Promise<unknown> = Promise.resolve();
  /** per worker (client id): callee name -> the pairs that need it loaded there */
  private readonly loaded = new Map<number, Map<string, Set<string>>>();
  enabled = true;

  constructor(
    private readonly agent: NodeAgent,
    private readonly control: MergeControl,
    private readonly log: Logger,
    private readonly onEvent: (e: MergeEvent) => void = () => {},
  ) {}

  start(tickMs = 1000): void {
    this.timer = setInterval(() => void this.tick(), tickMs);
    this.agent.onWorkerReady = () => void this.serial(() => this.reconcile());
    this.agent.onWorkerExit = (w) => {
      this.loaded.delete(w.clientId);
      for (const p of this.pairs.values()) p.workers.delete(w.clientId);
    };
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.ops.then(fn, fn);
    this.ops = run.catch(() => undefined);
    return run;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  setPolicy(p: Policy): void {
    this.policy = p;
    this.log.info({ rules: p.doc.rules?.length ?? 0, defaults: p.settings }, 'merge policy in force');
    void this.tick();
  }

  private event(kind: MergeEvent['kind'], p: { caller: string; callee: string; isolation?: string }, reason: string, detail: Record<string, unknown> = {}): void {
    const e: MergeEvent = { atMs: Date.now(), kind, caller: p.caller, callee: p.callee, isolation: p.isolation ?? '', reason, detail };
    this.onEvent(e);
  }

  libraryHash(path: string): string {
    const st = statSync(path);
    const c = this.libHashes.get(path);
    if (c && c.mtimeMs === st.mtimeMs && c.size === st.size) return c.hash;
    const hash = createHash('sha256').update(readFileSync(path)).digest('hex');
    this.libHashes.set(path, { mtimeMs: st.mtimeMs, size: st.size, hash });
    return hash;
  }

  private fn(name: string) {
    return this.agent.config.byName.get(name);
  }

  /** Why a pair may not be merged now, or undefined. */
  private refusal(caller: string, callee: string, settings: PairSettings, sameGroup: boolean, manual: boolean): string | undefined {
    if (!this.enabled) return 'merging is off on this node (--merging=false)';
    const a = this.fn(caller);
    const b = this.fn(callee);
    if (!a || !b) return `unknown function ${!a ? caller : callee}`;
    if (caller === callee) return 'a function cannot be merged into itself';
    if (!a.library) return `${caller} has no library (only nightfuse-worker hosts can be merged into)`;
    if (!b.library) return `${callee} has no library to load`;
    if (!sameGroup) return `different trust groups (${this.policy.trustGroup(caller)} / ${this.policy.trustGroup(callee)})`;
    if (settings.mode === 'never') return 'policy says never';
    const held = this.heldUntil.get(key(caller, callee));
    if (!manual && held && held > Date.now()) return `held back for ${Math.ceil((held - Date.now()) / 1000)} s more`;
    // The caller's other merged callees (a manual re-merge replaces this pair, so it does not count).
    const mine = [...this.pairs.values()].filter((p) => p.caller === caller && p.callee !== callee);
    if (mine.length >= this.policy.limits.maxCalleesPerWorker) return `limit of ${this.policy.limits.maxCalleesPerWorker} merged callees per worker reached`;
    const memMiB = (p: { library: string; instances: number }) => (statSync(p.library).size + p.instances * 256 * 1024) / (1 << 20);
    const extra = mine.reduce((s, p) => s + memMiB(p), 0) + memMiB({ library: b.library, instances: settings.instances });
    if (extra > this.policy.limits.maxExtraMemoryMiB) return `estimated extra memory ${extra.toFixed(1)} MiB over the limit of ${this.policy.limits.maxExtraMemoryMiB} MiB`;
    return undefined;
  }

  /** Merge by hand (admin API); resolves once in force in every worker of the caller. */
  mergeByHand(caller: string, callee: string, isolation?: Isolation): Promise<PairState> {
    return this.serial(() => this.mergeByHandNow(caller, callee, isolation));
  }

  private async mergeByHandNow(caller: string, callee: string, isolation?: Isolation): Promise<PairState> {
    const { settings, sameGroup } = this.policy.forPair(caller, callee);
    const why = this.refusal(caller, callee, settings, sameGroup, true);
    if (why) throw new Error(`cannot merge ${callee} into ${caller}: ${why}`);
    const existing = this.pairs.get(key(caller, callee));
    if (existing) {
      if (existing.state === 'merged' && (!isolation || isolation === existing.isolation)) return existing;
      await this.unmergeNow(caller, callee, 'replaced by a manual merge', false);
    }
    return this.merge(caller, callee, { ...settings, isolation: isolation ?? settings.isolation }, 'manual merge', true);
  }

  unmergeByHand(caller: string, callee: string): Promise<void> {
    return this.serial(async () => {
      if (!this.pairs.has(key(caller, callee))) throw new Error(`${callee} is not merged into ${caller}`);
      await this.unmergeNow(caller, callee, 'manual unmerge', true);
    });
  }

  private async merge(caller: string, callee: string, s: PairSettings, reason: string, manual: boolean, detail: Record<string, unknown> = {}): Promise<PairState> {
    const library = this.fn(callee)!.library!;
    const p: PairState = {
      caller, callee, state: 'merging', isolation: s.isolation, instances: s.instances, library, libHash: this.libraryHash(library),
      since: Date.now(), manual, reason, workers: new Map(), applyMs: [],
    };
    this.pairs.set(key(caller, callee), p);
    this.decisions.merge++;
    this.log.info({ decision: 'merge', caller, callee, isolation: s.isolation, reason, ...detail }, `merging ${callee} into ${caller}`);
    this.event('decision', p, reason, { action: 'merge', ...detail });
    // Every live worker of the caller (and of functions the caller runs merged in), including ones started meanwhile.
    await this.reconcile();
    const own = new Set(this.agent.readyWorkersOf(caller).map((w) => w.clientId));
    const ok = [...p.workers.entries()].filter(([id, x]) => x.ok && own.has(id)).length;
    if (ok === 0) {
      this.decisions.failed++;
      const errors = [...p.workers.values()].map((x) => x.error).filter(Boolean);
      this.pairs.delete(key(caller, callee));
      this.holdBack(p, 'merge failed');
      this.event('failed', p, errors[0] ?? 'no worker to merge into', { errors });
      throw new Error(`merging ${callee} into ${caller} failed: ${errors[0] ?? 'no running worker'}`);
    }
    p.state = 'merged';
    this.event('merged', p, reason, { workers: ok, applyMs: p.applyMs });
    return p;
  }

  /**
   * The functions whose workers run `fn`'s code: fn itself, and every caller
   * fn is merged into (transitively). A merged pair B->C applies in all of
   * them, so C is local to B inside A's process when A->B is merged too.
   */
  private hostsOf(fn: string, seen = new Set<string>()): Set<string> {
    if (seen.has(fn)) return seen;
    seen.add(fn);
    for (const p of this.pairs.values()) if (p.callee === fn && p.state !== 'unmerging') this.hostsOf(p.caller, seen);
    return seen;
  }

  /** The caller a callee loaded in a worker serves: the pair that put it there (the host's own pair first). */
  callerOf(clientId: number, callee: string): string | undefined {
    const refs = this.loaded.get(clientId)?.get(callee);
    if (!refs || refs.size === 0) return undefined;
    const host = this.agent.workerByClientId(clientId)?.pool.entry.funcName;
    const pairs = [...refs].map((k) => this.pairs.get(k)).filter((p): p is PairState => p !== undefined);
    return (pairs.find((p) => p.caller === host) ?? pairs[0])?.caller;
  }

  private targetsOf(p: PairState): Worker[] {
    return [...this.hostsOf(p.caller)].flatMap((f) => this.agent.readyWorkersOf(f));
  }

  /** Brings every pair to exactly its target workers. */
  private async reconcile(): Promise<void> {
    for (const p of [...this.pairs.values()]) {
      if (p.state === 'unmerging') continue;
      const targets = this.targetsOf(p);
      const ids = new Set(targets.map((w) => w.clientId));
      for (const w of targets) if (!p.workers.has(w.clientId)) await this.applyTo(p, w);
      for (const id of [...p.workers.keys()]) if (!ids.has(id)) await this.release(p, id);
    }
  }

  private async applyTo(p: PairState, w: Worker): Promise<void> {
    const t0 = performance.now();
    const k = key(p.caller, p.callee);
    const here = this.loaded.get(w.clientId) ?? new Map<string, Set<string>>();
    this.loaded.set(w.clientId, here);
    const refs = here.get(p.callee) ?? new Set<string>();
    try {
      if (refs.size === 0) {
        const s = await this.control.attach(w);
        await s.load(p.callee, p.library, p.isolation, p.instances);
        await s.route(p.callee, true);
      }
      refs.add(k);
      here.set(p.callee, refs);
      const ms = performance.now() - t0;
      p.workers.set(w.clientId, { ok: true, ms });
      p.applyMs.push(ms);
      if (w.pool.entry.funcName !== p.caller) {
        this.log.info({ caller: p.caller, callee: p.callee, host: w.pool.entry.funcName, worker: w.clientId }, 'merge applied inside a worker that runs the caller merged');
      }
    } catch (err) {
      p.workers.set(w.clientId, { ok: false, error: (err as Error).message, ms: performance.now() - t0 });
      this.log.error({ caller: p.caller, callee: p.callee, worker: w.clientId, err: (err as Error).message }, 'merge into a worker failed');
    }
  }

  /** Drops the pair from a worker; unloads the callee there when no pair needs it any more. */
  private async release(p: PairState, clientId: number): Promise<void> {
    const entry = p.workers.get(clientId);
    p.workers.delete(clientId);
    const refs = this.loaded.get(clientId)?.get(p.callee);
    refs?.delete(key(p.caller, p.callee));
    if (!entry?.ok || (refs && refs.size > 0)) return;
    this.loaded.get(clientId)?.delete(p.callee);
    const s = this.control.sessions.get(clientId);
    // A retiring worker is left alone: an UNLOAD there could need a lock the fault left held.
    if (!s || s.closed || this.agent.workerByClientId(clientId)?.retiring) return;
    try {
      await s.route(p.callee, false);
      await s.unload(p.callee);
    } catch (err) {
      this.log.warn({ caller: p.caller, callee: p.callee, worker: clientId, err: (err as Error).message }, 'unmerge in a worker failed (its route is off)');
    }
  }

  private holdBack(p: { caller: string; callee: string }, why: string): void {
    const { settings } = this.policy.forPair(p.caller, p.callee);
    this.heldUntil.set(key(p.caller, p.callee), Date.now() + settings.cooldownSec * 1000);
    this.event('held_back', p, why, { seconds: settings.cooldownSec });
  }

  unmerge(caller: string, callee: string, reason: string, holdBack = true): Promise<void> {
    return this.serial(() => this.unmergeNow(caller, callee, reason, holdBack));
  }

  private async unmergeNow(caller: string, callee: string, reason: string, holdBack = true): Promise<void> {
    const p = this.pairs.get(key(caller, callee));
    if (!p || p.state === 'unmerging') return;
    p.state = 'unmerging';
    this.decisions.unmerge++;
    this.log.info({ decision: 'unmerge', caller, callee, reason }, `unmerging ${callee} from ${caller}`);
    for (const clientId of [...p.workers.keys()]) await this.release(p, clientId);
    this.pairs.delete(key(caller, callee));
    await this.reconcile(); // pairs that ran inside this caller only because of this merge leave too
    this.event('unmerged', p, reason);
    if (holdBack) this.holdBack(p, reason);
  }

  /**
   * A callee faulted in a worker: the worker may be damaged (a lock the callee
   * held stays held), so it is drained and replaced; every pair that put the
   * callee there is unmerged and held back.
   */
  onFault(clientId: number, callee: string, signal: number): void {
    this.decisions.fault++;
    const pairs = [...this.pairs.values()].filter((p) => p.callee === callee && p.workers.has(clientId));
    const w = this.agent.workerByClientId(clientId);
    if (w) this.agent.retireWorker(w, `merged callee ${callee} faulted (signal ${signal})`);
    if (pairs.length === 0 && w) pairs.push({ caller: w.pool.entry.funcName, callee } as PairState);
    for (const p of pairs) {
      this.event('fault', p, `callee raised signal ${signal} in worker ${clientId}`, { signal, worker: clientId });
      void this.unmerge(p.caller, callee, `callee faulted (signal ${signal})`, true);
    }
  }

  /** One decision round. */
  async tick(): Promise<void> {
    if (this.busy || !this.enabled) return;
    this.busy = true;
    try {
      await this.control.collect();
      const now = Date.now();
      // A caller's time: in its own workers, and merged inside its callers.
      const procUs = new Map([...this.agent.pools.values()].map((p) => [p.entry.funcName, p.counters.processingUs + this.agent.edges.localProcessingOf(p.entry.funcName)]));
      for (const e of this.agent.edges.snapshot(now)) {
        const k = key(e.caller, e.callee);
        const prev = this.windows.get(k);
        const w: EdgeWindow = { calls: e.calls, rpcUs: e.rpcUs, callerProcUs: procUs.get(e.caller) ?? 0, at: now, rate: 0, share: 0, hotSince: prev?.hotSince };
        if (prev) {
          const dt = (now - prev.at) / 1000;
          w.rate = dt > 0 ? (e.calls - prev.calls) / dt : 0;
          const dProc = w.callerProcUs - prev.callerProcUs;
          w.share = dProc > 0 ? Math.min(1, (e.rpcUs - prev.rpcUs) / dProc) : 0;
        }
        this.windows.set(k, w);
        await this.decide(e.caller, e.callee, w, e, now);
      }
      await this.checkMerged(now);
      this.ticks++;
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'merge decision round failed');
    } finally {
      this.busy = false;
    }
  }

  private async decide(caller: string, callee: string, w: EdgeWindow, e: { calls: number; rpcUs: number; processingUs: number; localCalls: number }, now: number): Promise<void> {
    if (!this.enabled) return;
    const merged = this.pairs.get(key(caller, callee));
    const { settings, source, sameGroup } = this.policy.forPair(caller, callee);
    if (merged) {
      if (merged.state !== 'merged') return;
      if (!sameGroup || settings.mode === 'never') return void (await this.unmerge(caller, callee, `policy (${source}): ${!sameGroup ? 'different trust groups' : 'never'}`));
      if (settings.mode !== 'auto' || merged.manual) return;
      if (w.rate < settings.unmergeBelowCallsPerSec) {
        merged.coldSince ??= now;
        if (now - merged.coldSince >= settings.sustainSec * 1000) {
          await this.unmerge(caller, callee, `cooled down: ${w.rate.toFixed(1)} calls/s < ${settings.unmergeBelowCallsPerSec} for ${settings.sustainSec} s`);
        }
      } else merged.coldSince = undefined;
      return;
    }
    if (settings.mode === 'never' || !sameGroup) return;
    const ipcCalls = e.calls - e.localCalls;
    const avgRpc = ipcCalls > 0 ? e.rpcUs / ipcCalls : 0;
    const avgProc = ipcCalls > 0 ? e.processingUs / ipcCalls : 0;
    const benefitUsPerSec = w.rate * Math.max(0, avgRpc - avgProc);
    const hot = settings.mode === 'always' || (w.rate >= settings.minCallsPerSec && w.share >= settings.minIpcShare);
    if (!hot) {
      w.hotSince = undefined;
      return;
    }
    w.hotSince ??= now;
    if (settings.mode === 'auto' && now - w.hotSince < settings.sustainSec * 1000) return;
    const why = this.refusal(caller, callee, settings, sameGroup, false);
    if (why) return;
    const detail = {
      policy: source, callsPerSec: Number(w.rate.toFixed(1)), ipcShare: Number(w.share.toFixed(3)),
      avgRpcUs: Number(avgRpc.toFixed(1)), avgCalleeUs: Number(avgProc.toFixed(1)), benefitUsPerSec: Math.round(benefitUsPerSec),
    };
    const reason = settings.mode === 'always' ? `policy (${source}) says always` : `hot for ${settings.sustainSec} s: ${detail.callsPerSec} calls/s, ${(w.share * 100).toFixed(0)}% of ${caller}'s time in IPC to ${callee}, saves ~${detail.benefitUsPerSec} µs/s`;
    try {
      await this.serial(() => (this.pairs.has(key(caller, callee)) ? Promise.resolve(undefined) : this.merge(caller, callee, settings, reason, false, detail)));
    } catch (err) {
      this.log.warn({ caller, callee, err: (err as Error).message }, 'automatic merge failed');
    }
  }

  /** Library changes and policy changes for merged pairs; also pairs with no edge traffic at all. */
  private async checkMerged(now: number): Promise<void> {
    for (const p of [...this.pairs.values()]) {
      if (p.state !== 'merged') continue;
      let hash = '';
      try {
        hash = this.libraryHash(p.library);
      } catch {
        hash = 'missing';
      }
      if (hash !== p.libHash) {
        await this.unmerge(p.caller, p.callee, `callee library ${p.library} changed (content hash)`);
        continue;
      }
      const { settings, sameGroup } = this.policy.forPair(p.caller, p.callee);
      if (!sameGroup || settings.mode === 'never') {
        await this.unmerge(p.caller, p.callee, 'policy no longer allows it');
        continue;
      }
      if (!this.windows.has(key(p.caller, p.callee)) && !p.manual && settings.mode === 'auto') {
        p.coldSince ??= now;
        if (now - p.coldSince >= settings.sustainSec * 1000) await this.unmerge(p.caller, p.callee, 'no calls');
      }
    }
  }

  mergeStates(): { caller: string; callee: string; isolation: string; workers_merged: number; workers_total: number; since_ms: number; state: string; manual: boolean }[] {
    return [...this.pairs.values()].map((p) => ({
      caller: p.caller, callee: p.callee, isolation: p.isolation,
      workers_merged: [...p.workers.values()].filter((x) => x.ok).length,
      workers_total: this.targetsOf(p).length, since_ms: p.since, state: p.state, manual: p.manual,
    }));
  }
}
