/**
 * `nightfuse up`'s state file: the admin token it generated (and the gateway
 * it served), kept across restarts so an exported NIGHTFUSE_ADMIN_TOKEN keeps
 * working. $XDG_STATE_HOME/nightfuse/up.json, else ~/.local/state/nightfuse/up.json;
 * the folder is 0700 and the file 0600, written whole (temp file + rename).
 * A file others may read is not trusted: its token is replaced.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export interface UpState {
  adminToken: string;
  /** the gateway's base URL (http://host:port) the token belongs to */
  gateway?: string;
  updatedAt?: string;
}

export function statePath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME && env.XDG_STATE_HOME.startsWith('/') ? env.XDG_STATE_HOME : join(env.HOME || homedir(), '.local', 'state');
  return join(base, 'nightfuse', 'up.json');
}

const TOKEN_RE = /^[A-Za-z0-9._~-]{16,256}$/;

/** The state, or why it cannot be used (missing is not a problem: no `problem`). */
export function readState(path: string): { state?: UpState; problem?: string } {
  let st;
  try {
    st = statSync(path);
  } catch {
    return {};
  }
  if ((st.mode & 0o077) !== 0) return { problem: `${path} is readable by other users (mode ${(st.mode & 0o777).toString(8)}); not using its token` };
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) return { problem: `${path} belongs to another user; not using its token` };
  try {
    const s = JSON.parse(readFileSync(path, 'utf8')) as UpState;
    if (typeof s.adminToken !== 'string' || !TOKEN_RE.test(s.adminToken)) return { problem: `${path} has no valid adminToken; replacing it` };
    return { state: s };
  } catch (err) {
    return { problem: `${path} is not valid JSON (${(err as Error).message}); replacing it` };
  }
}

export function writeState(path: string, s: UpState): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ ...s, updatedAt: new Date().toISOString() }, null, 1) + '\n', { mode: 0o600 });
  chmodSync(tmp, 0o600); // in case the umask or an old temp file said otherwise
  renameSync(tmp, path);
}

export function newToken(): string {
  return randomBytes(18).toString('base64url');
}
