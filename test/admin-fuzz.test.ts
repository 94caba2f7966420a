// Adversarial admin API: 1,200 generated requests (random and mutated methods, paths, tokens,
// bodies, oversized and slow ones) against a real gateway + launcher. An oracle built from the
// served OpenAPI document predicts each answer; every status and JSON shape is checked, nothing
// may crash or hang, and the gateway's RSS and open file descriptors are compared before and after.
// Reproduce a run with ADMIN_FUZZ_SEED=<seed printed below>.
import t from 'tap';
import { Ajv } from 'ajv';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { parsePolicy } from '../common/policy.js';
import { startStack, waitFor, type Stack } from './helpers.js';

const TOKEN = 'fuzz-token-7f3a9c';
const COUNT = 1200;
const LANES = 8;
const LIMIT = 1 << 20;
const seed = Number(process.env.ADMIN_FUZZ_SEED ?? Date.now() % 1e9);
t.comment(`seed ${seed}`);

function mulberry32(a: number) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(seed);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
const chance = (p: number) => rnd() < p;

let stack: Stack;
let doc: any;
const ajv = new Ajv({ allErrors: true, strict: false });
ajv.addFormat('date-time', true);
const compiled = new Map<string, ReturnType<typeof ajv.compile>>();
/** A validator of a schema in the served document, by its $ref (compiled once). */
const schema = (ref: string) => {
  let v = compiled.get(ref);
  if (!v) compiled.set(ref, (v = ajv.compile({ $ref: `openapi${ref}` })));
  return v;
};

const procStats = (pid: number) => ({
  rssKiB: Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]),
  fds: readdirSync(`/proc/${pid}/fd`).length,
});

interface Req {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  /** send the body in pieces over this long */
  slowMs?: number;
  what: string;
}

// ---- the generator -------------------------------------------------------------------------

const NAMES = ['Foo', 'Bar', 'Blob', 'Nope', 'grpc:nightfuse.examples.Greeter', '', 'x'.repeat(300), 'Fo o', '../etc', 'Foo\u0000'];
const ISOLATIONS: unknown[] = ['inline', 'stack', 'thread', 'sideways', '', null, 3, {}, [], ['thread'], { a: 'thread' }, true];
const JUNK: unknown[] = [null, 0, -1, 1e308, '', 'str', true, [], [1, 2], {}, { caller: 'Foo' }, '\u{1F600}'];

function mergeBody(): unknown {
  if (chance(0.15)) return pick(JUNK);
  const b: Record<string, unknown> = {};
  if (chance(0.9)) b.caller = chance(0.8) ? pick(NAMES.slice(0, 4)) : pick([...NAMES, ...JUNK]);
  if (chance(0.9)) b.callee = chance(0.8) ? pick(NAMES.slice(0, 4)) : pick([...NAMES, ...JUNK]);
  if (chance(0.5)) b.isolation = pick(ISOLATIONS);
  if (chance(0.1)) b[pick(['extra', 'Caller', '__proto__', 'constructor'])] = pick(JUNK);
  return b;
}

const POLICIES = [
  'defaults:\n  mode: auto\n  minCallsPerSec: 1000000\n',
  'defaults: { mode: never }\n',
  'rules:\n  - { caller: Foo, callee: Bar, isolation: stack, minCallsPerSec: 1000000 }\n',
  '{"defaults": {"isolation": "thread", "minCallsPerSec": 1000000}}',
  'trustGroups:\n  web: [Foo, Bar]\ndefaults: { minCallsPerSec: 1000000 }\n',
];
/** Nested brackets (test/policy-limits.test.ts goes far deeper; a 2,000-deep one is below). */
const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);

function policyText(): string {
  let s = pick(POLICIES);
  const n = Math.floor(rnd() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(rnd() * (s.length + 1));
    switch (Math.floor(rnd() * 5)) {
      case 0: s = s.slice(0, at) + pick(['{', '[', ':', '"', '- ', '&a ', '*a', '\t', 'mode: sideways', '\u0000']) + s.slice(at); break;
      case 1: s = s.slice(0, at) + s.slice(at + 1 + Math.floor(rnd() * 8)); break;
      case 2: s = s.slice(0, at); break;
      case 3: s = s.replace('auto', pick(['always', 'never', 'bogus', '7'])); break;
      default: s = s.replace('1000000', pick(['-1', 'x', '1e9', '0.5', '[]'])); break;
    }
  }
  if (chance(0.03)) s = deep(50 + Math.floor(rnd() * 450));
  return s;
}

