import t from 'tap';
import { parseFuncConfig, type FuncConfig, type FuncEntry } from '../common/func-config.js';
import { type HeadRules, parsePlainHead } from '../gateway/http-fast-head.js';

// The byte parser against the string parser it replaced (the oracle below, kept as it was), on
// heads built to hit every rule: they must agree on what is taken, and on its entry and lengths.

const config = parseFuncConfig(JSON.stringify([
  { funcName: 'Bar', funcId: 1, minWorkers: 1, maxWorkers: 1 },
  { funcName: 'Get', funcId: 2, minWorkers: 1, maxWorkers: 1, allowHttpGet: true },
  { funcName: 'Qs', funcId: 3, minWorkers: 1, maxWorkers: 1, allowHttpGet: true, qsAsInput: true },
  { funcName: 'Abc123', funcId: 4, minWorkers: 1, maxWorkers: 1 },
]));

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
function oracle(o: { config: FuncConfig; maxBodyBytes: number; limits: { maxHeaderBytes: number } }, buf: Buffer, off: number):
  { entry: FuncEntry; headLen: number; bodyLen: number } | undefined {
  const end = buf.indexOf('\r\n\r\n', off, 'latin1');
  if (end < 0 || end - off > o.limits.maxHeaderBytes) return undefined;
  const head = buf.toString('latin1', off, end);
  const lineEnd = head.indexOf('\r\n');
  const line = lineEnd < 0 ? head : head.slice(0, lineEnd);
  let method: 'GET' | 'POST';
  if (line.startsWith('POST /function/')) method = 'POST';
  else if (line.startsWith('GET /function/')) method = 'GET';
  else return undefined;
  if (!line.endsWith(' HTTP/1.1')) return undefined;
  const name = line.slice(method.length + 11, line.length - 9);
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === 0x3f || c === 0x23) return undefined;
  }
  const entry = o.config.byName.get(name);
  if (!entry || entry.qsAsInput || (method === 'GET' && !entry.allowHttpGet)) return undefined;
  let bodyLen = -1;
  let at = lineEnd < 0 ? head.length : lineEnd + 2;
  while (at < head.length) {
    let nl = head.indexOf('\r\n', at);
    if (nl < 0) nl = head.length;
    const colon = head.indexOf(':', at);
    if (colon < 0 || colon > nl) return undefined;
    const key = head.slice(at, colon);
    if (!TOKEN.test(key)) return undefined;
    const value = head.slice(colon + 1, nl).trim();
    for (let i = 0; i < value.length; i++) {
      const c = value.charCodeAt(i);
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) return undefined;
    }
    const k = key.length;
    if (k === 14 && key.toLowerCase() === 'content-length') {
      if (bodyLen >= 0 || !/^\d{1,15}$/.test(value)) return undefined;
      bodyLen = Number(value);
    } else if ((k === 17 && key.toLowerCase() === 'transfer-encoding') || (k === 6 && key.toLowerCase() === 'expect') ||
      (k === 7 && key.toLowerCase() === 'upgrade')) {
      return undefined;
    } else if (k === 10 && key.toLowerCase() === 'connection') {
      if (value.toLowerCase() !== 'keep-alive') return undefined;
    }
    at = nl + 2;
  }
  if (bodyLen < 0) bodyLen = 0;
  if (o.maxBodyBytes > 0 && bodyLen > o.maxBodyBytes) return undefined;
  return { entry, headLen: end + 4 - off, bodyLen };
}

let seed = 4242;
const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)];
/** mostly one of `good`, sometimes one of `bad`: most heads are near-valid, so every rule decides some */
const mostly = <T>(good: readonly T[], bad: readonly T[]): T => (rnd(8) === 0 ? pick(bad) : pick(good));
const WS = ['', '', '', ' ', '  ', '\t', '\x0b', '\x0c', '\xa0', ' \xa0'];
const caseOf = (s: string) => [...s].map((c) => (rnd(3) === 0 ? c.toUpperCase() : c)).join('');

function requestLine(): string {
  const method = mostly(['POST', 'POST', 'GET'], ['PUT', 'post', 'POST ', 'GE']);
  const name = mostly(['Bar', 'Bar', 'Get', 'Qs', 'Abc123'], ['Nope', '', 'Bar?x=1', 'Bar#f', 'B ar', 'B\xe4r', 'Bar\x7f', 'Bar/x', 'Bar\t']);
  const prefix = mostly(['/function/'], ['/functions/', '/Function/', 'http://h/function/', '/function//', '']);
  const version = mostly([' HTTP/1.1'], [' HTTP/1.0', ' HTTP/1.1 ', 'HTTP/1.1', ' http/1.1', ' HTTP/1.1\r']);
  return `${method} ${prefix}${name}${version}`;
}

