// The CLI's live views against a real stack: merges --watch (on and off a terminal), events and
// events --follow, unmerge refusals, policy show, and the launcher's log keys.
import t from 'tap';
import { spawn } from 'node:child_process';
import { CLI, waitFor } from './helpers.js';
import { useCliStack, oneErrorLine, runCli, startCli } from './cli-helpers.js';

const ctx = useCliStack(t, async (c) => {
  const merged = await runCli(['merge', 'Foo', 'Bar'], c.env);
  if (merged.code !== 0) throw new Error(`merge Foo Bar: ${merged.stderr}`);
});

t.test('merges: table, --watch redrawn in place on a terminal, frames otherwise', async (t) => {
  const m = await runCli(['merges'], ctx.env);
  t.match(m.stdout, /Foo\s+Bar\s+stack\s+merged\s+2\s+2\s+\d+/);
  const plain = startCli(['merges', '--watch', '--interval', '0.3'], ctx.env);
  await waitFor(() => (plain.out.stdout.match(/^Every 0\.3 s: nightfuse merges/gm) ?? []).length >= 2, 10000, 'two frames');
  const p = await plain.stop('SIGINT');
  t.equal(p.code, 0, 'Ctrl-C ends the watch with 0');
  t.notMatch(p.stdout, /\x1b\[/, 'no escape codes without a terminal');
  t.match(p.stdout, /Foo\s+Bar\s+stack\s+merged/);
  // On a terminal (script(1) gives it one): frames after the first move the cursor up and clear.
  const pty = spawn('script', ['-qfec', `${process.execPath} ${CLI} merges --watch --interval 0.3`, '/dev/null'], { env: ctx.env, stdio: ['pipe', 'pipe', 'pipe'] });
  let screen = '';
  pty.stdout.on('data', (d: Buffer) => (screen += d.toString()));
  await waitFor(() => (screen.match(/Every 0\.3 s/g) ?? []).length >= 3, 15000, 'three frames on the terminal');
  pty.kill('SIGTERM');
  const ups = screen.match(/\x1b\[\d+F\x1b\[J/g) ?? [];
  t.ok(ups.length >= 2, `redrawn in place (${ups.length} cursor-up + clear)`);
});

t.test('events: the log, and --follow sees an unmerge as it happens', async (t) => {
  const ev = await runCli(['events'], ctx.env);
  t.equal(ev.code, 0);
  t.match(ev.stdout, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  node \d+  merged\s+Foo -> Bar\s+stack\s+/m);
  const json = (await runCli(['events', '--json'], ctx.env)).stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.ok(json.every((e) => typeof e.seq === 'number' && typeof e.detail === 'object' && e.at), 'JSON lines with seq and parsed detail');
  const follow = startCli(['events', '--follow', '--interval', '0.2'], ctx.env);
  await waitFor(() => /merged\s+Foo -> Bar/.test(follow.out.stdout), 10000, 'past events printed');
  const before = follow.out.stdout.split('\n').length;
  const un = await runCli(['unmerge', 'Foo', 'Bar'], ctx.env);
  t.equal(un.code, 0, un.stderr);
  await waitFor(() => /unmerged\s+Foo -> Bar\s+stack\s+/.test(follow.out.stdout), 10000, 'unmerge followed');
  const f = await follow.stop('SIGINT');
  t.equal(f.code, 0);
  t.ok(f.stdout.split('\n').length > before, 'new lines appended');
  t.equal((f.stdout.match(/  merged\s+Foo -> Bar/g) ?? []).length, 1, 'no event printed twice');
  const again = await runCli(['unmerge', 'Foo', 'Bar'], ctx.env);
  t.equal(again.code, 1, 'unmerging what is not merged is refused');
  t.match(again.stderr, /^nightfuse unmerge: unmerge Bar from Foo refused \(HTTP 409\): node \d+: .*not merged/);
  t.ok(oneErrorLine(again.stderr));
});

t.test('policy show', async (t) => {
  const [text, eff] = await Promise.all([runCli(['policy', 'show'], ctx.env), runCli(['policy', 'show', '--effective'], ctx.env)]);
  t.match(text.stdout, new RegExp(`^# source: ${ctx.policy.replace(/[.]/g, '\\.')}, in force since \\d{4}-.*\\ndefaults: \\{ mode: auto`));
  t.match(eff.stdout, /# effective settings\ndefaults:\n {2}mode: auto\n {2}isolation: stack\n/);
});

t.test('launcher logs: one pid per line, the worker\'s is workerPid', async (t) => {
  const lines = ctx.stack.launcherStderr().split('\n').filter((l) => l.startsWith('{'));
  t.ok(lines.length > 5, `${lines.length} log lines`);
  t.same(lines.filter((l) => (l.match(/"pid":/g) ?? []).length > 1), [], 'no line with two pid keys');
  t.ok(lines.some((l) => /"workerPid":\d+/.test(l) && /"msg":"worker (spawned|ready)"/.test(l)), 'worker ids as workerPid');
});
