// The admin API against its OpenAPI document, on a real gateway + launcher: every documented
// operation answers as documented, every route that answers is documented, and bad input gets
// the status and the field it deserves (400 naming the field, 413, 404, 405, 401, 403).
import t from 'tap';
import { Ajv } from 'ajv';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { loadFuncConfig } from '../common/func-config.js';
import { createLogger } from '../common/log.js';
import { POLICY_SCHEMA } from '../common/policy.js';
import { startGateway } from '../gateway/main.js';
import { FIXTURE_CONFIG, ROOT, startStack, waitFor, type Stack } from './helpers.js';

const TOKEN = 'admin-api-test-token';
const DOC_FILE = join(ROOT, 'docs', 'openapi.json');
let stack: Stack;
let doc: any;
const ajv = new Ajv({ allErrors: true, strict: false });
ajv.addFormat('date-time', true);

t.before(async () => {
  stack = await startStack({ gatewayFlags: [`--admin_token=${TOKEN}`] });
  // Both Foo and Bar have workers before we merge by hand.
  await waitFor(async () => (await api('GET', '/functions')).data.filter((f: any) => ['Foo', 'Bar'].includes(f.name) && f.workers > 0).length === 2, 15000, 'workers reported');
});
t.teardown(() => stack?.stop());

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  data: any;
}

/** A raw request (no fetch normalisation of paths or methods). */
function raw(method: string, path: string, opts: { body?: string | Buffer; headers?: Record<string, string>; token?: string | null } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...(opts.token === null ? {} : { Authorization: `Bearer ${opts.token ?? TOKEN}` }), ...opts.headers };
    const req = http.request({ host: '127.0.0.1', port: stack.httpPort, method, path, headers, agent: false, timeout: 20000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let data: any;
        try {
          data = JSON.parse(text);
        } catch {
          data = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, data });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}
const api = (method: string, path: string, body?: string, token?: string | null) => raw(method, `/admin/v1${path}`, { body, token });

/** The first event of the stream, then hang up. */
function firstStreamEvent(): Promise<{ status: number; type: string; event: string; data: any }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: stack.httpPort, path: '/admin/v1/stream', headers: { Authorization: `Bearer ${TOKEN}` }, agent: false }, (res) => {
      let buf = '';
      res.on('data', (c: Buffer) => {
        buf += c.toString();
        const end = buf.indexOf('\n\n');
        if (end < 0) return;
        const block = buf.slice(0, end);
        req.destroy();
        resolve({
          status: res.statusCode ?? 0, type: String(res.headers['content-type']),
          event: /^event: (.*)$/m.exec(block)?.[1] ?? '', data: JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null'),
        });
      });
    });
    req.on('error', reject);
  });
}

const validates = (schemaRef: string, value: unknown) => {
  const v = ajv.compile({ $ref: `openapi#${schemaRef.slice(1)}` });
  return v(value) ? [] : v.errors!.map((e) => `${e.instancePath} ${e.message}`);
};

t.test('the document is served without a token, is OpenAPI 3.1, and is the one in docs/', async (t) => {
  const r = await api('GET', '/openapi.json', undefined, null);
  t.equal(r.status, 200);
  doc = r.data;
  t.equal(doc.openapi, '3.1.0');
  t.same(doc.components.schemas.MergePolicy, JSON.parse(JSON.stringify(POLICY_SCHEMA)), 'the policy schema is the one the policy loader uses');
  ajv.addSchema(doc, 'openapi');
  if (process.env.NIGHTFUSE_UPDATE_OPENAPI === '1') writeFileSync(DOC_FILE, JSON.stringify(doc, null, 2) + '\n');
  t.same(JSON.parse(readFileSync(DOC_FILE, 'utf8')), doc, 'docs/openapi.json is current (refresh: NIGHTFUSE_UPDATE_OPENAPI=1 npx tap test/admin-api.test.ts)');
});

const fill = (template: string) => template.replace('{caller}', 'Foo').replace('{callee}', 'Bar');

