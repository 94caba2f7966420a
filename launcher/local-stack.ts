/**
 * A whole single-node stack inside one process: gateway, node agent and merge
 * control, with real worker processes (our children). For tests and
 * benchmarks that need to reach into the node agent; `nightfuse up` runs the
 * same parts as separate processes instead.
 */
import { pino } from 'pino';
import { loadFuncConfig } from '../common/func-config.js';
import { WORKER_HOST } from '../common/paths.js';
import { startGateway, type RunningGateway } from '../gateway/main.js';
import { GatewayLink } from './gateway-link.js';
import { MergeControl } from './merge-control.js';
import { NodeAgent } from './node-agent.js';

export interface LocalStack {
  gw: RunningGateway;
  agent: NodeAgent;
  link: GatewayLink;
  merge: MergeControl;
  httpPort: number;
  faults: { worker: number; callee: string; signal: number }[];
  stop(): Promise<void>;
}

let seq = 0;

export async function startLocalStack(configPath: string): Promise<LocalStack> {
  const log = pino({ level: process.env.NIGHTFUSE_TEST_LOG ?? 'silent' });
  const config = loadFuncConfig(configPath);
  const gw = await startGateway({
    config, listenAddr: '127.0.0.1', httpPort: 0, grpcPort: 0, engineConnPort: 0, controlPort: -1, maxRunningRequests: 0,
    lbPerFnRoundRobin: false, lbPickLeastLoad: false, maxBodyBytes: 1 << 24, callTimeoutMs: 20000, log,
  });
  const agent = new NodeAgent({ config, ipcRoot: `/dev/shm/nightfuse-local-${process.pid}-${seq++}`, workerHost: WORKER_HOST, log });
  const link = new GatewayLink({ host: '127.0.0.1', port: gw.ports.engine, connections: 2, nodeId: 1, log, onDispatch: (m, c) => agent.dispatchExternal(m, c) });
  agent.sendToGateway = (conn, type, id, value, payload) => void link.sendResult(conn, type, id, value, payload);
  const faults: LocalStack['faults'] = [];
  const merge = new MergeControl({ agent, log, onFault: (s, f) => faults.push({ worker: s.worker.clientId, callee: f.callee, signal: f.signal }) });
  await agent.start();
  await merge.start();
  await agent.whenReady();
  link.start();
  for (let i = 0; gw.engines.nodes.size === 0; i++) {
    if (i > 250) throw new Error('the node agent did not connect to the gateway');
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    gw, agent, link, merge, httpPort: gw.ports.http, faults,
    async stop() {
      link.stop();
      await merge.stop();
      await agent.stop();
      await gw.stop();
    },
  };
}