function mutatePath(p: string): string {
  switch (Math.floor(rnd() * 10)) {
    case 0: return p + '/';
    case 1: return p.replace('/admin/v1/', '/admin/v1//');
    case 2: return p + '/' + pick(['x', '%', '%ZZ', '..', '%2F']);
    case 3: return p.toUpperCase();
    case 4: return p.slice(0, Math.max(9, Math.floor(rnd() * p.length)));
    case 5: return p + pick(['%', '%E0%A4%A', '%zz', '%00']);
    case 6: return p + '?' + pick(['since=abc', 'limit=0', 'limit=501', 'since=5&limit=3', 'a=%ZZ', 'limit=' + '9'.repeat(30)]);
    default: return p;
  }
}

function generate(i: number): Req {
  const ops = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([p, m]) => Object.keys(m).map((k) => ({ p, m: k.toUpperCase() })));
  const op = pick(ops);
  const fill = (s: string) => s.replace('{caller}', encodeURIComponent(pick(NAMES))).replace('{callee}', encodeURIComponent(pick(NAMES)));
  let path = fill(op.p);
  if (chance(0.35)) path = mutatePath(path);
  if (chance(0.03)) path = '/admin/v1/' + pick(['nope', 'status/x', 'merges/a/b/c', '', 'policy/validate/x']);
  const method = chance(0.8) ? op.m : pick(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']);
  const headers: Record<string, string> = {};
  const auth = rnd();
  if (auth < 0.75) headers.Authorization = `Bearer ${TOKEN}`;
  else if (auth < 0.85) headers.Authorization = `Bearer ${pick(['wrong', TOKEN + 'x', TOKEN.slice(1), 'x'.repeat(4000), ''])}`;
  else if (auth < 0.92) headers.Authorization = pick([TOKEN, `bearer ${TOKEN}`, `Basic ${TOKEN}`, `Bearer  ${TOKEN}`, 'Bearer']);
  let body: Buffer | undefined;
  if (['POST', 'PUT'].includes(method) || chance(0.05)) {
    const text = path.includes('/policy') ? policyText() : chance(0.1) ? JSON.stringify(mergeBody()).slice(0, -1 - Math.floor(rnd() * 3)) : JSON.stringify(mergeBody()) ?? '';
    body = Buffer.from(text);
    if (chance(0.03)) body = Buffer.alloc(LIMIT + 1 + Math.floor(rnd() * 100_000), 0x20); // over the limit
  }
  if (body && chance(0.2)) headers['Content-Type'] = pick(['application/json', 'text/plain', 'application/yaml', 'multipart/form-data', 'x/y; charset=ebcdic']);
  return { method, path, headers, body, slowMs: chance(0.04) ? 200 + Math.floor(rnd() * 600) : undefined, what: `#${i}` };
}

// ---- the oracle -----------------------------------------------------------------------------

interface Expect {
  statuses: number[];
  /** operation found in the document (for the response schema) */
  op?: any;
  stream?: boolean;
  /** outside the admin API: the gateway's own (Nightcore's) empty text/plain answer */
  plain?: boolean;
}

function predict(r: Req): Expect {
  const [pathOnly, rawQuery = ''] = r.path.split('?');
  if (pathOnly !== '/admin/v1' && !pathOnly.startsWith('/admin/v1/')) return { statuses: [404], plain: true };
  const rest = pathOnly.slice('/admin/v1/'.length);
  const segs: string[] = [];
  for (const s of rest.split('/')) {
    try {
      segs.push(decodeURIComponent(s));
    } catch {
      return { statuses: [400] };
    }
  }
  const matching = Object.entries(doc.paths as Record<string, Record<string, any>>).filter(([p]) => {
    const tpl = p.slice('/admin/v1/'.length).split('/');
    return tpl.length === segs.length && tpl.every((x, i) => (x.startsWith('{') ? segs[i] !== '' : x === segs[i]));
  });
  if (matching.length === 0) return { statuses: [404] };
  const [tpl, ops] = matching[0];
  const op = ops[r.method.toLowerCase()];
  if (!op) return { statuses: [405] };
  const isPublic = Array.isArray(op.security) && op.security.length === 0;
  if (!isPublic && r.headers.Authorization !== `Bearer ${TOKEN}`) return { statuses: [401], op };
  const params: Record<string, string> = {};
  tpl.slice('/admin/v1/'.length).split('/').forEach((x, i) => {
    if (x.startsWith('{')) params[x.slice(1, -1)] = segs[i];
  });
  for (const p of op.parameters ?? []) {
    let v: unknown = p.in === 'path' ? params[p.name] : new URLSearchParams(rawQuery).get(p.name);
    if (v === null) continue;
    if (p.in === 'query' && /^-?\d{1,15}$/.test(String(v))) v = Number(v);
    if (!schema(p.schema.$ref)(v)) return { statuses: [400], op };
  }
  if (op.operationId === 'stream') return { statuses: [200], op, stream: true };
  if (op.requestBody) {
    const body = r.body ?? Buffer.alloc(0);
    if (body.length > LIMIT) return { statuses: [413], op };
    const text = body.toString('utf8');
    if (op.operationId === 'merge') {
      let v: unknown;
      try {
        v = JSON.parse(text);
      } catch {
        return { statuses: [400], op };
      }
      if (!schema('#/components/schemas/MergeRequest')(v)) return { statuses: [400], op };
      const known = ['Foo', 'Bar', 'Blob', 'grpc:nightfuse.examples.Greeter'];
      const b = v as { caller: string; callee: string };
      if (!known.includes(b.caller) || !known.includes(b.callee)) return { statuses: [404], op };
      return { statuses: [200, 409], op };
    }
    try {
      parsePolicy(text, 'fuzz');
      return { statuses: [200], op };
    } catch {
      return { statuses: [400], op };
    }
  }
  if (op.operationId === 'unmerge') {
    const known = ['Foo', 'Bar', 'Blob', 'grpc:nightfuse.examples.Greeter'];
    return { statuses: known.includes(params.caller) && known.includes(params.callee) ? [200, 409] : [404], op };
  }
  return { statuses: [200], op };
}

