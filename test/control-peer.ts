/** A control-plane peer for tests: attaches like a launcher would, or the way a test makes it misbehave. */
import * as grpc from '@grpc/grpc-js';
import { newInstanceId, nonce, proof } from '../common/cluster-auth.js';
import { ControlPlaneClient, type GatewayCommand, type NodeReport } from '../proto/control.js';

export type Stream = grpc.ClientDuplexStream<NodeReport, GatewayCommand>;

export interface PeerOutcome {
  /** the gateway welcomed it */
  welcomed: boolean;
  /** how the stream ended, if it did */
  code?: grpc.status;
  details?: string;
}

export class ControlPeer {
  readonly client: grpc.Client;
  constructor(readonly port: number) {
    this.client = new ControlPlaneClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  }

  open(): Stream {
    return (this.client as unknown as { Attach(): Stream }).Attach();
  }

  /**
   * Attaches as node `nodeId`; `hello` may rewrite the hello it sends (a wrong
   * proof, a missing field). Resolves once welcomed or refused.
   */
  attach(nodeId: number, token: string, opts: { instance?: Buffer; hello?: (h: NodeReport['hello'] & object) => void; functions?: string[] } = {}) {
    const s = this.open();
    const instance = opts.instance ?? newInstanceId();
    const mine = nonce();
    const outcome: PeerOutcome = { welcomed: false };
    const commands: GatewayCommand[] = [];
    const settled = new Promise<PeerOutcome>((resolve) => {
      s.on('data', (c: GatewayCommand) => {
        if (c.challenge) {
          const hello = {
            node_id: nodeId, hostname: 'impostor', pid: 1, functions: opts.functions ?? ['Foo', 'Bar'], instance_id: instance, nonce: mine,
            proof: token ? proof(token, 'control-node', [nodeId, instance, mine, Buffer.from(c.challenge.nonce)]) : Buffer.alloc(0),
          };
          opts.hello?.(hello);
          s.write({ hello });
        } else if (c.welcome) {
          outcome.welcomed = true;
          resolve(outcome);
        } else commands.push(c);
      });
      s.on('error', (e: grpc.ServiceError) => {
        outcome.code = e.code;
        outcome.details = e.details;
        resolve(outcome);
      });
      s.on('end', () => resolve(outcome));
    });
    // 'status' ends every call, whichever side ended it.
    const ended = new Promise<PeerOutcome>((r) => s.on('status', (st: grpc.StatusObject) => {
      outcome.code = st.code;
      outcome.details = st.details;
      r(outcome);
    }));
    return { stream: s, settled, commands, ended };
  }

  close(): void {
    this.client.close();
  }
}
