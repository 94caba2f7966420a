/** Running `nightfuse` as a real process in the CLI tests, with a state folder of its own. */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from './helpers.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** A fresh XDG_STATE_HOME, so no user's `nightfuse up` state leaks in; removed by the returned function. */
export function isolatedState(): { env: NodeJS.ProcessEnv; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'nightfuse-cli-state-'));
  const { NIGHTFUSE_GATEWAY: _g, NIGHTFUSE_ADMIN_TOKEN: _t, ...rest } = process.env;
  return { env: { ...rest, XDG_STATE_HOME: dir }, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function runCli(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 30000): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Starts `nightfuse <args>`, collects output until `stop(signal)`; for --watch and --follow. */
export function startCli(args: string[], env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d: Buffer) => (out.stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out.stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    out,
    async stop(signal: NodeJS.Signals = 'SIGINT'): Promise<CliRun> {
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      const code = await exited;
      clearTimeout(t);
      return { code: code ?? -1, ...out };
    },
  };
}

/** A usage or expected error: exactly one line on stderr, no stack frames. */
export function oneErrorLine(stderr: string): boolean {
  const lines = stderr.split('\n').filter(Boolean);
  return lines.length === 1 && !/\n\s+at |^\s+at /m.test(stderr);
}
