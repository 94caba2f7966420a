// The console at /ui/ in a real headless browser (Debian's chromium driven by playwright-core)
// against a real gateway + launcher: sign-in through the URL fragment, a wrong token refused,
// Foo -> Bar drawn, merged and unmerged with the page's buttons under load, the policy editor.
// Screenshots are kept in test-artifacts/console/ (paths printed).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { loadLoop, request, ROOT, startStack, type Stack } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'test-artifacts', 'console');
const TOKEN = 'console-test-token-0123456789';

// Installs chromium when it is missing (apt; we run as root in CI): that can take a minute.
t.setTimeout(300_000);
execFileSync('bash', [join(ROOT, 'scripts', 'ensure-chromium.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
mkdirSync(ARTIFACTS, { recursive: true });

const dir = mkdtempSync(join(tmpdir(), 'nightfuse-console-'));
// Merges here come from the page's buttons only: automatic merging never finds an edge hot enough.
const policyFile = join(dir, 'policy.yaml');
writeFileSync(policyFile, 'defaults:\n  mode: auto\n  minCallsPerSec: 1000000\n');

let stack: Stack;
let ctx: BrowserContext;
let page: Page;
let base = '';
const problems: string[] = [];
const urls: string[] = [];

t.before(async () => {
  stack = await startStack({ gatewayFlags: [`--admin_token=${TOKEN}`, `--merge_policy_file=${policyFile}`], launcherFlags: ['--merge_tick_ms=200'] });
  base = `http://127.0.0.1:${stack.httpPort}`;
  ctx = await chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1400, height: 1100 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  // Test instrumentation (not part of the page): collect CSP violations.
  await ctx.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
  });
  page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('console', (m) => {
    // Chromium logs every 4xx fetch. Expected here: the stream refusing a wrong token, and an invalid policy
    // answered 400 by the validator. Anything else is a problem.
    const text = `${m.text()} at ${m.location().url}`;
    const expected = [/status of 401 .*\/admin\/v1\/stream$/, /status of 400 .*\/admin\/v1\/policy\/validate$/];
    if (m.type() === 'error' && !expected.some((re) => re.test(text))) problems.push(`console: ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => urls.push(r.url()));
});
t.teardown(async () => {
  await ctx?.close();
  await stack?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function shot(name: string): Promise<string> {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  t.comment(`screenshot: ${path}`);
  return path;
}

/** The graph's cytoscape instance (cytoscape keeps it on its container). */
const graphEdge = (id: string) => page.evaluate((id) => {
  const cy = (document.getElementById('graph') as unknown as { _cyreg?: { cy?: any } })._cyreg?.cy;
  const e = cy?.getElementById(id);
  return e && e.nonempty() ? { classes: e.classes() as string[], label: e.data('label') as string, width: e.data('width') as number } : null;
}, id);

t.test('static files: types, CSP, caching', async (t) => {
  const index = await request(stack.httpPort, 'GET', '/ui/');
  t.equal(index.status, 200);
  t.match(index.headers['content-type'], /^text\/html/);
  t.match(index.headers['content-security-policy'], /script-src 'self'/);
  t.notMatch(index.headers['content-security-policy'], /unsafe/);
  t.equal(index.headers['cache-control'], 'no-cache');
  const js = /src="(assets\/app-[A-Z0-9]+\.js)"/.exec(index.body.toString())?.[1];
  const css = /href="(assets\/app-[A-Z0-9]+\.css)"/.exec(index.body.toString())?.[1];
  t.ok(js && css, 'index.html names hashed bundles');
  const a = await request(stack.httpPort, 'GET', `/ui/${js}`);
  t.equal(a.status, 200);
  t.match(a.headers['content-type'], /^text\/javascript/);
  t.match(a.headers['cache-control'], /immutable/);
  t.match((await request(stack.httpPort, 'GET', `/ui/${css}`)).headers['content-type'], /^text\/css/);
  const again = await new Promise<number>((resolve, reject) => {
    fetch(`${base}/ui/`, { headers: { 'If-None-Match': String(index.headers.etag) } }).then((r) => resolve(r.status), reject);
  });
  t.equal(again, 304, 'revalidation answers 304');
  t.equal((await request(stack.httpPort, 'GET', '/ui/assets/../../package.json')).status, 404);
  t.equal((await request(stack.httpPort, 'POST', '/ui/')).status, 405);
  t.equal((await request(stack.httpPort, 'GET', '/ui')).status, 301);
});

t.test('a wrong token is refused visibly', async (t) => {
  await page.goto(`${base}/ui/#token=not-the-token`);
  await page.locator('#banner').filter({ hasText: /refused/ }).waitFor({ timeout: 15000 });
  t.ok(await page.locator('#login').isVisible(), 'the sign-in form is shown');
  t.equal(await page.evaluate(() => location.hash), '', 'the fragment is cleared');
  t.equal(await page.evaluate(() => sessionStorage.getItem('nightfuse.adminToken')), null, 'the refused token is forgotten');
  await shot('wrong-token');
});

let load: ReturnType<typeof loadLoop>;

t.test('signs in from the fragment and shows Foo -> Bar over IPC', async (t) => {
  load = loadLoop(stack.httpPort, '/function/Foo', (i) => `ui-${i}`, (i) => `From function Bar: ui-${i}, World\n`, 2);
  await page.goto(`${base}/ui/#token=${TOKEN}`);
  await page.locator('#conn[data-state=live]').waitFor({ timeout: 15000 });
  t.equal(await page.evaluate(() => location.hash), '', 'the fragment is cleared');
  t.equal(await page.evaluate(() => sessionStorage.getItem('nightfuse.adminToken')), TOKEN, 'the token is kept for the tab');
  await page.locator('#edges tr[data-edge="Foo->Bar"][data-path=ipc]').waitFor({ timeout: 20000 });
  await page.waitForFunction(() => Number(document.querySelector('#edges tr[data-edge="Foo->Bar"] td:nth-child(3)')?.textContent) > 0, undefined, { timeout: 15000 });
  const e = await graphEdge('Foo->Bar');
  t.ok(e, 'the graph draws the edge');
  t.notOk(e?.classes.includes('merged'), 'over IPC');
  t.match(e?.label, /^IPC/);
  t.ok(await page.locator('#nodes .health[data-health=ok]').count() === 1, 'the node is healthy');
  await shot('ipc');
});

t.test('the merge button merges Foo -> Bar under load', async (t) => {
  const row = page.locator('#edges tr[data-edge="Foo->Bar"]');
  await row.locator('select[data-role=isolation]').selectOption('stack');
  await row.locator('button[data-action=merge]').click();
  await page.locator('#action-status[data-state=ok]').waitFor({ timeout: 30000 });
  await page.locator('#edges tr[data-edge="Foo->Bar"][data-path=merged]').waitFor({ timeout: 15000 });
  await page.locator('#merges tr[data-merge="Foo->Bar"][data-state=merged]').waitFor({ timeout: 15000 });
  await page.locator('#events li[data-kind=merged]').filter({ hasText: 'manual merge' }).waitFor({ timeout: 15000 });
  // Wait until most calls in the rate window are merged ones, so the picture shows the merged path carrying the load.
  await page.waitForFunction(() => {
    const cell = (n: number) => Number(document.querySelector(`#edges tr[data-edge="Foo->Bar"] td:nth-child(${n})`)?.textContent);
    return cell(5) > 0 && cell(5) > cell(4);
  }, undefined, { timeout: 15000 });
  const e = await graphEdge('Foo->Bar');
  t.ok(e?.classes.includes('merged'), 'the graph edge is drawn merged');
  t.match(e?.label, /merged · stack/);
  // Latency on hover: point at the middle of the edge as drawn.
  const mid = await page.evaluate(() => {
    const cy = (document.getElementById('graph') as unknown as { _cyreg: { cy: any } })._cyreg.cy;
    const p = cy.getElementById('Foo->Bar').renderedMidpoint() as { x: number; y: number };
    const r = document.getElementById('graph')!.getBoundingClientRect();
    return { x: r.left + p.x, y: r.top + p.y };
  });
  await page.mouse.move(mid.x, mid.y);
  const tip = page.locator('#tooltip').filter({ hasText: 'IPC round trip' });
  await tip.waitFor({ timeout: 5000 });
  t.match(await tip.textContent(), /path: merged \(stack\)[\s\S]*callee time: \d/, 'the tooltip shows path and latency');
  const path = await shot('merged');
  t.comment(`console with a merged edge: ${path}`);
  const m = (await (await fetch(`${base}/admin/v1/merges`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json()) as { caller: string; isolation: string; state: string }[];
  t.match(m, [{ caller: 'Foo', callee: 'Bar', isolation: 'stack', state: 'merged' }], 'the gateway agrees');
});

t.test('the unmerge button unmerges it', async (t) => {
  await page.locator('#merges tr[data-merge="Foo->Bar"] button[data-action=unmerge]').click();
  await page.locator('#edges tr[data-edge="Foo->Bar"][data-path=ipc]').waitFor({ timeout: 30000 });
  await page.locator('#merges tr[data-merge="Foo->Bar"]').waitFor({ state: 'detached', timeout: 15000 });
  await page.locator('#events li[data-kind=unmerged]').filter({ hasText: 'manual unmerge' }).waitFor({ timeout: 15000 });
  t.notOk((await graphEdge('Foo->Bar'))?.classes.includes('merged'), 'the graph edge is back to IPC');
  await load.stop();
  t.ok(load.stats.ok > 50, `calls went on during merge and unmerge (${load.stats.ok})`);
  t.same(load.stats.bad, [], 'every answer right');
});

t.test('the policy editor validates as you type and applies', async (t) => {
  const text = page.locator('#policy-text');
  t.match(await text.inputValue(), /minCallsPerSec: 1000000/, 'shows the policy in force');
  await text.fill('defaults:\n  mode: sometimes\n');
  await page.locator('#policy-check[data-state=error]').filter({ hasText: 'defaults.mode' }).waitFor({ timeout: 10000 });
  await text.fill('defaults:\n  mode: auto\n  minCallsPerSec: 2000000\n');
  await page.locator('#policy-check[data-state=ok]').waitFor({ timeout: 10000 });
  await page.locator('#policy-apply').click();
  await page.locator('#policy-check').filter({ hasText: 'applied' }).waitFor({ timeout: 10000 });
  await page.locator('#policy-meta').filter({ hasText: 'admin API' }).waitFor({ timeout: 10000 });
  const p = (await (await fetch(`${base}/admin/v1/policy`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json()) as { text: string; source: string };
  t.equal(p.source, 'admin API');
  t.match(p.text, /2000000/);
  await shot('policy');
});

t.test('no errors, no CSP violations, the token never in a URL', async (t) => {
  t.same(problems, [], 'no console errors or page errors');
  const leaked = urls.filter((u) => u.includes(TOKEN) && !/#token=/.test(u));
  t.same(leaked, [], 'no request URL carries the token');
  t.ok(urls.some((u) => u.endsWith('/admin/v1/stream')), 'the page used the stream');
  t.notOk(urls.some((u) => /\/admin\/v1\/(status|edges|merges)$/.test(u) && !u.endsWith('/merges')), 'no polling of the REST views');
});