t.test('every documented operation answers as documented', async (t) => {
  const ops = Object.entries(doc.paths as Record<string, Record<string, any>>).flatMap(([path, m]) => Object.entries(m).map(([method, op]) => ({ path, method: method.toUpperCase(), op })));
  t.ok(ops.length >= 12, `${ops.length} operations`);
  for (const { path, method, op } of ops) {
    if (op.operationId === 'stream') {
      const s = await firstStreamEvent();
      t.equal(s.status, 200, 'stream: 200');
      t.match(s.type, /^text\/event-stream/);
      t.equal(s.event, 'snapshot');
      t.same(validates('#/components/schemas/Snapshot', s.data), [], 'stream: the first event is a Snapshot');
      continue;
    }
    const content = op.requestBody?.content;
    const media = content ? Object.keys(content)[0] : undefined;
    const example = media ? content[media].example : undefined;
    const body = example === undefined ? undefined : typeof example === 'string' ? example : JSON.stringify(example);
    const r = await raw(method, fill(path), { body, headers: media ? { 'Content-Type': media } : {} });
    const spec = op.responses[String(r.status)];
    t.ok(spec, `${method} ${path}: ${r.status} is documented (${r.text.slice(0, 200)})`);
    if (!spec) continue;
    t.match(r.headers['content-type'], /^application\/json/, `${method} ${path}: JSON`);
    const ref = spec.content['application/json']?.schema?.$ref;
    t.same(validates(ref, r.data), [], `${method} ${path}: the ${r.status} body matches ${ref}`);
    if (op.operationId === 'merge') t.equal(r.status, 200, 'the example merge is in force');
    if (op.operationId === 'unmerge') t.equal(r.status, 200, 'the example unmerge undid it');
  }
});

