/** A whole stack inside the test process (gateway, node agent, merge control); workers are our children. */
import { pino } from 'pino';
import { loadFuncConfig } from '../common/func-config.js';
import { WORKER_HOST } from '../common/paths.js';
import { startGateway, type RunningGateway } from '../gateway/main.js';
import { GatewayLink } from '../launcher/gateway-link.js';
import { MergeControl } from '../launcher/merge-control.js';
import { NodeAgent } from '../launcher/node-agent.js';
import { FIXTURE_CONFIG, waitFor } from './helpers.js';

export interface InProcessStack {
  gw: RunningGateway;
  agent: NodeAgent;
  link: GatewayLink;
  merge: MergeControl;
  httpPort: number;
  faults: { worker: number; callee: string; signal: number }[];
  stop(): Promise<void>;
}

let seq = 0;

export async function startInProcessStack(configPath = FIXTURE_CONFIG): Promise<InProcessStack> {
  const log = pino({ level: process.env.NIGHTFUSE_TEST_LOG ?? 'silent' });
  const config = loadFuncConfig(configPath);
  const gw = await startGateway({
    config, listenAddr: '127.0.0.1', httpPort: 0, grpcPort: 0, engineConnPort: 0, controlPort: -1, maxRunningRequests: 0,
    lbPerFnRoundRobin: false, lbPickLeastLoad: false, maxBodyBytes: 1 << 24, callTimeoutMs: 20000, log,
  });
  const agent = new NodeAgent({ config, ipcRoot: `/dev/shm/nightfuse-inproc-${process.pid}-${seq++}`, workerHost: WORKER_HOST, log });
  const link = new GatewayLink({ host: '127.0.0.1', port: gw.ports.engine, connections: 2, nodeId: 1, log, onDispatch: (m, c) => agent.dispatchExternal(m, c) });
  agent.sendToGateway = (conn, type, id, value, payload) => void link.sendResult(conn, type, id, value, payload);
  const faults: InProcessStack['faults'] = [];
  const merge = new MergeControl({ agent, log, onFault: (s, f) => faults.push({ worker: s.worker.clientId, callee: f.callee, signal: f.signal }) });
  await agent.start();
  await merge.start();
  await agent.whenReady();
  link.start();
  await waitFor(() => gw.engines.nodes.size === 1, 5000, 'node connected');
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