function header(): string {
  const key = mostly(['Content-Length', 'content-length', 'CONTENT-LENGTH', 'Connection', 'Host', 'X-A', 'Keep-Alive', 'User-Agent', 'Accept'],
    ['Transfer-Encoding', 'Expect', 'Upgrade', 'Content-Lengt', 'Content-Length ', ' Content-Length', 'Con(tent', '', 'X\xe4']);
  let value: string;
  if (/content-length/i.test(key)) {
    value = mostly(['5', '0', '12', '000', '123456789012345'], ['1234567890123456', '+5', '-1', '5 5', '0x10', '', '\u0663', '5\x00', '5\n']);
  } else if (/^connection$/i.test(key)) value = caseOf(mostly(['keep-alive'], ['close', 'Keep-Alive, Upgrade', 'keep-aliv\xe9', 'keep alive']));
  else value = mostly(['x', '127.0.0.1:8080', 'a\tb', '\xe9', '', 'wrk', 'a:b', '*/*'], ['a\x01b', 'a\x7fb', 'a\nb', 'a\rb', '\x00']);
  const sep = mostly([':'], ['', '::', ' :']);
  return `${rnd(4) === 0 ? caseOf(key) : key}${sep}${pick(WS)}${value}${pick(WS)}`;
}

function head(): string {
  const lines = [requestLine()];
  const n = rnd(5);
  for (let i = 0; i < n; i++) lines.push(header());
  if (rnd(20) === 0) lines.push(' folded');
  return lines.join(mostly(['\r\n'], ['\n', '\r', '\r\r\n'])) + mostly(['\r\n\r\n'], ['\r\n', '', '\n\n']);
}

t.test('the byte parser takes exactly what the string parser took, with the same entry and lengths', async (t) => {
  let disagree = 0;
  let taken = 0;
  const N = 60000;
  for (let i = 0; i < N; i++) {
    const rules: HeadRules = { config, maxBodyBytes: pick([0, 0, 10, 5]), limits: { maxHeaderBytes: pick([16384, 16384, 40]) } };
    const before = pick(['', '', 'xx', 'POST /function/Bar HTTP/1.1\r\n\r\n']);
    const buf = Buffer.from(before + head() + pick(['', 'Hello', 'POST /function/Bar HTTP/1.1\r\n\r\n']), 'latin1');
    const off = Buffer.byteLength(before, 'latin1');
    const want = oracle(rules, buf, off);
    const got = parsePlainHead(rules, buf, off);
    if (want) taken++;
    const same = want === undefined ? got === undefined
      : got !== undefined && got.entry === want.entry && got.headLen === want.headLen && got.bodyLen === want.bodyLen;
    if (!same && disagree++ < 5) t.fail(`differs on ${JSON.stringify(buf.toString('latin1', off))}: ${JSON.stringify(want && { ...want, entry: want.entry.funcName })} vs ${JSON.stringify(got && { ...got, entry: got.entry.funcName })}`);
  }
  t.equal(disagree, 0, `${N} heads, ${taken} taken by both`);
  t.ok(taken > N / 20 && taken < N * 0.9, `the heads exercise both answers (${taken} of ${N} taken)`);
});

t.test('a plain call, byte for byte', async (t) => {
  const rules: HeadRules = { config, maxBodyBytes: 0, limits: { maxHeaderBytes: 16384 } };
  const h = 'POST /function/Bar HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 5\r\n\r\n';
  const got = parsePlainHead(rules, Buffer.from(`${h}Hello`), 0);
  t.same(got && { name: got.entry.funcName, headLen: got.headLen, bodyLen: got.bodyLen }, { name: 'Bar', headLen: h.length, bodyLen: 5 });
  t.equal(parsePlainHead(rules, Buffer.from('GET /function/Bar HTTP/1.1\r\n\r\n'), 0), undefined, 'GET where it is not allowed');
  t.ok(parsePlainHead(rules, Buffer.from('GET /function/Get HTTP/1.1\r\n\r\n'), 0), 'GET where it is');
});
