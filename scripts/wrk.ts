/**
 * Load with wrk (Debian's `wrk`, C, epoll; one thread is enough to keep a
 * 2-core stack busy and it uses a few µs of CPU per request): POST a body on
 * keep-alive connections for a fixed time, read back req/s and the latency
 * distribution. Installs wrk with apt-get when it is missing (root only).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuSeconds } from './bench-proc.js';

export interface WrkResult {
  requests: number;
  rps: number;
  p50_us: number;
  p99_us: number;
  /** non-2xx answers and socket errors */
  errors: number;
  /** CPU the load generator itself used, µs per request */
  wrkCpuUs: number;
}

export function ensureWrk(): string {
  for (const p of ['/usr/bin/wrk', '/usr/local/bin/wrk']) if (existsSync(p)) return p;
  process.stderr.write('bench: wrk is missing; installing it with apt-get (Debian package "wrk")\n');
  try {
    execFileSync('apt-get', ['install', '-y', 'wrk'], { stdio: 'ignore' });
  } catch {
    execFileSync('apt-get', ['update'], { stdio: 'ignore' });
    execFileSync('apt-get', ['install', '-y', 'wrk'], { stdio: 'ignore' });
  }
  if (!existsSync('/usr/bin/wrk')) throw new Error('wrk is not installed and apt-get could not install it');
  return '/usr/bin/wrk';
}

const scripts = new Map<string, string>();
function luaFor(body: { text?: string; repeat?: [string, number] }): string {
  const key = JSON.stringify(body);
  let p = scripts.get(key);
  if (!p) {
    const dir = mkdtempSync(join(tmpdir(), 'nightfuse-wrk-'));
    p = join(dir, 'post.lua');
    const expr = body.repeat ? `string.rep(${JSON.stringify(body.repeat[0])}, ${body.repeat[1]})` : JSON.stringify(body.text ?? '');
    writeFileSync(p, `wrk.method = "POST"\nwrk.body = ${expr}\n`);
    scripts.set(key, p);
  }
  return p;
}

function toUs(v: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(v);
  if (!m) return NaN;
  const x = Number(m[1]);
  return m[2] === 'us' ? x : m[2] === 'ms' ? x * 1000 : x * 1e6;
}

export function parseWrk(out: string): Omit<WrkResult, 'wrkCpuUs'> {
  const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? NaN);
  const lat = (p: string) => toUs(new RegExp(`^\\s+${p}%\\s+(\\S+)`, 'm').exec(out)?.[1] ?? '');
  const requests = num(/(\d+) requests in/);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = num(/Non-2xx or 3xx responses: (\d+)/) || 0;
  return {
    requests, rps: num(/Requests\/sec:\s+([\d.]+)/), p50_us: lat('50'), p99_us: lat('99'),
    errors: errors + (sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0),
  };
}

/** One wrk run (no warm-up of its own: the caller warms up). */
export function runWrk(url: string, conns: number, seconds: number, body: { text?: string; repeat?: [string, number] }): Promise<WrkResult> {
  const wrk = ensureWrk();
  return new Promise((resolve, reject) => {
    const c = spawn(wrk, ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency', '-s', luaFor(body), url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    // wrk's own CPU, read while it runs (the last sample before it exits)
    let cpu = 0;
    const poll = setInterval(() => {
      const x = c.pid ? cpuSeconds(c.pid) : 0;
      if (x > 0) cpu = x;
    }, 100);
    c.on('error', reject);
    c.on('exit', (code) => {
      clearInterval(poll);
      if (code !== 0) return reject(new Error(`wrk exited ${code}: ${err}`));
      const r = parseWrk(out);
      resolve({ ...r, wrkCpuUs: (cpu / r.requests) * 1e6 });
    });
  });
}
