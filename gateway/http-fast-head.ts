/**
 * The fast path's request-head parser, on the bytes: the request line and the
 * headers are read where they are, and the function's name is the only
 * string made (parsing a decoded copy of the head, with a string per header
 * name and value, was ~4 % of the one process's CPU on Bar). Its rules are the
 * fast path's (http-fast.ts): anything it does not take is left to node:http,
 * so "undefined" is always a safe answer, and a head it takes must be one that
 * node:http would read the same way.
 */
import type { FuncConfig, FuncEntry } from '../common/func-config.js';

/** A parsed plain request head. */
export interface PlainHead {
  entry: FuncEntry;
  headLen: number;
  bodyLen: number;
}

/** The fast path's options this reads (FastPathOptions has them). */
export interface HeadRules {
  config: FuncConfig;
  limits: { maxHeaderBytes: number };
  /** 0: no limit */
  maxBodyBytes: number;
}

const POST = Buffer.from('POST /function/', 'latin1');
const GET = Buffer.from('GET /function/', 'latin1');
const VERSION = Buffer.from(' HTTP/1.1', 'latin1');
const CONTENT_LENGTH = Buffer.from('content-length', 'latin1');
const TRANSFER_ENCODING = Buffer.from('transfer-encoding', 'latin1');
const EXPECT = Buffer.from('expect', 'latin1');
const UPGRADE = Buffer.from('upgrade', 'latin1');
const CONNECTION = Buffer.from('connection', 'latin1');
const KEEP_ALIVE = Buffer.from('keep-alive', 'latin1');

/** RFC 9110 tchar */
const TOKEN = new Uint8Array(256);
for (const c of "!#$%&'*+.^_`|~-") TOKEN[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TOKEN[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TOKEN[c] = TOKEN[c + 0x20] = 1;
/** what String.prototype.trim removes, among latin1 code units */
const TRIM = new Uint8Array(256);
for (const c of [0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0xa0]) TRIM[c] = 1;

// Byte loops, not Buffer methods: a head is ~100 bytes, and each native call costs more than the loop.

/** First CRLF wholly inside [from, to), or -1. */
function crlf(buf: Buffer, from: number, to: number): number {
  for (let i = from; i + 1 < to; i++) if (buf[i] === 13 && buf[i + 1] === 10) return i;
  return -1;
}

/** Where the first CRLFCRLF at or after `off` starts, if it starts by `limit`; else -1. */
function headEnd(buf: Buffer, off: number, limit: number): number {
  const last = Math.min(buf.length - 4, limit);
  for (let i = off; i <= last; i++) if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  return -1;
}

/** [at, to) starts with `s`. */
function startsWith(buf: Buffer, at: number, to: number, s: Buffer): boolean {
  if (to - at < s.length) return false;
  for (let i = 0; i < s.length; i++) if (buf[at + i] !== s[i]) return false;
  return true;
}

/** ASCII case-insensitive equality of [at, to) with the lower-case `s`. */
function equalsLower(buf: Buffer, at: number, to: number, s: Buffer): boolean {
  if (to - at !== s.length) return false;
  for (let i = 0; i < s.length; i++) {
    const c = buf[at + i];
    if ((c >= 0x41 && c <= 0x5a ? c + 0x20 : c) !== s[i]) return false;
  }
  return true;
}

// The last name looked up, as bytes: a client calls the same function again and again, and a
// match needs neither the name's string nor the map lookup. Tied to the config it was found in.
let lastConfig: FuncConfig | undefined;
let lastName = Buffer.alloc(0);
let lastEntry: FuncEntry | undefined;

function lookUp(config: FuncConfig, buf: Buffer, at: number, to: number): FuncEntry | undefined {
  const n = to - at;
  if (config === lastConfig && n === lastName.length) {
    let i = 0;
    while (i < n && buf[at + i] === lastName[i]) i++;
    if (i === n) return lastEntry;
  }
  const entry = config.byName.get(buf.toString('latin1', at, to));
  if (entry) {
    lastConfig = config;
    lastName = Buffer.from(buf.subarray(at, to));
    lastEntry = entry;
  }
  return entry;
}

/**
 * Parses a plain request head at `off`; undefined when it is not one (or not
 * complete yet).
 */
export function parsePlainHead(r: HeadRules, buf: Buffer, off: number): PlainHead | undefined {
  const end = headEnd(buf, off, off + r.limits.maxHeaderBytes);
  if (end < 0) return undefined;
  const lineCrlf = crlf(buf, off, end);
  const lineEnd = lineCrlf < 0 ? end : lineCrlf;
  let nameAt: number;
  let get = false;
  if (startsWith(buf, off, lineEnd, POST)) nameAt = off + POST.length;
  else if (startsWith(buf, off, lineEnd, GET)) (nameAt = off + GET.length), (get = true);
  else return undefined;
  const nameEnd = lineEnd - VERSION.length;
  if (nameEnd < off || !startsWith(buf, nameEnd, lineEnd, VERSION)) return undefined;
  // no query, fragment, spaces or anything node would read differently
  for (let i = nameAt; i < nameEnd; i++) {
    const c = buf[i];
    if (c <= 0x20 || c >= 0x7f || c === 0x3f || c === 0x23) return undefined;
  }
  const entry = nameEnd > nameAt ? lookUp(r.config, buf, nameAt, nameEnd) : undefined;
  if (!entry || entry.qsAsInput || (get && !entry.allowHttpGet)) return undefined;
  let bodyLen = -1;
  let at = lineCrlf < 0 ? end : lineCrlf + 2;
  while (at < end) {
    let nl = crlf(buf, at, end);
    if (nl < 0) nl = end;
    let colon = at;
    while (colon < nl && buf[colon] !== 0x3a) colon++;
    if (colon === nl || colon === at) return undefined;
    for (let i = at; i < colon; i++) if (!TOKEN[buf[i]]) return undefined;
    let v = colon + 1;
    let vEnd = nl;
    while (v < vEnd && TRIM[buf[v]]) v++;
    while (vEnd > v && TRIM[buf[vEnd - 1]]) vEnd--;
    for (let i = v; i < vEnd; i++) {
      const c = buf[i];
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) return undefined;
    }
    const k = colon - at;
    if (k === 14 && equalsLower(buf, at, colon, CONTENT_LENGTH)) {
      if (bodyLen >= 0 || vEnd === v || vEnd - v > 15) return undefined;
      let n = 0;
      for (let i = v; i < vEnd; i++) {
        const d = buf[i] - 0x30;
        if (d < 0 || d > 9) return undefined;
        n = n * 10 + d;
      }
      bodyLen = n;
    } else if ((k === 17 && equalsLower(buf, at, colon, TRANSFER_ENCODING)) || (k === 6 && equalsLower(buf, at, colon, EXPECT)) ||
      (k === 7 && equalsLower(buf, at, colon, UPGRADE))) {
      return undefined;
    } else if (k === 10 && equalsLower(buf, at, colon, CONNECTION)) {
      if (!equalsLower(buf, v, vEnd, KEEP_ALIVE)) return undefined;
    }
    at = nl + 2;
  }
  if (bodyLen < 0) bodyLen = 0;
  if (r.maxBodyBytes > 0 && bodyLen > r.maxBodyBytes) return undefined;
  return { entry, headLen: end + 4 - off, bodyLen };
}
