/** `nightfuse gateway`: Nightcore's gateway flags and front ends, plus Nightfuse's control plane and metrics. */
import type http from 'node:http';
import { loadFuncConfig } from '../common/func-config.js';
import { flagHelp, NIGHTCORE_LIBRARY_FLAGS, parseFlags, secretFlag, type FlagSpecs } from '../common/flags.js';
import { createLogger, type Logger } from '../common/log.js';
import { ControlServer } from './control-server.js';
import { Dispatcher } from './dispatcher.js';
import { EngineServer } from './engine-server.js';
import { createGrpcFrontend, GRPC_LIMITS, type GrpcLimits } from './grpc-frontend.js';
import { createHttpFrontend, HTTP_LIMITS, type HttpLimits } from './http-frontend.js';
import { GatewayMetrics } from './metrics.js';
import type { FuncConfig } from '../common/func-config.js';
import { AdminApi, PolicyStore } from './admin.js';
import { GatewayDrain } from './drain.js';
import { listenOn } from '../common/lifecycle.js';
import { ConsoleServer } from './console-server.js';
import { AddressAllowList, isLoopbackAddress, checkClusterToken } from '../common/cluster-auth.js';
import { DesiredState } from './desired-state.js';
import { clusterFamilies } from './cluster-metrics.js';
import { trimWhenIdle } from '../common/idle-trim.js';
import { fastPathOf } from './http-fast.js';

export const GATEWAY_FLAGS = {
  listen_addr: { type: 'string', default: '0.0.0.0', help: 'IPv4 address for every listener' },
  http_port: { type: 'int', default: 8080, help: 'HTTP front end (0: pick a free port)', min: 0, max: 65535 },
  grpc_port: { type: 'int', default: 50051, help: 'gRPC front end (h2c)', min: 0, max: 65535 },
  engine_conn_port: { type: 'int', default: 10007, help: 'engines (launchers) connect here', min: 0, max: 65535 },
  func_config_file: { type: 'string', default: '', help: 'func_config.json (required)' },
  num_io_workers: { type: 'int', default: 1, help: 'accepted for compatibility; one event loop serves all connections', min: 1 },
  max_running_requests: { type: 'int', default: 0, help: 'in-flight cap per connected node (0: none); excess calls queue', min: 0 },
  lb_per_fn_round_robin: { type: 'bool', default: false, help: 'pick nodes round robin per function' },
  lb_pick_least_load: { type: 'bool', default: false, help: 'pick the node with the fewest in-flight calls' },
  control_port: { type: 'int', default: 10008, help: 'Nightfuse control plane (gRPC) for launchers; -1: off', min: -1, max: 65535 },
  max_body_bytes: { type: 'int', default: 32 << 20, help: 'request body limit (413 / RESOURCE_EXHAUSTED); 0: up to 2 GiB', min: 0 },
  call_timeout_ms: { type: 'int', default: 60000, help: 'per-call timeout (504 / DEADLINE_EXCEEDED); 0: none', min: 0 },
  http_header_timeout_ms: { type: 'int', default: HTTP_LIMITS.headerTimeoutMs, help: 'HTTP: request headers within this of the first byte (408 and close)', min: 1 },
  http_body_timeout_ms: { type: 'int', default: HTTP_LIMITS.bodyTimeoutMs, help: 'HTTP: the whole request within header + this timeout of its first byte (408 and close); 0: none', min: 0 },
  http_idle_timeout_ms: { type: 'int', default: HTTP_LIMITS.idleTimeoutMs, help: 'HTTP: close keep-alive connections idle (or responses stalled) this long; 0: never', min: 0 },
  grpc_settings_timeout_ms: { type: 'int', default: GRPC_LIMITS.settingsTimeoutMs, help: 'gRPC: drop a connection whose HTTP/2 preface and SETTINGS do not arrive within this', min: 1 },
  grpc_idle_timeout_ms: { type: 'int', default: GRPC_LIMITS.idleTimeoutMs, help: 'gRPC: close (GOAWAY) a session with no open stream for this long; 0: never', min: 0 },
  grpc_stream_timeout_ms: { type: 'int', default: GRPC_LIMITS.streamTimeoutMs, help: 'gRPC: reset a stream whose request is not in within this; 0: none', min: 0 },
  max_connections: { type: 'int', default: HTTP_LIMITS.maxConnections, help: 'open connections per front end (HTTP, gRPC); more are closed at accept; 0: no cap', min: 0 },
  merge_policy_file: { type: 'string', default: '', help: 'merge policy (JSON or YAML) pushed to every launcher; reloaded on SIGHUP and on change' },
  admin_token: { type: 'string', default: '', help: 'token for the admin API under /admin/v1 (or NIGHTFUSE_ADMIN_TOKEN); without one the API is refused' },
  admin_token_file: { type: 'string', default: '', help: 'read the admin token from this file (a mounted Secret, a systemd credential)' },
  drain_timeout_ms: { type: 'int', default: 25000, help: 'on SIGTERM: no new calls, wait this long for the calls in flight, then exit', min: 0 },
  cluster_token: { type: 'string', default: '', help: 'secret shared with every launcher (or NIGHTFUSE_CLUSTER_TOKEN); engine link and control plane admit only peers that prove it' },
  cluster_token_file: { type: 'string', default: '', help: 'read the cluster token from this file' },
  insecure_cluster: { type: 'bool', default: false, help: 'without a cluster token, still listen for engines beyond loopback (any peer can then act as a node)' },
  plain_engine_allow: { type: 'string', default: '', help: 'CIDRs (a,b,…) from which real Nightcore engines, which cannot authenticate, are admitted when a token is set' },
  cluster_auth_timeout_ms: { type: 'int', default: 5000, help: 'a connection or stream must authenticate within this', min: 100 },
  engine_max_message_bytes: { type: 'int', default: 64 << 20, help: 'largest message an engine may send on the engine link', min: 1024, max: 0x7fffffff },
  node_silence_ms: { type: 'int', default: 2000, help: 'a launcher silent this long on the control plane is taken out of dispatch and its calls fail (0: never)', min: 0 },
  v: { type: 'int', default: 0, help: 'verbosity (>0: debug logs)' },
} satisfies FlagSpecs;

