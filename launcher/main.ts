/** `nightfuse launcher`: the node agent as its own process. */
import { hostname } from 'node:os';
import { loadFuncConfig } from '../common/func-config.js';
import { flagHelp, NIGHTCORE_LIBRARY_FLAGS, parseFlags, secretFlag, type FlagSpecs } from '../common/flags.js';
import { createLogger } from '../common/log.js';
import { WORKER_HOST } from '../common/paths.js';
import { MessageType } from '../proto/wire.js';
import { GatewayLink, type GatewayLinkOptions, type NodeLink } from './gateway-link.js';
import type { Logger } from '../common/log.js';
import { hostnameNodeId } from './ipc-files.js';
import { NodeAgent } from './node-agent.js';
import { ControlClient } from './control-client.js';
import { MergeControl } from './merge-control.js';
import { MergeOrchestrator, type MergeEvent } from './merge-orchestrator.js';
import { DEFAULT_POLICY, loadPolicy, parsePolicy } from '../common/policy.js';
import type { GatewayCommand, NodeReport } from '../proto/control.js';
import type { Isolation } from '../proto/merge-wire.js';
import { createProbeServer, listenOn } from '../common/lifecycle.js';
import { LauncherDrain } from './drain.js';
import { clearAmbientCapabilities } from './spawn.js';
import { trimWhenIdle } from '../common/idle-trim.js';
import { newInstanceId, checkClusterToken } from '../common/cluster-auth.js';

export const LAUNCHER_FLAGS = {
  gateway_addr: { type: 'string', default: '127.0.0.1', help: 'gateway host (engine flag)' },
  gateway_port: { type: 'int', default: 10007, help: "gateway's engine connection port (engine flag)", min: 1, max: 65535 },
  num_io_workers: { type: 'int', default: 1, help: 'engine I/O workers; connections = this × gateway_conn_per_worker', min: 1 },
  gateway_conn_per_worker: { type: 'int', default: 2, help: 'gateway connections per I/O worker', min: 1 },
  node_id: { type: 'int', default: -1, help: 'node id; -1: hash of --node_name, else of the host name, as Nightcore' },
  node_name: { type: 'string', default: '', help: "name to hash into the node id instead of the host name (Kubernetes: the node's name)" },
  root_path_for_ipc: { type: 'string', default: '/dev/shm/faas_ipc', help: 'IPC root (recreated empty at start)' },
  func_config_file: { type: 'string', default: '', help: 'func_config.json (required)' },
  fprocess_output_dir: { type: 'string', default: '', help: 'write worker stdout/stderr to <dir>/<func>_worker_<n>.std{out,err}' },
  control_port: { type: 'int', default: 10008, help: "gateway's Nightfuse control-plane port (0: do not attach)", min: 0, max: 65535 },
  worker_host: { type: 'string', default: WORKER_HOST, help: 'worker host binary for `library` entries' },
  engine_tcp_port: { type: 'int', default: -1, help: 'Nightcore engine over TCP: not supported (must stay -1)' },
  func_worker_use_engine_socket: { type: 'bool', default: false, help: 'not supported (must stay false)' },
  use_fifo_for_nested_call: { type: 'bool', default: false, help: 'not supported (must stay false)' },
  merging: { type: 'bool', default: true, help: 'run-time merging (the policy comes from the gateway, or --merge_policy_file)' },
  merge_policy_file: { type: 'string', default: '', help: 'merge policy to use until (or without) the gateway pushing one' },
  merge_tick_ms: { type: 'int', default: 1000, help: 'how often the merge decision loop runs', min: 50 },
  probe_port: { type: 'int', default: 0, help: 'HTTP port for /healthz and /readyz (0: no probe port)', min: 0, max: 65535 },
  probe_addr: { type: 'string', default: '127.0.0.1', help: 'address of the probe port' },
  drain_timeout_ms: { type: 'int', default: 25000, help: 'on SIGTERM: leave dispatch, wait this long for the calls in flight, then exit', min: 0 },
  cluster_token: { type: 'string', default: '', help: "the gateway's cluster token (or NIGHTFUSE_CLUSTER_TOKEN); without one the launcher speaks Nightcore's plain handshake" },
  cluster_token_file: { type: 'string', default: '', help: 'read the cluster token from this file' },
  cluster_auth_timeout_ms: { type: 'int', default: 5000, help: 'the gateway must admit a connection within this', min: 100 },
  v: { type: 'int', default: 0, help: 'verbosity (>0: debug logs)' },
} satisfies FlagSpecs;

