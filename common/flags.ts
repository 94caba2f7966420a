/**
 * Nightcore-style (absl) flags: `--name=value`, `--name value`, `--name` /
 * `--noname` for booleans. Unknown flags are an error, like absl; Nightcore's
 * other binaries' flags are accepted and ignored where a drop-in needs that.
 */
export type FlagSpec =
  | { type: 'string'; default: string; help: string }
  | { type: 'int'; default: number; help: string; min?: number; max?: number }
  | { type: 'bool'; default: boolean; help: string };

export type FlagSpecs = Record<string, FlagSpec>;
export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K] extends { type: 'string' } ? string : S[K] extends { type: 'int' } ? number : boolean;
};

export class FlagError extends Error {
  override name = 'FlagError';
}

export interface ParseOptions {
  /** flags accepted and ignored (other Nightcore binaries' flags) */
  ignored?: readonly string[];
  /** allow positional arguments (returned in `rest`) */
  positional?: boolean;
}

export function parseFlags<S extends FlagSpecs>(
  specs: S,
  argv: readonly string[],
  opts: ParseOptions = {},
): { values: FlagValues<S>; rest: string[]; given: Set<string> } {
  const values: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(specs)) values[k] = s.default;
  const rest: string[] = [];
  const given = new Set<string>();
  const ignored = new Set(opts.ignored ?? []);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--') || arg === '--') {
      if (!opts.positional) throw new FlagError(`unexpected argument "${arg}"`);
      rest.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    let name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    let value: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    let spec = specs[name];
    if (!spec && name.startsWith('no') && specs[name.slice(2)]?.type === 'bool' && value === undefined) {
      name = name.slice(2);
      spec = specs[name];
      value = 'false';
    }
    if (!spec) {
      if (ignored.has(name) || (name.startsWith('no') && ignored.has(name.slice(2)))) {
        // Consume a separate value for an ignored non-boolean flag written as `--f v`.
        if (value === undefined && i + 1 < argv.length && !argv[i + 1].startsWith('--')) i++;
        continue;
      }
      throw new FlagError(`unknown flag --${name}`);
    }
    if (value === undefined) {
      if (spec.type === 'bool') value = 'true';
      else if (i + 1 < argv.length) value = argv[++i];
      else throw new FlagError(`flag --${name} needs a value`);
    }
    values[name] = convert(name, spec, value);
    given.add(name);
  }
  return { values: values as FlagValues<S>, rest, given };
}

function convert(name: string, spec: FlagSpec, value: string): unknown {
  switch (spec.type) {
    case 'string':
      return value;
    case 'bool': {
      const v = value.toLowerCase();
      if (['true', '1', 'yes', 't', 'y'].includes(v)) return true;
      if (['false', '0', 'no', 'f', 'n'].includes(v)) return false;
      throw new FlagError(`flag --${name}: "${value}" is not a boolean`);
    }
    case 'int': {
      if (!/^-?\d+$/.test(value.trim())) throw new FlagError(`flag --${name}: "${value}" is not an integer`);
      const n = Number(value);
      if (spec.min !== undefined && n < spec.min) throw new FlagError(`flag --${name}: ${n} is below ${spec.min}`);
      if (spec.max !== undefined && n > spec.max) throw new FlagError(`flag --${name}: ${n} is above ${spec.max}`);
      return n;
    }
  }
}

export function flagHelp(specs: FlagSpecs): string {
  return Object.entries(specs)
    .map(([k, s]) => `  --${k}=${JSON.stringify(s.default)}\n      ${s.help}`)
    .join('\n');
}

/**
 * Flags defined in Nightcore's library code, which every Nightcore binary
 * accepts (spec §7.6). A binary that implements one declares it in its own
 * specs, which take precedence; the rest are accepted and ignored.
 */
export const NIGHTCORE_LIBRARY_FLAGS = [
  'max_running_requests', 'lb_per_fn_round_robin', 'lb_pick_least_load', 'engine_conn_enable_nodelay',
  'engine_conn_enable_keepalive', 'gateway_conn_enable_nodelay', 'gateway_conn_enable_keepalive', 'disable_monitor',
  'func_worker_use_engine_socket', 'use_fifo_for_nested_call', 'func_worker_pipe_direct_write',
  'max_relative_queueing_delay', 'concurrency_limit_coef', 'expected_concurrency_coef', 'min_worker_request_interval_ms',
  'always_request_worker_if_possible', 'disable_concurrency_limiter', 'instant_rps_p_norm', 'instant_rps_ema_alpha',
  'instant_rps_ema_tau_ms',
] as const;
