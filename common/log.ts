/**
 * Structured logs on stderr (stdout stays free for what a command prints):
 * one JSON object per line, or human-readable lines (pino-pretty) when
 * stderr is a terminal. NIGHTFUSE_LOG_FORMAT=json|pretty overrides the
 * choice (`nightfuse up` pipes its children's logs and tells them which).
 *
 * Keys: `pid` is always the logging process's own; a worker process's id is
 * `workerPid`, so no line carries the same key twice.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export type LogFormat = 'json' | 'pretty';

export function logFormat(env: NodeJS.ProcessEnv = process.env, tty = process.stderr.isTTY === true): LogFormat {
  const f = env.NIGHTFUSE_LOG_FORMAT;
  if (f === 'json' || f === 'pretty') return f;
  return tty ? 'pretty' : 'json';
}

export function createLogger(component: string, fields: Record<string, unknown> = {}): Logger {
  const level = process.env.NIGHTFUSE_LOG_LEVEL ?? 'info';
  const base = { component, pid: process.pid, ...fields };
  if (logFormat() === 'pretty') {
    // In-process and synchronous: a terminal reader wants lines in order, and volume is low.
    const stream = pretty({
      destination: 2, sync: true, colorize: process.stderr.isTTY === true || process.env.FORCE_COLOR !== undefined,
      translateTime: 'SYS:HH:MM:ss.l', ignore: 'hostname,component', messageFormat: '{component}: {msg}',
    });
    return pino({ level, base }, stream);
  }
  return pino({ level, base }, pino.destination({ fd: 2, sync: false }));
}