/** Nightcore's library flags and launcher flags this node agent does not implement: accepted, ignored. */
export const IGNORED_ENGINE_FLAGS: readonly string[] = [...NIGHTCORE_LIBRARY_FLAGS, 'fprocess_mode', 'fprocess_working_dir'];

/** How `nightfuse up` runs a launcher inside its own process (launcher/one-process.ts). */
export interface LauncherEmbedding {
  /** the link to the gateway, instead of TCP connections */
  link(o: { nodeId: number; instance: Buffer; connections: number; log: Logger; onDispatch: GatewayLinkOptions['onDispatch']; onConnected(): void }): NodeLink;
}

export interface RunningLauncher {
  stop(sig: string): Promise<void>;
}

export async function runLauncher(argv: string[], embed?: LauncherEmbedding): Promise<RunningLauncher | undefined> {
  if (argv.includes('--help')) {
    process.stdout.write(`usage: nightfuse launcher [flags]\n${flagHelp(LAUNCHER_FLAGS, { env: true })}\n`);
    return undefined;
  }
  const parsed = parseFlags(LAUNCHER_FLAGS, argv, { ignored: IGNORED_ENGINE_FLAGS, env: process.env });
  const f = parsed.values;
  if (f.v > 0) process.env.NIGHTFUSE_LOG_LEVEL ??= 'debug';
  const nodeId = nodeIdFrom(f.node_id, f.node_name);
  const log = createLogger('launcher', { node: nodeId });
  if (parsed.fromEnv.size > 0) log.info({ flags: [...parsed.fromEnv] }, 'flags from the environment (NIGHTFUSE_*)');
  if (!f.func_config_file) throw new Error('--func_config_file is required');
  if (f.engine_tcp_port !== -1) throw new Error('--engine_tcp_port is not supported: workers connect over <root_path_for_ipc>/engine.sock');
  if (f.func_worker_use_engine_socket) throw new Error('--func_worker_use_engine_socket is not supported: workers use FIFOs');
  if (f.use_fifo_for_nested_call) throw new Error('--use_fifo_for_nested_call is not supported: nested results come back over the worker FIFOs');
  const config = loadFuncConfig(f.func_config_file);
  clearAmbientCapabilities();
  const clusterToken = checkClusterToken(secretFlag(parsed, 'cluster_token'));
  // Who this process is, on both links: a restarted launcher is a new instance.
  const instance = newInstanceId();
  const agent = new NodeAgent({
    config,
    ipcRoot: f.root_path_for_ipc,
    workerHost: f.worker_host,
    log,
    outputDir: f.fprocess_output_dir || undefined,
  });
  const onDispatch: GatewayLinkOptions['onDispatch'] = (m, conn) => {
    if (drain.dispatched(m.fullCallId)) agent.dispatchExternal(m, conn);
    else agent.sendToGateway(conn, MessageType.FUNC_CALL_FAILED, m.fullCallId, 0);
  };
  const onConnected = () => drain.engineConnected();
  const connections = f.num_io_workers * f.gateway_conn_per_worker;
  const link: NodeLink = embed ? embed.link({ nodeId, instance, connections, log, onDispatch, onConnected }) : new GatewayLink({
    host: f.gateway_addr,
    port: f.gateway_port,
    connections,
    nodeId,
    log,
    onDispatch,
    onConnected,
    token: clusterToken,
    instance,
    authTimeoutMs: f.cluster_auth_timeout_ms,
  });
  agent.sendToGateway = (conn, type, id, value, payload) => {
    drain.answered(id);
    if (!link.sendResult(conn, type, id, value, payload)) {
      log.warn({ call: String(id), type: type === MessageType.FUNC_CALL_COMPLETE ? 'complete' : 'failed' }, 'no gateway connection; result dropped');
    }
  };
  await agent.start();
  let control: ControlClient | undefined;
  const merge: MergeControl = new MergeControl({
    agent, log, onFault: (sess, fault) => orchestrator.onFault(sess.worker.clientId, fault.callee, fault.signal),
    callerOf: (clientId, callee) => orchestrator.callerOf(clientId, callee),
  });
  const sendEvent = (e: MergeEvent) => {
    control?.send({
      merge_event: { at_ms: e.atMs, kind: e.kind, caller: e.caller, callee: e.callee, isolation: e.isolation, reason: e.reason, detail_json: JSON.stringify(e.detail) },
    });
    control?.sendStats(); // the admin view follows every merge event at once
  };
  const orchestrator: MergeOrchestrator = new MergeOrchestrator(agent, merge, log, sendEvent);
  orchestrator.enabled = f.merging;
  if (f.merge_policy_file) orchestrator.setPolicy(loadPolicy(f.merge_policy_file));
  let policyError = '';
  const onCommand = (cmd: GatewayCommand, reply: (r: NodeReport) => void) => {
    const done = (ok: boolean, error = '', detail: unknown = {}) => {
      control?.sendStats();
      if (cmd.command_id) reply({ command_result: { command_id: cmd.command_id, ok, error, detail_json: JSON.stringify(detail) } });
    };
    if (cmd.policy) {
      try {
        orchestrator.setPolicy(cmd.policy.policy_json ? parsePolicy(cmd.policy.policy_json, 'from the gateway') : DEFAULT_POLICY);
        policyError = '';
        done(true);
      } catch (err) {
        policyError = (err as Error).message;
        log.error({ err: policyError }, 'refused a policy from the gateway; keeping the current one');
        done(false, policyError);
      }
    } else if (cmd.merge) {
      const { caller, callee, isolation } = cmd.merge;
      orchestrator.mergeByHand(caller, callee, (isolation || undefined) as Isolation | undefined).then(
        (p) => done(true, '', { workers: [...p.workers.entries()].map(([id, x]) => ({ worker: id, ...x })), isolation: p.isolation }),
        (err: Error) => done(false, err.message),
      );
    } else if (cmd.unmerge) {
      orchestrator.unmergeByHand(cmd.unmerge.caller, cmd.unmerge.callee).then(() => done(true), (err: Error) => done(false, err.message));
    }
  };
  if (f.merging) {
    await merge.start();
    orchestrator.start(f.merge_tick_ms);
  }
  control = f.control_port > 0
    ? new ControlClient({
      host: f.gateway_addr, port: f.control_port, nodeId, hostname: hostname(), agent, log, onCommand,
      token: clusterToken, instance, authTimeoutMs: f.cluster_auth_timeout_ms,
      onGatewaySilent: () => link.reconnectAll('gateway silent on the control plane'),
      extraStats: () => ({ merges: orchestrator.mergeStates(), decisions: { ...orchestrator.decisions }, policy_error: policyError, ticks: orchestrator.ticks }),
    })
    : undefined;
  const drain: LauncherDrain = new LauncherDrain({
    agent, log,
    announce: control && (() => control!.announceDrain()),
    controlAttached: control && (() => control!.attached),
  });
  const probe = f.probe_port > 0 ? createProbeServer(() => drain.readiness(), log) : undefined;
  if (probe) log.info({ addr: f.probe_addr, port: await listenOn(probe, f.probe_addr, f.probe_port) }, 'probe port: /healthz, /readyz');
  await agent.whenReady();
  const untrim = trimWhenIdle(() => agent.callsTaken);
  link.start();
  control?.start();
  log.info({ ipcRoot: f.root_path_for_ipc, functions: config.entries.length }, 'launcher ready');
  if (!embed) process.stdout.write(`launcher ready node=${nodeId} ipc_root=${f.root_path_for_ipc} functions=${config.entries.map((e) => e.funcName).join(',')}\n`);

  // SIGTERM drains (leave dispatch, finish the calls in flight); SIGINT, or a second signal, stops at once.
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) {
      drain.closing = true;
      return;
    }
    stopping = true;
    log.info({ signal: sig }, 'stopping');
    orchestrator.stop(); // no merge decisions while leaving
    if (sig === 'SIGTERM') await drain.drain(f.drain_timeout_ms);
    drain.closing = true;
    await merge.stop();
    await agent.stop(); // fails what is left, over the still-open link
    untrim();
    control?.stop();
    link.stop();
    probe?.close();
    if (!embed) process.exit(0);
  };
  if (embed) return { stop };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  return { stop };
}

/**
 * --node_id wins; else Nightcore's hash of a host name: of --node_name when
 * given (in Kubernetes the node's name, stable across pod restarts, where the
 * pod's own host name is not), else of this host's name.
 */
export function nodeIdFrom(nodeIdFlag: number, nodeName: string): number {
  if (nodeIdFlag !== -1) return nodeIdFlag & 0xffff;
  // Nightcore hashes /proc/sys/kernel/hostname, whose content ends in a newline.
  return nodeName ? hostnameNodeId(`${nodeName}\n`) : hostnameNodeId();
}
