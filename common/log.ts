/** Structured JSON logs on stderr (stdout stays free for what a command prints). */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(component: string, fields: Record<string, unknown> = {}): Logger {
  const level = process.env.NIGHTFUSE_LOG_LEVEL ?? 'info';
  return pino({ level, base: { component, pid: process.pid, ...fields } }, pino.destination({ fd: 2, sync: false }));
}
