/**
 * `nightfuse up` on one machine, in one process: the gateway and the node
 * agent share this process and its event loop, linked by function calls
 * (launcher/in-process-link.ts) instead of a TCP connection; the control
 * plane is still the gRPC stream over loopback, authenticated with the
 * stack's own token, so the cluster view, merges and commands are the same
 * code as between machines. The workers are this process's children. There is
 * no supervisor: if this process dies, its workers die with it (their fd-3
 * sockets close) and a restart on the same IPC root recognises what it left.
 */
import { runGateway, type RunningGateway } from '../gateway/main.js';
import { runLauncher, type RunningLauncher } from '../launcher/main.js';
import { InProcessLink } from '../launcher/in-process-link.js';

export interface OneProcessStack {
  gw: RunningGateway;
  ports: RunningGateway['ports'];
  /** SIGTERM drains first (no new calls, those in flight finish, up to drainMs), as separate processes do */
  stop(sig: string, drainMs: number): Promise<void>;
}

/**
 * Starts the gateway (its flags in `gatewayArgs`), then the launcher with the
 * flags `launcherArgs(ports)` gives once the gateway's ports are known.
 * The cluster token is read from NIGHTFUSE_CLUSTER_TOKEN, as by separate processes.
 */
export async function startOneProcess(gatewayArgs: string[], launcherArgs: (ports: RunningGateway['ports']) => string[]): Promise<OneProcessStack> {
  const gw = (await runGateway(gatewayArgs, true))!;
  let launcher: RunningLauncher | undefined;
  try {
    launcher = await runLauncher(launcherArgs(gw.ports), {
      link: (o) => new InProcessLink({ engines: gw.engines, nodeId: o.nodeId, instance: o.instance.toString('hex'), connections: o.connections, log: o.log, onDispatch: o.onDispatch, onConnected: o.onConnected }),
    });
  } catch (err) {
    await gw.stop();
    throw err;
  }
  return {
    gw,
    ports: gw.ports,
    async stop(sig: string, drainMs: number) {
      if (sig === 'SIGTERM') await gw.drain.drain(drainMs);
      await launcher?.stop(sig);
      await gw.stop();
    },
  };
}
