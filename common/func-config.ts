/**
 * func_config.json: Nightcore's function table, validated with Nightcore's own
 * rules (spec §2.2), plus Nightfuse's optional fields for the launcher:
 *
 *   library  path of a worker_v1 .so, run by our worker host
 *            (relative paths are resolved against the config file's folder)
 *   command  a shell command that starts one worker process (like Nightcore's
 *            launcher --fprocess), e.g. "/opt/nightcore/func_worker_v1 /x/libfoo.so"
 *
 * Unknown keys are ignored, as in Nightcore. Every error names the entry.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export interface FuncEntry {
  funcName: string;
  funcId: number;
  /** undefined: key absent (Nightcore's engine then starts 4 workers) */
  minWorkers?: number;
  maxWorkers?: number;
  allowHttpGet: boolean;
  qsAsInput: boolean;
  grpcMethods: string[];
  isGrpc: boolean;
  /** `grpc:` prefix stripped */
  grpcService?: string;
  library?: string;
  command?: string;
}

export interface FuncConfig {
  /** the exact bytes of the file: sent to workers as Nightcore's engine does */
  raw: Buffer;
  entries: FuncEntry[];
  byName: Map<string, FuncEntry>;
  byId: Map<number, FuncEntry>;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const PLAIN_NAME = /^[A-Za-z0-9]*$/;
const GRPC_SERVICE = /^[A-Za-z0-9._]*$/;
export const MAX_GRPC_METHODS = 64;

function describe(i: number, e: unknown): string {
  const name = e && typeof e === 'object' && typeof (e as Record<string, unknown>).funcName === 'string'
    ? ` ("${(e as Record<string, unknown>).funcName}")` : '';
  return `func_config entry #${i}${name}`;
}

function optInt(where: string, obj: Record<string, unknown>, key: string): number | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(`${where}: ${key} must be a number`);
  return Math.trunc(v);
}

function optBool(where: string, obj: Record<string, unknown>, key: string): boolean {
  const v = obj[key];
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new ConfigError(`${where}: ${key} must be true or false`);
  return v;
}

function optString(where: string, obj: Record<string, unknown>, key: string): string | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(`${where}: ${key} must be a non-empty string`);
  return v;
}

/** Parses and validates; `baseDir` resolves relative `library` paths. */
export function parseFuncConfig(raw: Buffer | string, baseDir = process.cwd()): FuncConfig {
  const bytes = typeof raw === 'string' ? Buffer.from(raw) : raw;
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ConfigError(`func_config is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(doc)) throw new ConfigError('func_config must be a JSON array of function entries');
  const entries: FuncEntry[] = [];
  const byName = new Map<string, FuncEntry>();
  const byId = new Map<number, FuncEntry>();
  doc.forEach((item: unknown, i: number) => {
    const where = describe(i, item);
    if (!item || typeof item !== 'object' || Array.isArray(item)) throw new ConfigError(`${where}: must be an object`);
    const obj = item as Record<string, unknown>;
    if (obj.funcName === undefined) throw new ConfigError(`${where}: funcName is missing`);
    if (typeof obj.funcName !== 'string') throw new ConfigError(`${where}: funcName must be a string`);
    if (obj.funcId === undefined) throw new ConfigError(`${where}: funcId is missing`);
    const funcName = obj.funcName;
    const funcId = optInt(where, obj, 'funcId')!;
    const isGrpc = funcName.startsWith('grpc:');
    const grpcService = isGrpc ? funcName.slice(5) : undefined;
    if (isGrpc) {
      if (!GRPC_SERVICE.test(grpcService!)) {
        throw new ConfigError(`${where}: gRPC service name "${grpcService}" may only use A-Z a-z 0-9 . _`);
      }
    } else if (!PLAIN_NAME.test(funcName)) {
      throw new ConfigError(`${where}: function name "${funcName}" may only use A-Z a-z 0-9`);
    }
    if (funcName === '' || funcName === 'grpc:') throw new ConfigError(`${where}: function name is empty`);
    // Nightcore accepts 255, but its engine's tracer overflows on it.
    if (funcId < 1 || funcId > 254) throw new ConfigError(`${where}: funcId ${funcId} is out of range 1..254`);
    if (byName.has(funcName)) throw new ConfigError(`${where}: duplicate funcName "${funcName}"`);
    if (byId.has(funcId)) {
      throw new ConfigError(`${where}: duplicate funcId ${funcId} (also used by "${byId.get(funcId)!.funcName}")`);
    }
    let grpcMethods: string[] = [];
    if (isGrpc) {
      const m = obj.grpcMethods;
      if (m === undefined) throw new ConfigError(`${where}: gRPC service entries need grpcMethods`);
      if (!Array.isArray(m)) throw new ConfigError(`${where}: grpcMethods must be an array of strings`);
      if (m.length > MAX_GRPC_METHODS) {
        throw new ConfigError(`${where}: ${m.length} grpcMethods, at most ${MAX_GRPC_METHODS} are allowed`);
      }
      const seen = new Set<string>();
      for (const [j, name] of m.entries()) {
        if (typeof name !== 'string') throw new ConfigError(`${where}: grpcMethods[${j}] must be a string`);
        if (seen.has(name)) throw new ConfigError(`${where}: grpcMethods has "${name}" twice`);
        seen.add(name);
      }
      grpcMethods = m as string[];
    }
    const library = optString(where, obj, 'library');
    const command = optString(where, obj, 'command');
    if (library && command) throw new ConfigError(`${where}: give either library or command, not both`);
    const minWorkers = optInt(where, obj, 'minWorkers');
    const maxWorkers = optInt(where, obj, 'maxWorkers');
    if (minWorkers !== undefined && maxWorkers !== undefined && maxWorkers > 0 && minWorkers > maxWorkers) {
      throw new ConfigError(`${where}: minWorkers ${minWorkers} is greater than maxWorkers ${maxWorkers}`);
    }
    const entry: FuncEntry = {
      funcName,
      funcId,
      minWorkers,
      maxWorkers,
      allowHttpGet: isGrpc ? false : optBool(where, obj, 'allowHttpGet'),
      qsAsInput: isGrpc ? false : optBool(where, obj, 'qsAsInput'),
      grpcMethods,
      isGrpc,
      grpcService,
      library: library ? resolve(baseDir, library) : undefined,
      command,
    };
    entries.push(entry);
    byName.set(funcName, entry);
    byId.set(funcId, entry);
  });
  return { raw: bytes, entries, byName, byId };
}

export function loadFuncConfig(path: string): FuncConfig {
  let raw: Buffer;
  try {
    raw = readFileSync(path);
  } catch (err) {
    throw new ConfigError(`cannot read func_config file ${path}: ${(err as Error).message}`);
  }
  try {
    return parseFuncConfig(raw, dirname(resolve(path)));
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(`${path}: ${err.message}`);
    throw err;
  }
}
