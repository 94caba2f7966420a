/**
 * `qsAsInput`: the query string as a flat JSON object of strings, byte-for-byte
 * as Nightcore's gateway builds it (spec §3.2): pieces split on '&' (empty ones
 * dropped), each exactly `key=value`; raw A-Z a-z 0-9 ~ - . _ allowed, '+' is a
 * space, %XY a byte; an invalid piece is skipped; the last duplicate wins; keys
 * sorted byte-wise; compact; no valid piece -> `null`. A piece that decodes to
 * invalid UTF-8 is skipped too (Nightcore's gateway would abort on it).
 */
const RAW = /^[A-Za-z0-9~\-._+%]*$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeComponent(s: string): string | undefined {
  if (!RAW.test(s)) return undefined;
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2b) bytes.push(0x20);
    else if (c === 0x25) {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return undefined;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else bytes.push(c);
  }
  try {
    return utf8.decode(Uint8Array.from(bytes));
  } catch {
    return undefined;
  }
}

export function queryToJsonInput(query: string): Buffer {
  const map = new Map<string, string>();
  for (const piece of query.split('&')) {
    if (piece === '') continue;
    const parts = piece.split('=');
    if (parts.length !== 2) continue;
    const k = decodeComponent(parts[0]);
    const v = decodeComponent(parts[1]);
    if (k === undefined || v === undefined) continue;
    map.set(k, v);
  }
  if (map.size === 0) return Buffer.from('null');
  const keys = [...map.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return Buffer.from('{' + keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(map.get(k))}`).join(',') + '}');
}
