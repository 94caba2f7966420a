/** Shared pieces of the benchmarks: processes, load runs, tables. */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LoadResult } from './loadgen.js';

export const DIST_SCRIPTS = fileURLToPath(new URL('.', import.meta.url));
export const CLI = join(DIST_SCRIPTS, '..', '..', 'bin', 'nightfuse.js');

export const started: ChildProcess[] = [];

export function spawnReady(cmd: string, args: string[], ready: RegExp, timeoutMs = 30000): Promise<{ child: ChildProcess; m: RegExpExecArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NIGHTFUSE_LOG_LEVEL: 'warn' } });
    started.push(child);
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => (err = (err + d).slice(-4000)));
    const timer = setTimeout(() => reject(new Error(`${args.join(' ')} not ready; stderr: ${err}`)), timeoutMs);
    child.stdout!.on('data', (d) => {
      out += d;
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, m });
      }
    });
    child.once('exit', (c) => reject(new Error(`${args.join(' ')} exited ${c}; stderr: ${err}`)));
  });
}

export async function stopAll(): Promise<void> {
  await Promise.all(started.map((c) => new Promise<void>((r) => {
    if (c.exitCode !== null || c.signalCode !== null) return r();
    c.once('exit', () => r());
    c.kill('SIGTERM');
    setTimeout(() => c.kill('SIGKILL'), 5000).unref();
  })));
}

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

export function load(port: number, path: string, body: string, conns: number, seconds: number, warmup = 1): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [join(DIST_SCRIPTS, 'loadgen.js'), String(port), path, body, String(conns), String(seconds), String(warmup)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`loadgen exited ${code}`))));
  });
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((x) => (typeof x === 'number' ? fmt(x) : x)))];
  const w = headers.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const line = (r: (string | number)[]) => '| ' + r.map((x, i) => String(x).padEnd(w[i])).join(' | ') + ' |';
  return [line(cells[0]), '|' + w.map((x) => '-'.repeat(x + 2)).join('|') + '|', ...cells.slice(1).map(line)].join('\n');
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return '-';
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}
