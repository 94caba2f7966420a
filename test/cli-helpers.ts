/** Running `nightfuse` as a real process in the CLI tests, with a state folder of its own. */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, post, startStack, type Stack } from './helpers.js';

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
    /** Waits for the process to end by itself. */
    async done(): Promise<CliRun> {
      const code = await exited;
      return { code: code ?? -1, ...out };
    },
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

export const CLI_TOKEN = 'cli-stack-test-token-0123';

/**
 * A stack for the CLI tests: manual merges only (no edge gets hot enough for auto, none cools a
 * merge down), debug logs, some Foo -> Bar traffic; `env` points the CLI at it.
 */
export async function cliStack(): Promise<{ stack: Stack; env: NodeJS.ProcessEnv; policy: string; cleanup: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'nightfuse-cli-stack-'));
  const state = isolatedState();
  const policy = join(dir, 'policy.yaml');
  writeFileSync(policy, 'defaults: { mode: auto, isolation: stack, minCallsPerSec: 1000000000, unmergeBelowCallsPerSec: 0 }\n');
  const stack = await startStack({
    gatewayFlags: [`--merge_policy_file=${policy}`], launcherFlags: ['--merge_tick_ms=200'],
    env: { NIGHTFUSE_ADMIN_TOKEN: CLI_TOKEN, NIGHTFUSE_LOG_LEVEL: 'debug' },
  });
  for (let i = 0; i < 20; i++) await post(stack.httpPort, '/function/Foo', `warm-${i}`);
  return {
    stack, policy,
    env: { ...state.env, NIGHTFUSE_GATEWAY: `http://127.0.0.1:${stack.httpPort}`, NIGHTFUSE_ADMIN_TOKEN: CLI_TOKEN },
    async cleanup() {
      await stack.stop();
      rmSync(dir, { recursive: true, force: true });
      state.cleanup();
    },
  };
}

export interface CliStackContext {
  stack: Stack;
  env: NodeJS.ProcessEnv;
  policy: string;
}

/** Registers a cliStack() for the test file (before/teardown); the returned context is filled in before the first test. */
export function useCliStack(tap: { before(f: () => Promise<void>): void; teardown(f: () => Promise<void>): void }, ready?: (c: CliStackContext) => Promise<void>): CliStackContext {
  const ctx = {} as CliStackContext;
  tap.before(async () => {
    const s = await cliStack();
    Object.assign(ctx, { stack: s.stack, env: s.env, policy: s.policy });
    tap.teardown(s.cleanup);
    await ready?.(ctx);
  });
  return ctx;
}