/** Nightcore's library flags the gateway does not implement: accepted, ignored. */
export const IGNORED_GATEWAY_FLAGS: readonly string[] = NIGHTCORE_LIBRARY_FLAGS;

export interface GatewayOptions {
  config: FuncConfig;
  listenAddr: string;
  httpPort: number;
  grpcPort: number;
  engineConnPort: number;
  controlPort: number;
  maxRunningRequests: number;
  lbPerFnRoundRobin: boolean;
  lbPickLeastLoad: boolean;
  maxBodyBytes: number;
  callTimeoutMs: number;
  log: Logger;
  mergePolicyFile?: string;
  adminToken?: string;
  httpLimits?: Partial<HttpLimits>;
  grpcLimits?: Partial<GrpcLimits>;
  /** cluster token; '' = none */
  clusterToken?: string;
  plainEngineAllow?: string;
  clusterAuthTimeoutMs?: number;
  engineMaxMessageBytes?: number;
  nodeSilenceMs?: number;
}

export interface RunningGateway {
  ports: { http: number; grpc: number; engine: number; control: number };
  engines: EngineServer;
  dispatcher: Dispatcher;
  control: ControlServer | undefined;
  metrics: GatewayMetrics;
  http: http.Server;
  policy: PolicyStore;
  admin: AdminApi;
  drain: GatewayDrain;
  stop(): Promise<void>;
}

