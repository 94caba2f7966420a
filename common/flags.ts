/**
 * Nightcore-style (absl) flags: `--name=value`, `--name value`, `--name` /
 * `--noname` for booleans. Unknown flags are an error, like absl; Nightcore's
 * other binaries' flags are accepted and ignored where a drop-in needs that.
 *
 * With the `env` option every flag can also come from the environment, as
 * containers expect: `--http_port` from `NIGHTFUSE_HTTP_PORT`, with the same
 * syntax as after `=`. The command line wins; an empty variable counts as
 * unset (orchestrators render optional values as ""). Secrets can come from
 * files: `--x_file` next to `--x` (secretFlag).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

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
  /** read flags missing from argv from NIGHTFUSE_<FLAG_NAME> in this environment (usually process.env) */
  env?: Readonly<Record<string, string | undefined>>;
}

export interface ParsedFlags<S extends FlagSpecs> {
  values: FlagValues<S>;
  rest: string[];
  /** flags given on the command line */
  given: Set<string>;
  /** flags taken from the environment (never also in `given`) */
  fromEnv: Set<string>;
}

export const ENV_PREFIX = 'NIGHTFUSE_';

/** The environment variable a flag can come from: --admin_token -> NIGHTFUSE_ADMIN_TOKEN. */
export function envName(flag: string): string {
  return ENV_PREFIX + flag.toUpperCase();
}

export function parseFlags<S extends FlagSpecs>(
  specs: S,
  argv: readonly string[],
  opts: ParseOptions = {},
): ParsedFlags<S> {
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
    values[name] = convert(`flag --${name}`, spec, value);
    given.add(name);
  }
  const fromEnv = new Set<string>();
  if (opts.env) {
    for (const [name, spec] of Object.entries(specs)) {
      const value = opts.env[envName(name)];
      if (given.has(name) || value === undefined || value === '') continue;
      values[name] = convert(`${envName(name)} (--${name})`, spec, value);
      fromEnv.add(name);
    }
  }
  return { values: values as FlagValues<S>, rest, given, fromEnv };
}

function convert(what: string, spec: FlagSpec, value: string): unknown {
  switch (spec.type) {
    case 'string':
      return value;
    case 'bool': {
      const v = value.toLowerCase();
      if (['true', '1', 'yes', 't', 'y'].includes(v)) return true;
      if (['false', '0', 'no', 'f', 'n'].includes(v)) return false;
      throw new FlagError(`${what}: "${value}" is not a boolean`);
    }
    case 'int': {
      if (!/^-?\d+$/.test(value.trim())) throw new FlagError(`${what}: "${value}" is not an integer`);
      const n = Number(value);
      if (spec.min !== undefined && n < spec.min) throw new FlagError(`${what}: ${n} is below ${spec.min}`);
      if (spec.max !== undefined && n > spec.max) throw new FlagError(`${what}: ${n} is above ${spec.max}`);
      return n;
    }
  }
}

export function flagHelp(specs: FlagSpecs, opts: { env?: boolean } = {}): string {
  return Object.entries(specs)
    .map(([k, s]) => `  --${k}=${JSON.stringify(s.default)}${opts.env ? `  (env ${envName(k)})` : ''}\n      ${s.help}`)
    .join('\n');
}

/** Secret files are small; a larger one is a wrong path (a log, a binary), not a token. */
export const MAX_SECRET_FILE_BYTES = 64 * 1024;

/**
 * Reads a secret (token) from a file, as Kubernetes Secret volumes, systemd
 * credentials and compose secrets provide them: surrounding whitespace (the
 * trailing newline of `echo x > file`) is dropped; an empty, oversized or
 * unreadable file is an error naming `flag` and the path.
 */
export function readSecretFile(path: string, flag: string): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new FlagError(`${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new FlagError(`${flag}: ${path} is not a regular file`);
    if (st.size > MAX_SECRET_FILE_BYTES) throw new FlagError(`${flag}: ${path} has ${st.size} bytes; a secret file holds at most ${MAX_SECRET_FILE_BYTES}`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    const text = buf.subarray(0, off).toString('utf8').trim();
    if (!text) throw new FlagError(`${flag}: ${path} is empty`);
    return text;
  } finally {
    closeSync(fd);
  }
}

/**
 * A secret flag `name` with its `name_file` twin (e.g. --admin_token and
 * --admin_token_file): the value, read from the file where that is what was
 * given; '' when neither is set. Both on the same level (command line, or
 * environment) is an error; across levels the command line wins, as for
 * every flag.
 */
export function secretFlag<S extends FlagSpecs>(p: ParsedFlags<S>, name: keyof S & string): string {
  const fileName = `${name}_file`;
  const values = p.values as Record<string, unknown>;
  if (!(fileName in values)) throw new Error(`secretFlag: no --${fileName} flag next to --${name}`);
  const level = (k: string) => (p.given.has(k) ? 2 : p.fromEnv.has(k) ? 1 : 0);
  const direct = values[name] ? level(name) : 0;
  const file = values[fileName] ? level(fileName) : 0;
  if (direct > 0 && direct === file) {
    const how = direct === 2 ? `--${name} and --${fileName}` : `${envName(name)} and ${envName(fileName)}`;
    throw new FlagError(`give ${how}, not both`);
  }
  if (file > direct) return readSecretFile(String(values[fileName]), `--${fileName}`);
  return String(values[name] ?? '');
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
