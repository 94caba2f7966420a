/**
 * The gateway's end of the control plane: accepts launchers' Attach streams,
 * keeps each node's latest report (the cluster-wide view and call graph), and
 * can push commands to a node and await its CommandResult.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/log.js';
import {
  ControlPlaneService, type CommandResult, type GatewayCommand, type Hello, type MergeEventMsg, type NodeReport, type Stats,
} from '../proto/control.js';

export interface AttachedNode {
  hello: Hello;
  stats: Stats | undefined;
  attachedAt: number;
  stream: grpc.ServerDuplexStream<NodeReport, GatewayCommand>;
}

export class ControlServer {
  readonly nodes = new Map<number, AttachedNode>();
  private readonly server = new grpc.Server();
  private nextCommandId = 1;
  private readonly waiting = new Map<number, (r: CommandResult) => void>();
  /** called when a node attaches (push it the policy) and for merge events */
  onAttach: ((n: AttachedNode) => void) | undefined;
  onMergeEvent: ((nodeId: number, e: MergeEventMsg) => void) | undefined;

  constructor(private readonly log: Logger) {
    this.server.addService(ControlPlaneService, { Attach: (s: grpc.ServerDuplexStream<NodeReport, GatewayCommand>) => this.attach(s) });
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
    });
  }

  private attach(stream: grpc.ServerDuplexStream<NodeReport, GatewayCommand>): void {
    let nodeId: number | undefined;
    stream.on('data', (r: NodeReport) => {
      if (r.hello) {
        nodeId = r.hello.node_id;
        const n: AttachedNode = { hello: r.hello, stats: undefined, attachedAt: Date.now(), stream };
        this.nodes.set(nodeId, n);
        this.log.info({ node: nodeId, host: r.hello.hostname, functions: r.hello.functions.length }, 'launcher attached to the control plane');
        this.onAttach?.(n);
        return;
      }
      if (nodeId === undefined) return;
      const n = this.nodes.get(nodeId);
      if (r.stats && n && n.stream === stream) n.stats = r.stats;
      if (r.merge_event) this.onMergeEvent?.(nodeId, r.merge_event);
      if (r.command_result) {
        const w = this.waiting.get(r.command_result.command_id);
        if (w) {
          this.waiting.delete(r.command_result.command_id);
          w(r.command_result);
        }
      }
    });
    const gone = () => {
      if (nodeId !== undefined && this.nodes.get(nodeId)?.stream === stream) {
        this.nodes.delete(nodeId);
        this.log.warn({ node: nodeId }, 'launcher detached from the control plane');
      }
    };
    stream.on('end', () => {
      gone();
      stream.end();
    });
    stream.on('error', gone);
    stream.on('close', gone);
  }

  nodeStats(): Map<number, Stats> {
    const m = new Map<number, Stats>();
    for (const [id, n] of this.nodes) if (n.stats) m.set(id, n.stats);
    return m;
  }

  /** Sends a command to one node; resolves with its result, or an error result on timeout. */
  command(nodeId: number, body: Omit<GatewayCommand, 'command_id'>, timeoutMs = 30000): Promise<CommandResult> {
    const n = this.nodes.get(nodeId);
    const id = this.nextCommandId++;
    if (!n) return Promise.resolve({ command_id: id, ok: false, error: `node ${nodeId} is not attached`, detail_json: '' });
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve({ command_id: id, ok: false, error: `node ${nodeId} did not answer within ${timeoutMs} ms`, detail_json: '' });
      }, timeoutMs);
      this.waiting.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      n.stream.write({ command_id: id, ...body });
    });
  }

  broadcast(body: Omit<GatewayCommand, 'command_id'>): void {
    for (const n of this.nodes.values()) n.stream.write({ command_id: 0, ...body });
  }

  async close(): Promise<void> {
    for (const n of this.nodes.values()) n.stream.end();
    await new Promise<void>((r) => this.server.tryShutdown(() => r()));
    this.server.forceShutdown();
  }
}
