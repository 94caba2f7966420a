/** The injector's test targets (native/test/targets): echo loops to check a target still works after an injection. */
import { join } from 'node:path';
import { NATIVE_BUILD } from '../common/paths.js';
import { spawnProcess } from '../launcher/spawn.js';

export interface Target {
  pid: number;
  /** sends a line, resolves with the target's answer ("echo <line>") */
  echo(s: string): Promise<string>;
  stop(): void;
}

/**
 * Starts a target the way the launcher starts workers (posix_spawn, not
 * child_process: libuv would take the tracee's ptrace stops for exits when
 * this process traces it). Its stdin/stdout are our socketpair.
 */
export function startTarget(name: string): Promise<Target> {
  return new Promise((resolve) => {
    const p = spawnProcess({ file: join(NATIVE_BUILD, 'targets', name), args: [], env: process.env, stdioOnControl: true });
    let buf = '';
    let waiter: ((line: string) => void) | undefined;
    p.control.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith('ready ')) {
          setTimeout(() => resolve({
            pid: p.pid,
            echo: (s) => new Promise((r) => { waiter = r; p.control.write(`${s}\n`); }),
            stop: () => p.kill('SIGKILL'),
          }), 10);
        } else waiter?.(line);
      }
    });
  });
}