// ---- the client -------------------------------------------------------------------------------

const agent = new http.Agent({ keepAlive: true, maxSockets: LANES });

function send(r: Req, timeoutMs = 20000): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string; firstEvent?: string }> {
  return new Promise((resolve, reject) => {
    const headers = { ...r.headers, ...(r.body ? { 'Content-Length': String(r.body.length) } : {}) };
    const req = http.request({ host: '127.0.0.1', port: stack.httpPort, method: r.method, path: r.path, headers, agent, timeout: timeoutMs }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
        if (String(res.headers['content-type']).startsWith('text/event-stream') && body.includes('\n\n')) {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, firstEvent: body.slice(0, body.indexOf('\n\n')) });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`hung for ${timeoutMs} ms`)));
    req.on('error', reject);
    if (!r.body) return void req.end();
    if (!r.slowMs) return void req.end(r.body);
    const pieces = 5;
    const size = Math.ceil(r.body.length / pieces);
    let k = 0;
    const next = () => {
      if (k >= pieces) return void req.end();
      req.write(r.body!.subarray(k * size, (k + 1) * size));
      k++;
      setTimeout(next, r.slowMs! / pieces);
    };
    next();
  });
}

function checkAnswer(r: Req, e: Expect, a: { status: number; headers: http.IncomingHttpHeaders; body: string; firstEvent?: string }): string | undefined {
  const where = `${r.what} ${r.method} ${r.path.slice(0, 80)} ${r.body ? r.body.toString().slice(0, 60) : ''}`;
  if (!e.statuses.includes(a.status)) return `${where}: expected ${e.statuses.join('|')}, got ${a.status} ${a.body.slice(0, 200)}`;
  if (e.stream) {
    if (!/^event: snapshot\ndata: \{/.test(a.firstEvent ?? '')) return `${where}: the stream did not start with a snapshot`;
    return undefined;
  }
  if (r.method === 'HEAD') return a.body === '' ? undefined : `${where}: HEAD with a body`;
  if (e.plain) return a.body === '' && String(a.headers['content-type']) === 'text/plain' ? undefined : `${where}: not the gateway's plain 404`;
  if (!String(a.headers['content-type']).startsWith('application/json')) return `${where}: not JSON (${a.headers['content-type']})`;
  let data: unknown;
  try {
    data = JSON.parse(a.body);
  } catch {
    return `${where}: unparsable JSON`;
  }
  const spec = e.op?.responses?.[String(a.status)];
  const ref = spec?.content?.['application/json']?.schema?.$ref ?? '#/components/schemas/Error';
  const v = schema(ref);
  if (!v(data)) return `${where}: ${a.status} body does not match ${ref}: ${ajv.errorsText(v.errors)}`;
  if (a.status === 405 && !a.headers.allow) return `${where}: 405 without Allow`;
  return undefined;
}

// ---- the run ------------------------------------------------------------------------------------

t.before(async () => {
  stack = await startStack({ gatewayFlags: [`--admin_token=${TOKEN}`] });
  const r = await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1/openapi.json`);
  doc = await r.json();
  ajv.addSchema(doc, 'openapi');
  await waitFor(async () => ((await (await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1/functions`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json()) as { workers: number }[])
    .some((f) => f.workers > 0), 15000, 'workers reported');
});
t.teardown(async () => {
  agent.destroy();
  await stack?.stop();
});

