/**
 * Helpers for the container test (scripts/test-containers.ts): podman set up
 * the way these machines allow (root, runc, cgroupfs, no default ulimits), a
 * locally made base image, checks that count, and a load loop that records
 * every call.
 */
import { execFile, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const BASE_IMAGE = 'debian:trixie-slim';

// ---------------------------------------------------------------- checks

export class Checks {
  passed = 0;
  failed = 0;
  private readonly started = Date.now();
  ok(cond: boolean, what: string, detail?: unknown): boolean {
    if (cond) this.passed++;
    else this.failed++;
    const n = this.passed + this.failed;
    const d = detail === undefined || cond ? '' : `\n    ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`;
    process.stdout.write(`${cond ? 'ok' : 'not ok'} ${n} - ${what}${d}\n`);
    return cond;
  }
  note(text: string): void {
    process.stdout.write(`# ${text} (${((Date.now() - this.started) / 1000).toFixed(1)} s)\n`);
  }
}

// ---------------------------------------------------------------- processes

export interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: SpawnSyncOptions & { quiet?: boolean } = {}): Run {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.error) return { status: 127, stdout: '', stderr: r.error.message };
  return { status: r.status ?? 1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

export function have(cmd: string): boolean {
  return run('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

// ---------------------------------------------------------------- podman

/** podman with the settings these machines need (crun refuses hybrid cgroups; default ulimits are refused). */
export class Podman {
  readonly confDir = mkdtempSync(join(tmpdir(), 'nf-podman-'));
  private readonly env: NodeJS.ProcessEnv;

  constructor() {
    writeFileSync(join(this.confDir, 'containers.conf'), '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n');
    this.env = { ...process.env, CONTAINERS_CONF: join(this.confDir, 'containers.conf') };
  }

  run(args: string[], opts: { input?: string | Buffer; inherit?: boolean } = {}): Run {
    return run('podman', ['--runtime=runc', '--cgroup-manager=cgroupfs', ...args], {
      env: this.env, input: opts.input, stdio: opts.inherit ? ['pipe', 'inherit', 'inherit'] : 'pipe',
    });
  }

  /** Like run, but throws with podman's message on failure. */
  must(args: string[], opts: { input?: string | Buffer; inherit?: boolean } = {}): string {
    const r = this.run(args, opts);
    if (r.status !== 0) throw new Error(`podman ${args.slice(0, 3).join(' ')} … failed (${r.status}): ${r.stderr.trim().slice(-2000)}`);
    return r.stdout.trim();
  }

  imageExists(name: string): boolean {
    return this.run(['image', 'exists', name]).status === 0;
  }

  ip(container: string, network: string): string {
    return this.must(['inspect', '-f', `{{(index .NetworkSettings.Networks "${network}").IPAddress}}`, container]);
  }

  /** The host port a container port is published on (127.0.0.1::<port>). */
  hostPort(container: string, port: number): number {
    const out = this.must(['port', container, `${port}/tcp`]);
    const m = /:(\d+)\s*$/m.exec(out);
    if (!m) throw new Error(`no published port ${port} on ${container}: ${out}`);
    return Number(m[1]);
  }

  /** Off the event loop (a load runs meanwhile). */
  state(container: string): Promise<{ running: boolean; exitCode: number }> {
    return new Promise((resolve) => {
      execFile('podman', ['--runtime=runc', '--cgroup-manager=cgroupfs', 'inspect', '-f', '{{.State.Running}} {{.State.ExitCode}}', container], { env: this.env }, (_err, stdout) => {
        const out = String(stdout).trim().split(' ');
        resolve({ running: out[0] === 'true', exitCode: Number(out[1]) });
      });
    });
  }

  cleanup(): void {
    rmSync(this.confDir, { recursive: true, force: true });
  }
}

/** Installs podman (Debian's, as root) when it is missing; returns why it cannot run, or ''. */
export function ensurePodman(): string {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root (this test runs podman as root)';
  if (have('podman') && have('runc') && have('debootstrap')) return '';
  if (!have('apt-get')) return 'podman is not installed and there is no apt-get';
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (run('apt-get', ['update', '-q'], { env, stdio: 'inherit' }).status !== 0) return 'apt-get update failed';
  if (run('apt-get', ['install', '-y', '-q', 'podman', 'runc', 'debootstrap'], { env, stdio: 'inherit' }).status !== 0) return 'apt-get install podman runc debootstrap failed';
  return '';
}

/**
 * The base image the Dockerfile names, made locally (no registry is
 * reachable): a minimal trixie from Debian's mirror, imported once and reused.
 */
export function ensureBaseImage(p: Podman): 'cached' | 'made' {
  if (p.imageExists(BASE_IMAGE)) return 'cached';
  const dir = mkdtempSync(join(tmpdir(), 'nf-trixie-'));
  try {
    const d = run('debootstrap', ['--variant=minbase', 'trixie', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
    if (d.status !== 0) throw new Error(`debootstrap trixie failed (${d.status})`);
    // through a file: a root file system is hundreds of MiB, too much to hold in a pipe buffer of ours
    const tarFile = `${dir}.tar`;
    const tar = spawnSync('tar', ['-C', dir, '-cf', tarFile, '.'], { stdio: ['ignore', 'ignore', 'inherit'] });
    if (tar.status !== 0) throw new Error(`tar of the trixie root failed (${tar.status})`);
    p.must(['import', tarFile, BASE_IMAGE]);
    return 'made';
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}.tar`, { force: true });
  }
}

/** Build arguments for npm behind a TLS-re-signing proxy: the host's bundle, mounted and named. */
export function caBuildArgs(): string[] {
  const ca = process.env.NODE_EXTRA_CA_CERTS;
  if (!ca || !existsSync(ca)) return [];
  return ['-v', `${ca}:/run/nightfuse-ca.crt:ro`, '--build-arg', 'NODE_EXTRA_CA_CERTS=/run/nightfuse-ca.crt'];
}

// ---------------------------------------------------------------- HTTP

export interface CallRecord {
  start: number;
  end: number;
  /** 0: no response (refused, reset) */
  status: number;
  ok: boolean;
  detail: string;
}

export function httpCall(port: number, method: string, path: string, body: string, agent: http.Agent | false, headers: Record<string, string> = {}, timeoutMs = 30000): Promise<{ status: number; body: string; error?: string }> {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, timeout: timeoutMs, headers: { 'Content-Length': Buffer.byteLength(body), ...headers } }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      res.on('error', (err) => resolve({ status: 0, body: '', error: err.message }));
    });
    req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ status: 0, body: '', error: err.code ?? err.message }));
    req.end(body);
  });
}

/** Foo's answer for an input (examples/functions/foo.c and bar.c). */
export const fooAnswer = (input: string) => `From function Bar: ${input}, World\n`;

/**
 * Calls Foo on `lanes` kept-alive connections until stop(), each with its own
 * input, and records every call (start, end, status, right answer or not).
 */
export function fooLoad(port: number, lanes: number, tag: string) {
  const calls: CallRecord[] = [];
  let stopping = false;
  const lane = async (k: number) => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    for (let i = 0; !stopping; i++) {
      const input = `${tag}-${k}-${i}`;
      const start = Date.now();
      const r = await httpCall(port, 'POST', '/function/Foo', input, agent);
      const ok = r.status === 200 && r.body === fooAnswer(input);
      calls.push({ start, end: Date.now(), status: r.status, ok, detail: ok ? '' : `${r.status} ${r.error ?? r.body.slice(0, 80)}` });
      if (r.status === 0) await new Promise((res) => setTimeout(res, 20)); // refused: do not spin
    }
    agent.destroy();
  };
  const done = Promise.all(Array.from({ length: lanes }, (_, k) => lane(k)));
  return {
    calls,
    async stop(): Promise<CallRecord[]> {
      stopping = true;
      await done;
      return calls;
    },
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if (await cond()) return true;
    } catch {
      /* not yet */
    }
    await sleep(100);
  }
  return false;
}
