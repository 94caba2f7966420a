// The CLI against a real stack (gateway + launcher processes): tables, --watch, events --follow,
// merge/unmerge, policy show, load (summary, merge event on its timeline, wrong answers), token errors, log keys.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, post, startStack, waitFor, type Stack } from './helpers.js';
import { isolatedState, oneErrorLine, runCli, startCli } from './cli-helpers.js';

const TOKEN = 'cli-stack-test-token-0123';
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-cli-stack-'));
const state = isolatedState();
t.teardown(() => {
  rmSync(dir, { recursive: true, force: true });
  state.cleanup();
});
// Manual merges only: no edge gets hot enough for auto, and none cools a merge down.
const policy = join(dir, 'policy.yaml');
writeFileSync(policy, 'defaults: { mode: auto, isolation: stack, minCallsPerSec: 1000000000, unmergeBelowCallsPerSec: 0 }\n');

let stack: Stack;
let env: NodeJS.ProcessEnv;
t.before(async () => {
  stack = await startStack({
    gatewayFlags: [`--merge_policy_file=${policy}`], launcherFlags: ['--merge_tick_ms=200'],
    env: { NIGHTFUSE_ADMIN_TOKEN: TOKEN, NIGHTFUSE_LOG_LEVEL: 'debug' },
  });
  env = { ...state.env, NIGHTFUSE_GATEWAY: `http://127.0.0.1:${stack.httpPort}`, NIGHTFUSE_ADMIN_TOKEN: TOKEN };
  for (let i = 0; i < 20; i++) await post(stack.httpPort, '/function/Foo', `warm-${i}`);
});
t.teardown(() => stack?.stop());

t.test('edges and status: the Foo -> Bar edge, as a table and as JSON', async (t) => {
  await waitFor(async () => /Foo\s+Bar\s+\S+\s+(\d+)/.test((await runCli(['edges'], env)).stdout), 10000, 'edge reported');
  const [table, json, status] = await Promise.all([runCli(['edges'], env), runCli(['edges', '--json'], env), runCli(['status'], env)]);
  t.equal(table.code, 0);
  t.match(table.stdout, /^node\s+caller\s+callee\s+callsPerSec\s+calls\s+localCalls\s+failures\s+avgRpcUs\s+avgCalleeUs\n/);
  const edge = JSON.parse(json.stdout).find((e: any) => e.caller === 'Foo' && e.callee === 'Bar');
  t.ok(edge.calls >= 20, `${edge.calls} calls`);
  t.equal(edge.localCalls, 0, 'not merged yet');
  t.match(status.stdout, /^Functions\n.*\nFoo\s+1\s+default\s+2\s+/s);
  t.match(status.stdout, new RegExp(`Policy: ${policy.replace(/[.]/g, '\\.')}`));
});

t.test('load: summary, the merge event on its timeline, latency before and after', async (t) => {
  const load = runCli(['load', 'Foo', '-d', '4', '-c', '2', '--body', 'ld', '--json'], env);
  await new Promise((r) => setTimeout(r, 1500));
  const merged = await runCli(['merge', 'Foo', 'Bar'], env);
  t.equal(merged.code, 0, merged.stderr);
  t.match(merged.stdout, /^merged Bar into Foo \(stack\) on 1 node\(s\)\n$/);
  const r = await load;
  t.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  t.match(s, { function: 'Foo', connections: 2, expected: 'first answer', errors: 0, wrongAnswers: 0, timeouts: 0 });
  t.ok(s.requests > 50 && s.reqPerSec > 10, `${s.requests} requests, ${s.reqPerSec}/s`);
  t.ok(s.p50Ms > 0 && s.p99Ms >= s.p50Ms, `p50 ${s.p50Ms} ms, p99 ${s.p99Ms} ms`);
  t.match(s.events, [{ kind: 'merged', caller: 'Foo', callee: 'Bar', isolation: 'stack' }], 'the merge event is on the timeline');
  t.same(s.phases.map((p: any) => p.label), ['before any merge event', 'after Foo -> Bar merged']);
  t.equal(s.phases[0].requests + s.phases[1].requests, s.requests, 'the phases split the run');
  t.ok(s.phases[1].requests > 0, 'calls after the merge');
  t.match(r.stderr, /── [\d.]+ s: merged Foo -> Bar \(stack\): /, 'the live view showed the event');
});

