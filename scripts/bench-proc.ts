/**
 * What a benchmark reads about processes from /proc: the process tree of a
 * stack (by role), CPU time (utime + stime of the whole thread group, field 14
 * and 15 of /proc/<pid>/stat) and resident memory (VmRSS).
 */
import { readdirSync, readFileSync } from 'node:fs';

/** USER_HZ: the unit of utime/stime; 100 on every Linux this runs on. */
const TICKS_PER_SEC = 100;

export interface ProcInfo {
  pid: number;
  ppid: number;
  comm: string;
  cmdline: string;
}

function readStat(pid: number): string[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const close = s.lastIndexOf(')');
    // fields after the comm: index 0 is field 3 (state)
    return [s.slice(s.indexOf('(') + 1, close), ...s.slice(close + 2).split(' ')];
  } catch {
    return undefined;
  }
}

/** utime + stime of the whole process, in seconds (0 once it is gone). */
export function cpuSeconds(pid: number): number {
  const f = readStat(pid);
  if (!f) return 0;
  return (Number(f[12]) + Number(f[13])) / TICKS_PER_SEC; // fields 14, 15
}

/** VmRSS and its private (RssAnon) and file-backed (RssFile: the node binary, libraries) parts, MiB. */
export function rssParts(pid: number): { rss: number; anon: number; file: number } {
  try {
    const st = readFileSync(`/proc/${pid}/status`, 'latin1');
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(st)?.[1] ?? NaN) / 1024;
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
  } catch {
    return { rss: NaN, anon: NaN, file: NaN };
  }
}

/** Every live descendant of `root` (not `root` itself). */
export function descendants(root: number): ProcInfo[] {
  const all: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = readStat(Number(name));
    if (!f) continue;
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${name}/cmdline`, 'latin1').replace(/\0/g, ' ').trim();
    } catch {
      continue;
    }
    all.push({ pid: Number(name), ppid: Number(f[2]), comm: f[0], cmdline });
  }
  const out: ProcInfo[] = [];
  const frontier = [root];
  while (frontier.length) {
    const p = frontier.pop()!;
    for (const c of all) if (c.ppid === p) {
      out.push(c);
      frontier.push(c.pid);
    }
  }
  return out;
}

/** The roles of a `nightfuse up` stack: separate processes (today's) or one process (gateway + node agent). */
export interface StackPids {
  up: number;
  /** the process that runs the gateway (the up process itself in one-process mode) */
  gateway: number;
  /** the process that runs the node agent (the same as gateway in one-process mode) */
  agent: number;
  workers: number[];
}

export function stackPids(upPid: number): StackPids {
  const ds = descendants(upPid);
  const gw = ds.find((p) => p.ppid === upPid && / gateway( |$)/.test(p.cmdline));
  const la = ds.find((p) => p.ppid === upPid && / launcher( |$)/.test(p.cmdline));
  const workers = ds.filter((p) => p.comm.startsWith('nightfuse-work') || p.cmdline.includes('nightfuse-worker')).map((p) => p.pid);
  return { up: upPid, gateway: gw?.pid ?? upPid, agent: la?.pid ?? upPid, workers };
}

export interface CpuSample {
  up: number;
  gateway: number;
  agent: number;
  workers: number;
}

export function sampleCpu(p: StackPids): CpuSample {
  const seen = new Set<number>();
  const once = (pid: number) => {
    if (seen.has(pid)) return 0;
    seen.add(pid);
    return cpuSeconds(pid);
  };
  // Shared roles (one process) are counted once, under the first role that names them.
  const gateway = once(p.gateway);
  const agent = once(p.agent);
  const up = once(p.up);
  let workers = 0;
  for (const w of p.workers) workers += once(w);
  return { up, gateway, agent, workers };
}