t.test('every route that answers is documented', async (t) => {
  const documented = new Map<string, Set<string>>();
  for (const [p, m] of Object.entries(doc.paths as Record<string, object>)) documented.set(fill(p), new Set(Object.keys(m).map((x) => x.toUpperCase())));
  // Candidates: the documented paths, every path the CLI calls, the README's list, and near misses.
  const cli = readFileSync(join(ROOT, 'cli', 'admin.ts'), 'utf8');
  const fromCli = [...cli.matchAll(/api\.call\('[A-Z]+', [`'](\/[a-z/]+)/g)].map((m) => `/admin/v1${m[1]}`);
  const readmeAll = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const readme = readmeAll.slice(readmeAll.indexOf('### Admin API'), readmeAll.indexOf('\n### ', readmeAll.indexOf('### Admin API') + 5));
  const fromReadme = [...readme.matchAll(/`(?:GET|POST|PUT|DELETE) ([a-z./\\|]+)/g)].flatMap((m) => m[1].split(/\\?\|/)).map((p) => `/admin/v1/${p.replace(/^\//, '')}`);
  const near = ['/admin/v1', '/admin/v1/', '/admin/v1/status/', '/admin/v1/merges/Foo', '/admin/v1/merges/Foo/Bar/x', '/admin/v1/policy/validate/x',
    '/admin/v1/policy/', '/admin/v1//status', '/admin/v1/STATUS', '/admin/v2/status', '/admin/v1/openapi', '/admin/v1/stream/x', '/admin/v1/debug'];
  const candidates = new Set([...documented.keys(), ...fromCli, ...fromReadme, ...near]);
  t.ok(fromCli.length >= 4, `paths the CLI calls: ${fromCli.join(' ')}`);
  let probes = 0;
  for (const path of candidates) {
    for (const method of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']) {
      if (method === 'GET' && path.endsWith('/stream')) continue; // answered above; it does not end
      const r = await raw(method, path, { body: method === 'POST' || method === 'PUT' ? '{}' : undefined });
      probes++;
      const doced = documented.get(path);
      if (r.status === 404 || r.status === 405) {
        t.notOk(doced?.has(method), `${method} ${path} is documented but answered ${r.status}`);
        if (r.status === 405) t.same(new Set(String(r.headers.allow).split(', ')), doced, `405 on ${path} lists the documented methods`);
        continue;
      }
      t.ok(doced?.has(method), `${method} ${path} answered ${r.status}: documented`);
    }
  }
  t.ok(fromReadme.every((p) => documented.has(p) || p.includes('merges/')), `the README lists only documented paths: ${fromReadme.join(' ')}`);
  t.comment(`${probes} probes`);
});

t.test('bad input: the status and the field', async (t) => {
  const cases: [string, string, string | undefined, number, string?][] = [
    ['POST', '/merges', 'null', 400, 'body'],
    ['POST', '/merges', '[1,2]', 400, 'body'],
    ['POST', '/merges', '"Foo"', 400, 'body'],
    ['POST', '/merges', '42', 400, 'body'],
    ['POST', '/merges', '', 400, 'body'],
    ['POST', '/merges', '{"caller": "Foo", ', 400, 'body'],
    ['POST', '/merges', '{"caller": "Foo", "callee": "Bar", "isolation": {}}', 400, 'body.isolation'],
    ['POST', '/merges', '{"caller": "Foo", "callee": "Bar", "isolation": ["thread"]}', 400, 'body.isolation'],
    ['POST', '/merges', '{"caller": "Foo", "callee": "Bar", "isolation": 3}', 400, 'body.isolation'],
    ['POST', '/merges', '{"caller": "Foo", "callee": "Bar", "isolation": "sideways"}', 400, 'body.isolation'],
    ['POST', '/merges', '{"caller": 1, "callee": "Bar"}', 400, 'body.caller'],
    ['POST', '/merges', '{"caller": {"a": 1}, "callee": "Bar"}', 400, 'body.caller'],
    ['POST', '/merges', '{"caller": "Foo"}', 400, 'body.callee'],
    ['POST', '/merges', '{"caller": "Foo", "callee": "Bar", "extra": true}', 400, 'body.extra'],
    ['POST', '/merges', '{"caller": "", "callee": "Bar"}', 400, 'body.caller'],
    ['POST', '/merges', '{"caller": "Foo", "callee": "Nope"}', 404],
    ['DELETE', '/merges/Foo/Ba%ZZr', undefined, 400, 'path[2]'],
    ['DELETE', '/merges/%E0%A4%A/Bar', undefined, 400, 'path[1]'],
    ['GET', '/stat%us', undefined, 400, 'path[0]'],
    ['DELETE', `/merges/${'x'.repeat(300)}/Bar`, undefined, 400, 'path.caller'],
    ['DELETE', '/merges/Nope/Bar', undefined, 404],
    ['GET', '/events?limit=0', undefined, 400, 'query.limit'],
    ['GET', '/events?limit=abc', undefined, 400, 'query.limit'],
    ['GET', '/events?since=-1', undefined, 400, 'query.since'],
    ['GET', '/events?since=3&limit=5', undefined, 200],
    ['GET', '/nope', undefined, 404],
    ['PATCH', '/merges', undefined, 405],
    ['PUT', '/status', '{}', 405],
    ['PUT', '/policy', 'defaults: { mode: sideways }', 400],
    ['POST', '/policy/validate', '[[[[', 400],
  ];
  for (const [method, path, body, status, field] of cases) {
    const r = await api(method, path, body);
    t.equal(r.status, status, `${method} ${path} ${body ?? ''} -> ${status} (${r.text.slice(0, 160)})`);
    t.ok(r.data && typeof r.data === 'object', 'a JSON answer');
    if (field) t.ok(r.data.errors?.some((e: { field: string }) => e.field === field), `names ${field}: ${JSON.stringify(r.data.errors)}`);
    if (status >= 400 && !path.startsWith('/policy')) t.type(r.data.error, 'string', 'with an error message');
    if (status === 405) t.ok(r.headers.allow, 'with Allow');
  }
});

t.test('body limits: 413, declared or sent, and the connection stays usable', async (t) => {
  const big = Buffer.alloc((1 << 20) + 10, 0x61);
  const sent = await api('POST', '/merges', big as unknown as string);
  t.equal(sent.status, 413);
  t.match(sent.data.error, /over the limit of 1048576 bytes/);
  const chunked = await raw('PUT', '/admin/v1/policy', { body: big, headers: { 'Transfer-Encoding': 'chunked' } });
  t.equal(chunked.status, 413, 'chunked over the limit');
  // Declared far over the limit and never sent: answered at once.
  const declared = await new Promise<string>((resolve, reject) => {
    const s = net.connect(stack.httpPort, '127.0.0.1', () => s.write(`POST /admin/v1/merges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 10000000000\r\n\r\n`));
    let got = '';
    s.on('data', (d) => {
      got += d.toString();
      if (got.includes('\r\n\r\n')) {
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', reject);
  });
  t.match(declared, /^HTTP\/1.1 413 /);
  t.equal((await api('GET', '/status')).status, 200, 'the gateway still answers');
});

t.test('tokens: missing, wrong (any length), and the API disabled without one', async (t) => {
  for (const token of [null, '', 'x', TOKEN.slice(0, -1) + 'X', TOKEN + 'x', 'a'.repeat(5000)]) {
    const r = await api('GET', '/status', undefined, token);
    t.equal(r.status, 401, `token ${JSON.stringify(token)?.slice(0, 20)} refused`);
  }
  t.equal((await raw('GET', '/admin/v1/status', { token: null, headers: { Authorization: `Basic ${TOKEN}` } })).status, 401, 'another scheme');
  const log = createLogger('gateway');
  const gw = await startGateway({
    config: loadFuncConfig(FIXTURE_CONFIG), listenAddr: '127.0.0.1', httpPort: 0, grpcPort: 0, engineConnPort: 0, controlPort: -1,
    maxRunningRequests: 0, lbPerFnRoundRobin: false, lbPickLeastLoad: false, maxBodyBytes: 1 << 20, callTimeoutMs: 1000, log, adminToken: '',
  });
  try {
    const r = await fetch(`http://127.0.0.1:${gw.ports.http}/admin/v1/status`, { headers: { Authorization: 'Bearer anything' } });
    t.equal(r.status, 403, 'disabled without a configured token');
    t.match(((await r.json()) as { error: string }).error, /--admin_token/);
    t.equal((await fetch(`http://127.0.0.1:${gw.ports.http}/admin/v1/openapi.json`)).status, 200, 'the document is still served');
  } finally {
    await gw.stop();
  }
});
