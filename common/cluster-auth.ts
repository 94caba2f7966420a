/**
 * Cluster authentication shared by the gateway and its launchers: where the
 * cluster token comes from, the challenge-response proofs both links use, and
 * the allow-list that admits real Nightcore engines (which cannot prove
 * anything).
 *
 * The token itself never crosses the network: each side sends an HMAC-SHA256,
 * keyed by the token, over both sides' fresh nonces and the identity being
 * claimed. Each proof carries its own label, so a proof one side sent can never
 * be replayed as the other side's, nor from one link on the other.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { isIPv4 } from 'node:net';

/** Tokens shorter than this are refused: a guessable secret protects nothing. */
export const MIN_TOKEN_BYTES = 16;
export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;
export const INSTANCE_BYTES = 8;

export class ClusterAuthError extends Error {
  override name = 'ClusterAuthError';
}

/**
 * Checks a cluster token (from --cluster_token, --cluster_token_file or
 * NIGHTFUSE_CLUSTER_TOKEN, resolved by common/flags.ts secretFlag); '' means
 * none is configured.
 */
export function checkClusterToken(token: string): string {
  if (token && Buffer.byteLength(token) < MIN_TOKEN_BYTES) {
    throw new ClusterAuthError(`the cluster token must be at least ${MIN_TOKEN_BYTES} bytes long (got ${Buffer.byteLength(token)})`);
  }
  return token;
}

export const nonce = (): Buffer => randomBytes(NONCE_BYTES);
/** A launcher process's identity: two registrations with different instances are two launchers. */
export const newInstanceId = (): Buffer => randomBytes(INSTANCE_BYTES);

/** What a proof binds: who claims what, on which link, answering which nonces. */
export type ProofLabel = 'engine-gateway' | 'engine-node' | 'control-gateway' | 'control-node';

export function proof(token: string, label: ProofLabel, parts: (Buffer | string | number)[]): Buffer {
  const h = createHmac('sha256', token);
  h.update(`nightfuse-cluster-v1:${label}`);
  for (const p of parts) {
    const b = Buffer.isBuffer(p) ? p : Buffer.from(String(p));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length, 0);
    h.update(len); // length-prefixed: no two different part lists hash alike
    h.update(b);
  }
  return h.digest();
}

/** Constant-time comparison of a received proof with the expected one. */
export function proofMatches(expected: Buffer, got: Buffer | Uint8Array | undefined): boolean {
  if (!got || got.length !== expected.length) return false;
  return timingSafeEqual(expected, Buffer.from(got));
}

// ------------------------------------------------------------ allow-list

interface Cidr {
  net: number;
  mask: number;
  text: string;
}

function ipv4ToInt(a: string): number {
  return a.split('.').reduce((acc, p) => ((acc << 8) | Number(p)) >>> 0, 0);
}

/** Addresses that may connect as plain (unauthenticated, real Nightcore) engines: `--plain_engine_allow`. */
export class AddressAllowList {
  private readonly cidrs: Cidr[];

  constructor(spec: string) {
    this.cidrs = spec.split(',').map((s) => s.trim()).filter(Boolean).map((s) => {
      const [addr, bitsText] = s.split('/');
      const bits = bitsText === undefined ? 32 : Number(bitsText);
      if (!isIPv4(addr) || !/^\d+$/.test(String(bits)) || bits < 0 || bits > 32) {
        throw new ClusterAuthError(`--plain_engine_allow: "${s}" is not an IPv4 address or CIDR (like 10.0.0.0/8)`);
      }
      const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
      return { net: (ipv4ToInt(addr) & mask) >>> 0, mask, text: s };
    });
  }

  get empty(): boolean {
    return this.cidrs.length === 0;
  }

  allows(address: string | undefined): boolean {
    if (!address) return false;
    const a = address.startsWith('::ffff:') ? address.slice(7) : address;
    if (!isIPv4(a)) return false;
    const n = ipv4ToInt(a);
    return this.cidrs.some((c) => ((n & c.mask) >>> 0) === c.net);
  }

  toString(): string {
    return this.cidrs.map((c) => c.text).join(',');
  }
}

/** Is `host` a loopback listen address (the only place engines may connect without a token by default)? */
export function isLoopbackAddress(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}