export async function startGateway(o: GatewayOptions): Promise<RunningGateway> {
  const maxBody = o.maxBodyBytes > 0 ? o.maxBodyBytes : 0x7fffffff;
  let dispatcher!: Dispatcher;
  const token = o.clusterToken ?? '';
  const authTimeoutMs = o.clusterAuthTimeoutMs ?? 5000;
  const engines = new EngineServer({
    log: o.log,
    events: {
      onResult: (node, m) => dispatcher.onResult(node, m),
      onNodeUp: (n) => dispatcher.nodeUp(n),
      onNodeDown: (n) => dispatcher.nodeDown(n),
    },
    maxPayload: o.engineMaxMessageBytes ?? 64 << 20,
    token,
    plainAllow: new AddressAllowList(o.plainEngineAllow ?? ''),
    authTimeoutMs,
  });
  dispatcher = new Dispatcher(engines, {
    maxRunningRequests: o.maxRunningRequests,
    lbPerFnRoundRobin: o.lbPerFnRoundRobin,
    lbPickLeastLoad: o.lbPickLeastLoad,
    callTimeoutMs: o.callTimeoutMs,
  });
  const metrics = new GatewayMetrics({
    running: () => dispatcher.runningCount - dispatcher.queuedCount,
    queued: () => dispatcher.queuedCount,
    nodes: () => engines.nodes.size,
    functions: o.config.entries.map((e) => e.funcName),
  });
  let extra: ((req: http.IncomingMessage, res: http.ServerResponse, path: string, query: string) => boolean) | undefined;
  let drain!: GatewayDrain;
  const httpServer = createHttpFrontend({
    config: o.config, dispatcher, metrics, log: o.log, maxBodyBytes: maxBody, limits: o.httpLimits,
    extraRoutes: (req, res, path, query) => drain.refuse(req, res, path) || (extra?.(req, res, path, query) ?? false),
    ready: () => drain.readiness(),
    acceptingCalls: () => !drain.draining,
  });
  const grpcServer = createGrpcFrontend({ config: o.config, dispatcher, metrics, log: o.log, maxBodyBytes: maxBody, limits: o.grpcLimits });
  drain = new GatewayDrain(engines, dispatcher, { http: httpServer, grpc: grpcServer }, o.log);
  let control: ControlServer | undefined;
  let controlPort = -1;
  const pushPolicy = () => control?.broadcast({ policy: { policy_json: policy.policy.text } });
  const policy = new PolicyStore(o.log, pushPolicy, o.mergePolicyFile ?? '');
  policy.init(); // an invalid policy file refuses the start, with errors naming the field and rule
  const desired = new DesiredState(o.log, () => policy.policy.text);
  if (o.controlPort >= 0) {
    control = new ControlServer({
      log: o.log, token, authTimeoutMs, silenceMs: o.nodeSilenceMs ?? 2000,
      engineInstance: (id) => {
        const n = engines.nodes.get(id);
        return n && { instance: n.instance, authenticated: n.authenticated };
      },
    });
    controlPort = await control.listen(o.listenAddr, o.controlPort);
    control.onAttach = (n) => desired.apply(control!, n);
    control.onDrain = (n) => {
      const node = engines.nodes.get(n.hello.node_id);
      if (node && (!node.authenticated || node.instance === n.instance)) node.draining = true;
    };
    // Silent on the control plane: the engine link to it is as dead; fail its calls now, not at the timeout.
    control.onSilent = (n) => engines.dropNode(n.hello.node_id, 'silent on the control plane', n.instance || undefined);
  }
  const admin = new AdminApi({ token: o.adminToken ?? '', config: o.config, control, engines, policy, log: o.log, desired });
  const consoleUi = new ConsoleServer();
  metrics.cluster = {
    nodeStats: () => control?.nodeStats() ?? new Map(),
    policyReloads: () => policy.reloads,
    extra: () => clusterFamilies(engines, control, dispatcher),
  };
  extra = (req, res, path, query) => admin.handle(req, res, path, query) || consoleUi.handle(req, res, path);
  const engine = await engines.listen(o.listenAddr, o.engineConnPort);
  const httpPort = await listenOn(httpServer, o.listenAddr, o.httpPort);
  const grpcPort = await listenOn(grpcServer, o.listenAddr, o.grpcPort);
  // Work, for the idle trim: calls, and connections accepted (hostile ones that never make a call too).
  const fast = fastPathOf(httpServer);
  const untrim = trimWhenIdle(() => dispatcher.stats.dispatched + engines.accepted + (fast?.stats.connections ?? 0));
  return {
    ports: { http: httpPort, grpc: grpcPort, engine, control: controlPort },
    engines, dispatcher, control, metrics, http: httpServer, policy, admin, drain,
    async stop() {
      untrim();
      policy.close();
      admin.close();
      dispatcher.failAll();
      httpServer.closeAllConnections?.();
      await Promise.all([
        new Promise<void>((r) => httpServer.close(() => r())),
        new Promise<void>((r) => grpcServer.close(() => r())),
        engines.close(),
        control?.close(),
      ]);
    },
  };
}

