// The CLI against a real stack (gateway + launcher processes): edges and status, load (summary, the
// merge event on its timeline, wrong answers), merge, token errors. Watch/follow views: cli-watch.test.ts.
import t from 'tap';
import { waitFor } from './helpers.js';
import { useCliStack, oneErrorLine, runCli, startCli } from './cli-helpers.js';

const ctx = useCliStack(t);

t.test('edges and status: the Foo -> Bar edge, as a table and as JSON', async (t) => {
  await waitFor(async () => /Foo\s+Bar\s+\S+\s+(\d+)/.test((await runCli(['edges'], ctx.env)).stdout), 10000, 'edge reported');
  const [table, json, status] = await Promise.all([runCli(['edges'], ctx.env), runCli(['edges', '--json'], ctx.env), runCli(['status'], ctx.env)]);
  t.equal(table.code, 0);
  t.match(table.stdout, /^node\s+caller\s+callee\s+path\s+callsPerSec\s+calls\s+localCalls\s+failures\s+avgRpcUs\s+avgCalleeUs\n/);
  const edge = JSON.parse(json.stdout).find((e: any) => e.caller === 'Foo' && e.callee === 'Bar');
  t.ok(edge.calls >= 20, `${edge.calls} calls`);
  t.equal(edge.localCalls, 0, 'not merged yet');
  t.match(status.stdout, /^Functions\n.*\nFoo\s+1\s+default\s+2\s+/s);
  t.match(status.stdout, new RegExp(`Policy: ${ctx.policy.replace(/[.]/g, '\\.')}`));
});

t.test('load: summary, the merge event on its timeline, latency before and after', async (t) => {
  const load = startCli(['load', 'Foo', '-d', '6', '-c', '2', '--body', 'ld', '--json'], ctx.env);
  await waitFor(() => /^ +1 s /m.test(load.out.stderr), 30000, 'load running');
  const merged = await runCli(['merge', 'Foo', 'Bar'], ctx.env);
  t.equal(merged.code, 0, merged.stderr);
  t.match(merged.stdout, /^merged Bar into Foo \(stack\) on 1 node\(s\)\n$/);
  const r = await load.done();
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

t.test('load counts wrong answers and errors', async (t) => {
  const wrong = await runCli(['load', 'Foo', '-d', '1', '-c', '1', '--expect', 'not the answer', '--json', '--no-events'], ctx.env);
  t.equal(wrong.code, 1, 'wrong answers fail the run');
  const s = JSON.parse(wrong.stdout);
  t.ok(s.requests > 0);
  t.equal(s.wrongAnswers, s.requests, 'every answer counted wrong');
  t.equal(s.errors, 0);
  const right = await runCli(['load', 'Foo', '-d', '1', '-c', '1', '--body', 'Hi', '--expect', 'From function Bar: Hi, World'], ctx.env);
  t.equal(right.code, 0, right.stderr);
  t.match(right.stdout, /^\nSummary: Foo, 1 connection\(s\), [\d.]+ s\n\s+requests\s+req\/s\s+p50\s+p99\s+errors\s+wrong\n {2}whole run\s+\d+\s+\d+\s+[\d.]+ ms\s+[\d.]+ ms\s+0\s+0\n$/);
  const missing = await runCli(['load', 'Nope', '-d', '1'], ctx.env);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /has no function Nope that takes POST \(HTTP 404\)/);
  t.ok(oneErrorLine(missing.stderr));
});

t.test('a wrong token: exit 3, one line', async (t) => {
  const r = await runCli(['merges', '--admin_token', 'wrong-token'], ctx.env);
  t.equal(r.code, 3);
  t.match(r.stderr, /^nightfuse merges: the gateway at http:\/\/127\.0\.0\.1:\d+ refused the admin token \(HTTP 401\): missing or wrong admin token/);
  t.ok(oneErrorLine(r.stderr));
});

