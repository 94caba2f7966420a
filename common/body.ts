/** Reading a request body with a size limit, without buffering past it. */
import type { Readable } from 'node:stream';

export type BodyResult = { ok: true; body: Buffer } | { ok: false; size: number };

/** Collects `stream` up to `limit` bytes (0: no limit); past it, drains and reports the size seen. */
export function collectBody(stream: Readable, limit: number): Promise<BodyResult> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    stream.on('data', (c: Buffer) => {
      size += c.length;
      if (over) return;
      if (limit > 0 && size > limit) {
        over = true;
        chunks.length = 0;
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => resolve(over ? { ok: false, size } : { ok: true, body: chunks.length === 1 ? chunks[0] : Buffer.concat(chunks) }));
    stream.on('error', reject);
  });
}