/** `embedded`: inside `nightfuse up`'s one process, which prints and handles signals itself. */
export async function runGateway(argv: string[], embedded = false): Promise<RunningGateway | undefined> {
  if (argv.includes('--help')) {
    process.stdout.write(`usage: nightfuse gateway [flags]\n${flagHelp(GATEWAY_FLAGS, { env: true })}\n`);
    return undefined;
  }
  const parsed = parseFlags(GATEWAY_FLAGS, argv, { ignored: IGNORED_GATEWAY_FLAGS, env: process.env });
  const f = parsed.values;
  if (f.v > 0) process.env.NIGHTFUSE_LOG_LEVEL ??= 'debug';
  const log = createLogger('gateway');
  if (parsed.fromEnv.size > 0) log.info({ flags: [...parsed.fromEnv] }, 'flags from the environment (NIGHTFUSE_*)');
  if (!f.func_config_file) throw new Error('--func_config_file is required');
  const clusterToken = checkClusterToken(secretFlag(parsed, 'cluster_token'));
  if (!clusterToken) {
    if (!isLoopbackAddress(f.listen_addr) && !f.insecure_cluster) {
      throw new Error(`refusing to listen for engines on ${f.listen_addr} without a cluster token: any peer could register as a node, ` +
        'take calls and answer them. Give --cluster_token, --cluster_token_file or NIGHTFUSE_CLUSTER_TOKEN (the same on every launcher), ' +
        'or --insecure_cluster to accept that risk');
    }
    if (f.insecure_cluster) log.warn({ listenAddr: f.listen_addr }, 'INSECURE: no cluster token; any peer that reaches the engine or control port can act as a node');
  }
  if (f.plain_engine_allow && !clusterToken) log.warn('--plain_engine_allow has no effect without a cluster token: every engine is admitted');
  const config = loadFuncConfig(f.func_config_file);
  const gw = await startGateway({
    config, listenAddr: f.listen_addr, httpPort: f.http_port, grpcPort: f.grpc_port, engineConnPort: f.engine_conn_port,
    controlPort: f.control_port, maxRunningRequests: f.max_running_requests, lbPerFnRoundRobin: f.lb_per_fn_round_robin,
    lbPickLeastLoad: f.lb_pick_least_load, maxBodyBytes: f.max_body_bytes, callTimeoutMs: f.call_timeout_ms, log,
    mergePolicyFile: f.merge_policy_file || undefined, adminToken: secretFlag(parsed, 'admin_token'),
    httpLimits: { headerTimeoutMs: f.http_header_timeout_ms, bodyTimeoutMs: f.http_body_timeout_ms, idleTimeoutMs: f.http_idle_timeout_ms, maxConnections: f.max_connections },
    grpcLimits: { settingsTimeoutMs: f.grpc_settings_timeout_ms, idleTimeoutMs: f.grpc_idle_timeout_ms, streamTimeoutMs: f.grpc_stream_timeout_ms, maxConnections: f.max_connections },
    clusterToken, plainEngineAllow: f.plain_engine_allow, clusterAuthTimeoutMs: f.cluster_auth_timeout_ms,
    engineMaxMessageBytes: f.engine_max_message_bytes, nodeSilenceMs: f.node_silence_ms,
  });
  process.on('SIGHUP', () => {
    const r = gw.policy.reloadFile('SIGHUP');
    if (!r.ok) log.error({ errors: r.errors }, 'policy reload on SIGHUP refused');
  });
  if (embedded) return gw;
  const a = f.listen_addr;
  process.stdout.write(
    `gateway ready http=${a}:${gw.ports.http} grpc=${a}:${gw.ports.grpc} engine=${a}:${gw.ports.engine} control=${a}:${gw.ports.control}\n`,
  );
  // SIGTERM drains (orchestrators send it, then wait); SIGINT, or a second signal, stops at once.
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) {
      log.warn({ signal: sig }, 'second signal: stopping without waiting for calls in flight');
      await gw.stop();
      process.exit(0);
    }
    stopping = true;
    log.info({ signal: sig }, 'stopping');
    if (sig === 'SIGTERM') await gw.drain.drain(f.drain_timeout_ms);
    await gw.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  return gw;
}
