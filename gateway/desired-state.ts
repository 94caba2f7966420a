/**
 * What the operator asked for, held by the gateway so that launchers converge
 * to it whenever they (re)attach: the policy in force (PolicyStore) and the
 * manual merges kept here. Launchers own the actual state; on every attach the
 * gateway pushes the policy first, then each manual merge of a caller the node
 * runs, in the order they were asked for. The policy in force after a gateway
 * restart is its --merge_policy_file (or the defaults); manual merges survive
 * it through the launchers that run them.
 */
import type { Logger } from '../common/log.js';
import type { AttachedNode, ControlServer } from './control-server.js';

export interface DesiredMerge {
  caller: string;
  callee: string;
  /** '' = the policy's isolation for the pair */
  isolation: string;
  since: number;
}

const key = (caller: string, callee: string) => `${caller}\u0000${callee}`;

export class DesiredState {
  private readonly merges = new Map<string, DesiredMerge>();

  constructor(private readonly log: Logger, private readonly policyText: () => string) {}

  setMerge(caller: string, callee: string, isolation: string): void {
    this.merges.delete(key(caller, callee)); // re-asked: it moves to the end of the order
    this.merges.set(key(caller, callee), { caller, callee, isolation, since: Date.now() });
  }

  deleteMerge(caller: string, callee: string): boolean {
    return this.merges.delete(key(caller, callee));
  }

  list(): DesiredMerge[] {
    return [...this.merges.values()];
  }

  /**
   * Brings a node that just attached to the desired state. Manual merges it
   * already runs that the gateway does not know of (the gateway restarted) are
   * adopted first: the launchers remember what the operator asked for.
   */
  apply(control: ControlServer, n: AttachedNode): void {
    for (const m of n.stats?.merges ?? []) {
      if (m.manual && !this.merges.has(key(m.caller, m.callee))) {
        this.setMerge(m.caller, m.callee, m.isolation);
        this.log.info({ node: n.hello.node_id, caller: m.caller, callee: m.callee }, 'manual merge adopted from a launcher into the desired state');
      }
    }
    n.stream.write({ command_id: 0, policy: { policy_json: this.policyText() } });
    const nodeId = n.hello.node_id;
    for (const m of this.merges.values()) {
      if (!n.hello.functions.includes(m.caller)) continue;
      void control.command(nodeId, { merge: { caller: m.caller, callee: m.callee, isolation: m.isolation } }, 60000).then((r) => {
        if (r.ok) this.log.info({ node: nodeId, caller: m.caller, callee: m.callee }, 'manual merge re-applied on attach');
        else this.log.warn({ node: nodeId, caller: m.caller, callee: m.callee, err: r.error }, 'manual merge could not be re-applied on attach');
      });
    }
  }
}
