/** Loads proto/control.proto at run time and gives typed views of its messages. */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.js';

const def = protoLoader.loadSync(join(PACKAGE_ROOT, 'proto', 'control.proto'), {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(def) as unknown as {
  nightfuse: { control: { v1: { ControlPlane: grpc.ServiceClientConstructor } } };
};
export const ControlPlaneClient = pkg.nightfuse.control.v1.ControlPlane;
export const ControlPlaneService = ControlPlaneClient.service;

export interface Hello {
  node_id: number; hostname: string; pid: number; functions: string[]; instance_id?: Buffer; nonce?: Buffer; proof?: Buffer; stats?: Stats | null;
}
export interface Heartbeat { at_ms: number }
export interface FunctionStats {
  name: string; func_id: number; workers: number; idle: number; busy: number; queued: number;
  calls: number; failures: number; restarts: number; pids: number[];
}
export interface EdgeStatsMsg {
  caller: string; callee: string; calls: number; failures: number; input_bytes: number; output_bytes: number;
  dispatch_delay_us: number; processing_us: number; rpc_us: number; queue_us: number; rate_per_sec: number; local_calls: number;
}
export interface MergeStateMsg {
  caller: string; callee: string; isolation: string; workers_merged: number; workers_total: number; since_ms: number; state: string;
  manual?: boolean;
}
export interface Stats {
  at_ms: number; functions: FunctionStats[]; edges: EdgeStatsMsg[]; merges: MergeStateMsg[];
  decisions?: Record<string, number>; policy_error?: string;
}
export interface MergeEventMsg {
  at_ms: number; kind: string; caller: string; callee: string; isolation: string; reason: string; detail_json: string;
}
export interface CommandResult { command_id: number; ok: boolean; error: string; detail_json: string }
export interface NodeReport {
  hello?: Hello; stats?: Stats; merge_event?: MergeEventMsg; command_result?: CommandResult; heartbeat?: Heartbeat;
  drain?: { reason: string };
  body?: 'hello' | 'stats' | 'merge_event' | 'command_result' | 'heartbeat' | 'drain';
}
export interface GatewayCommand {
  command_id: number;
  policy?: { policy_json: string };
  merge?: { caller: string; callee: string; isolation: string };
  unmerge?: { caller: string; callee: string };
  challenge?: { nonce: Buffer };
  welcome?: { proof: Buffer; silence_ms: number };
  heartbeat?: Heartbeat;
  body?: 'policy' | 'merge' | 'unmerge' | 'challenge' | 'welcome' | 'heartbeat';
}