t.test('merges: table, --watch redrawn in place on a terminal, frames otherwise', async (t) => {
  const m = await runCli(['merges'], env);
  t.match(m.stdout, /Foo\s+Bar\s+stack\s+merged\s+2\s+2\s+\d+/);
  const plain = startCli(['merges', '--watch', '--interval', '0.3'], env);
  await waitFor(() => (plain.out.stdout.match(/^Every 0\.3 s: nightfuse merges/gm) ?? []).length >= 2, 10000, 'two frames');
  const p = await plain.stop('SIGINT');
  t.equal(p.code, 0, 'Ctrl-C ends the watch with 0');
  t.notMatch(p.stdout, /\x1b\[/, 'no escape codes without a terminal');
  t.match(p.stdout, /Foo\s+Bar\s+stack\s+merged/);
  // On a terminal (script(1) gives it one): frames after the first move the cursor up and clear.
  const pty = spawn('script', ['-qfec', `${process.execPath} ${CLI} merges --watch --interval 0.3`, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let screen = '';
  pty.stdout.on('data', (d: Buffer) => (screen += d.toString()));
  await waitFor(() => (screen.match(/Every 0\.3 s/g) ?? []).length >= 3, 15000, 'three frames on the terminal');
  pty.kill('SIGTERM');
  const ups = screen.match(/\x1b\[\d+F\x1b\[J/g) ?? [];
  t.ok(ups.length >= 2, `redrawn in place (${ups.length} cursor-up + clear)`);
});

t.test('events: the log, and --follow sees an unmerge as it happens', async (t) => {
  const ev = await runCli(['events'], env);
  t.equal(ev.code, 0);
  t.match(ev.stdout, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  node \d+  merged\s+Foo -> Bar\s+stack\s+/m);
  const json = (await runCli(['events', '--json'], env)).stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.ok(json.every((e) => typeof e.seq === 'number' && typeof e.detail === 'object' && e.at), 'JSON lines with seq and parsed detail');
  const follow = startCli(['events', '--follow', '--interval', '0.2'], env);
  await waitFor(() => /merged\s+Foo -> Bar/.test(follow.out.stdout), 10000, 'past events printed');
  const before = follow.out.stdout.split('\n').length;
  const un = await runCli(['unmerge', 'Foo', 'Bar'], env);
  t.equal(un.code, 0, un.stderr);
  await waitFor(() => /unmerged\s+Foo -> Bar\s+stack\s+/.test(follow.out.stdout), 10000, 'unmerge followed');
  const f = await follow.stop('SIGINT');
  t.equal(f.code, 0);
  t.ok(f.stdout.split('\n').length > before, 'new lines appended');
  t.equal((f.stdout.match(/  merged\s+Foo -> Bar/g) ?? []).length, 1, 'no event printed twice');
  const again = await runCli(['unmerge', 'Foo', 'Bar'], env);
  t.equal(again.code, 1, 'unmerging what is not merged is refused');
  t.match(again.stderr, /^nightfuse unmerge: unmerge Bar from Foo refused \(HTTP 409\): node \d+: .*not merged/);
  t.ok(oneErrorLine(again.stderr));
});

t.test('load counts wrong answers and errors', async (t) => {
  const wrong = await runCli(['load', 'Foo', '-d', '1', '-c', '1', '--expect', 'not the answer', '--json', '--no-events'], env);
  t.equal(wrong.code, 1, 'wrong answers fail the run');
  const s = JSON.parse(wrong.stdout);
  t.ok(s.requests > 0);
  t.equal(s.wrongAnswers, s.requests, 'every answer counted wrong');
  t.equal(s.errors, 0);
  const right = await runCli(['load', 'Foo', '-d', '1', '-c', '1', '--body', 'Hi', '--expect', 'From function Bar: Hi, World'], env);
  t.equal(right.code, 0, right.stderr);
  t.match(right.stdout, /^\nSummary: Foo, 1 connection\(s\), [\d.]+ s\n\s+requests\s+req\/s\s+p50\s+p99\s+errors\s+wrong\n {2}whole run\s+\d+\s+\d+\s+[\d.]+ ms\s+[\d.]+ ms\s+0\s+0\n$/);
  const missing = await runCli(['load', 'Nope', '-d', '1'], env);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /has no function Nope that takes POST \(HTTP 404\)/);
  t.ok(oneErrorLine(missing.stderr));
});

t.test('policy show', async (t) => {
  const [text, eff] = await Promise.all([runCli(['policy', 'show'], env), runCli(['policy', 'show', '--effective'], env)]);
  t.match(text.stdout, new RegExp(`^# source: ${policy.replace(/[.]/g, '\\.')}, in force since \\d{4}-.*\\ndefaults: \\{ mode: auto`));
  t.match(eff.stdout, /# effective settings\ndefaults:\n {2}mode: auto\n {2}isolation: stack\n/);
});

t.test('a wrong token: exit 3, one line', async (t) => {
  const r = await runCli(['merges', '--admin_token', 'wrong-token'], env);
  t.equal(r.code, 3);
  t.match(r.stderr, /^nightfuse merges: the gateway at http:\/\/127\.0\.0\.1:\d+ refused the admin token \(HTTP 401\): missing or wrong admin token/);
  t.ok(oneErrorLine(r.stderr));
});

t.test('launcher logs: one pid per line, the worker\'s is workerPid', async (t) => {
  const lines = stack.launcherStderr().split('\n').filter((l) => l.startsWith('{'));
  t.ok(lines.length > 5, `${lines.length} log lines`);
  t.same(lines.filter((l) => (l.match(/"pid":/g) ?? []).length > 1), [], 'no line with two pid keys');
  t.ok(lines.some((l) => /"workerPid":\d+/.test(l) && /"msg":"worker (spawned|ready)"/.test(l)), 'worker ids as workerPid');
});
