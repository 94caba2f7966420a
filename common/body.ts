/** Reading a request body with a size limit, without buffering past it. */
import type { Readable } from 'node:stream';

export type BodyResult = { ok: true; body: Buffer } | { ok: false; size: number; why: 'limit' | 'budget' };

/**
 * Bytes held by bodies still being received, shared by the streams of one
 * connection (an HTTP/2 session multiplexes many): bounds what one peer can
 * make us buffer at once, whatever the per-body limit.
 */
export class ByteBudget {
  used = 0;
  constructor(readonly max: number) {}
}

export interface CollectOptions {
  /** resolve as soon as the limit is passed (the rest is read and dropped) instead of at the end */
  early?: boolean;
  budget?: ByteBudget;
}

/**
 * Collects `stream` up to `limit` bytes (0: no limit); past it (or past the
 * shared budget), keeps draining and reports the size seen. A stream that
 * closes before its end (peer reset, socket gone) rejects.
 */
export function collectBody(stream: Readable, limit: number, opts: CollectOptions = {}): Promise<BodyResult> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const budget = opts.budget;
    let size = 0;
    let held = 0;
    let over: 'limit' | 'budget' | undefined;
    let settled = false;
    const release = () => {
      if (budget) budget.used -= held;
      held = 0;
    };
    const fail = (why: 'limit' | 'budget') => {
      over = why;
      chunks.length = 0;
      release();
      if (opts.early) {
        settled = true;
        resolve({ ok: false, size, why });
      }
    };
    stream.on('data', (c: Buffer) => {
      size += c.length;
      if (over) return;
      if (limit > 0 && size > limit) return fail('limit');
      if (budget) {
        budget.used += c.length;
        held += c.length;
        if (budget.used > budget.max) return fail('budget');
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      release();
      if (settled) return;
      settled = true;
      resolve(over ? { ok: false, size, why: over } : { ok: true, body: chunks.length === 1 ? chunks[0] : Buffer.concat(chunks) });
    });
    stream.on('close', () => {
      release();
      if (settled) return;
      settled = true;
      reject(new Error(`the body ended early, after ${size} bytes (peer reset or connection closed)`));
    });
    stream.on('error', (err) => {
      release();
      if (settled) return;
      settled = true;
      reject(err);
    });
  });
}