/** Sends headers for a body that never comes: the gateway must answer 408 and let go. */
function stalledBody(): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(stack.httpPort, '127.0.0.1', () => {
      s.write(`PUT /admin/v1/policy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 100\r\n\r\ndefaults:`);
    });
    let got = '';
    s.setTimeout(20000, () => reject(new Error('a stalled body was held past 20 s')));
    s.on('data', (d) => (got += d.toString()));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
}

t.test(`${COUNT} generated admin requests: 0 crashes, 0 hangs, 0 wrong answers, no leak`, async (t) => {
  const pid = stack.gateway.pid!;
  const reqs = Array.from({ length: COUNT }, (_, i) => generate(i));
  // The warm-up holds the heavy kinds too (bodies over the limit, deep nesting), so the heap has
  // grown to its working size before the "before" reading, and growth after it means a leak.
  const auth = { Authorization: `Bearer ${TOKEN}` };
  const heavy: Req[] = [
    ...Array.from({ length: 3 }, (_, i): Req => ({ method: 'POST', path: '/admin/v1/merges', headers: auth, body: Buffer.alloc(LIMIT + 1000 * i, 0x20), what: `warm-big-${i}` })),
    ...Array.from({ length: 3 }, (_, i): Req => ({ method: 'POST', path: '/admin/v1/policy/validate', headers: auth, body: Buffer.from(deep(500)), what: `warm-deep-${i}` })),
  ];
  const warm = [...heavy, ...reqs.slice(0, 100)];
  const wrong: string[] = [];
  const hung: string[] = [];
  const counts = new Map<number, number>();
  const runAll = async (list: Req[]) => {
    let next = 0;
    await Promise.all(Array.from({ length: LANES }, async () => {
      while (next < list.length) {
        const r = list[next++];
        const e = predict(r);
        try {
          const a = await send(r);
          counts.set(a.status, (counts.get(a.status) ?? 0) + 1);
          const bad = checkAnswer(r, e, a);
          if (bad) wrong.push(bad);
        } catch (err) {
          (/hung/.test((err as Error).message) ? hung : wrong).push(`${r.what} ${r.method} ${r.path.slice(0, 80)}: ${(err as Error).message}`);
        }
      }
    }));
  };
  await runAll(warm);
  agent.destroy();
  await new Promise((r) => setTimeout(r, 300));
  const before = procStats(pid);
  const stalled = Array.from({ length: 4 }, () => stalledBody());
  await runAll(reqs.slice(100));
  const stalledAnswers = await Promise.all(stalled);
  agent.destroy();
  await new Promise((r) => setTimeout(r, 500));
  const after = procStats(pid);
  t.comment(`statuses: ${[...counts.entries()].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}×${n}`).join(' ')}`);
  t.comment(`gateway RSS ${before.rssKiB} -> ${after.rssKiB} KiB, fds ${before.fds} -> ${after.fds}`);
  t.same(wrong.slice(0, 20), [], `0 wrong answers (${wrong.length})`);
  t.same(hung, [], '0 hangs');
  t.equal(stack.gateway.exitCode, null, 'the gateway did not crash');
  t.ok(stalledAnswers.every((a) => /^HTTP\/1.1 408 /.test(a)), 'stalled bodies get 408 and the connection is closed');
  t.ok(after.fds <= before.fds + 2, `no file descriptor kept (${before.fds} -> ${after.fds})`);
  t.ok(after.rssKiB - before.rssKiB < 32 * 1024, `RSS grew by ${((after.rssKiB - before.rssKiB) / 1024).toFixed(1)} MiB (< 32)`);
  for (const s of [200, 400, 401, 404, 405, 413]) t.ok((counts.get(s) ?? 0) > 0, `the run covered ${s}`);
  const ok = await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1/status`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  t.equal(ok.status, 200, 'still answering');
});

t.test('a policy nested 2,000 deep does not take the gateway down', async (t) => {
  const r = await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1/policy/validate`, { method: 'POST', body: deep(2000), headers: { Authorization: `Bearer ${TOKEN}` } })
    .then((x) => x.status, (err: Error) => err.message);
  t.equal(r, 400, 'refused as too deep');
  await new Promise((r) => setTimeout(r, 300));
  t.equal(stack.gateway.exitCode, null, 'the gateway is still running');
});
