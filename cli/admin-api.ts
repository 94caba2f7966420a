/**
 * The client side of the gateway's admin API (/admin/v1): where the gateway
 * is, which token to send, and errors mapped to exit codes. The gateway and
 * token come from --gateway / --admin_token, else NIGHTFUSE_GATEWAY /
 * NIGHTFUSE_ADMIN_TOKEN, else `nightfuse up`'s state file — its token only
 * for the gateway it was written for, so it never travels to another host.
 */
import { CliError, EXIT, usageError } from './exit.js';
import { readState, statePath } from './state.js';

export const DEFAULT_GATEWAY = 'http://127.0.0.1:8080';
const REQUEST_TIMEOUT_MS = 15_000;
const MAX_RESPONSE_BYTES = 16 << 20;

export interface GatewayOptions {
  gateway?: string;
  admin_token?: string;
}

export function normalizeBase(url: string): string {
  const withScheme = url.includes('://') ? url : `http://${url}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw usageError(`--gateway "${url}" is not a URL (e.g. http://127.0.0.1:8080)`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw usageError(`--gateway "${url}": only http:// and https:// are supported`);
  return `${u.protocol}//${u.host}`;
}

/** The gateway's base URL and the token to send it; with `optional`, token '' instead of an error when there is none. */
export function resolveGateway(o: GatewayOptions, env: NodeJS.ProcessEnv = process.env, optional = false): { base: string; token: string; tokenFrom: string } {
  const state = readState(statePath(env)).state;
  const base = normalizeBase(o.gateway || env.NIGHTFUSE_GATEWAY || state?.gateway || DEFAULT_GATEWAY);
  if (o.admin_token) return { base, token: o.admin_token, tokenFrom: '--admin_token' };
  if (env.NIGHTFUSE_ADMIN_TOKEN) return { base, token: env.NIGHTFUSE_ADMIN_TOKEN, tokenFrom: 'NIGHTFUSE_ADMIN_TOKEN' };
  if (state && state.gateway && normalizeBase(state.gateway) === base) return { base, token: state.adminToken, tokenFrom: statePath(env) };
  if (optional) return { base, token: '', tokenFrom: '' };
  throw usageError(`no admin token for ${base}: give --admin_token or set NIGHTFUSE_ADMIN_TOKEN`);
}

export interface ApiResult<T = any> {
  status: number;
  data: T;
}

export class AdminClient {
  constructor(readonly base: string, private readonly token: string) {}

  static from(o: GatewayOptions): AdminClient {
    const g = resolveGateway(o);
    return new AdminClient(g.base, g.token);
  }

  /** Any answer comes back; unreachable and token refusals throw (exit 3). */
  async call<T = any>(method: string, path: string, body?: string, signal?: AbortSignal): Promise<ApiResult<T>> {
    let r: Response;
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    try {
      r = await fetch(`${this.base}/admin/v1${path}`, {
        method, body, headers: { Authorization: `Bearer ${this.token}` }, signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = timeout.aborted ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : cause?.code ?? cause?.message ?? (err as Error).message;
      throw new CliError(`cannot reach the gateway at ${this.base}: ${why}`, EXIT.UNREACHABLE);
    }
    const declared = Number(r.headers.get('content-length') ?? 0);
    if (declared > MAX_RESPONSE_BYTES) throw new CliError(`the gateway at ${this.base} sent ${declared} bytes; refusing more than ${MAX_RESPONSE_BYTES}`);
    const text = await r.text();
    let data: any;
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text.trim().slice(0, 300) || `HTTP ${r.status}` };
    }
    if (r.status === 401 || r.status === 403) {
      throw new CliError(`the gateway at ${this.base} refused the admin token (HTTP ${r.status}): ${data?.error ?? ''}`.trim(), EXIT.UNREACHABLE);
    }
    return { status: r.status, data };
  }

  /** GET that must succeed; a refusal is a CliError (exit 1). */
  async get<T = any>(path: string, signal?: AbortSignal): Promise<T> {
    const r = await this.call<T>('GET', path, undefined, signal);
    if (r.status !== 200) throw refusal(`GET ${path}`, r);
    return r.data;
  }
}

/** The gateway said no: one line naming every reason it gave. */
export function refusal(what: string, r: ApiResult): CliError {
  const d = r.data ?? {};
  const describe = (x: any) => (typeof x === 'string' ? x : x?.field ? `${x.field}: ${x.message}` : JSON.stringify(x));
  const reasons: string[] = Array.isArray(d.results) && d.results.some((x: any) => !x.ok)
    ? d.results.filter((x: any) => !x.ok).map((x: any) => `node ${x.node}: ${x.error}`)
    : Array.isArray(d.errors) && !(typeof d.error === 'string' && d.errors.every((x: any) => typeof x === 'object')) ? d.errors.map(describe)
      : [d.error ?? 'no reason given'];
  return new CliError(`${what} refused (HTTP ${r.status}): ${reasons.join('; ')}`, EXIT.FAILED);
}
