// `nightfuse inject` from the command line, against a real target process.
import t from 'tap';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { NATIVE_BUILD } from '../common/paths.js';
import { cli } from './helpers.js';
import { startTarget } from './targets.js';

const PROBE = join(NATIVE_BUILD, 'libprobe.so');

t.test('inject a library into a running process and call its entry', async (t) => {
  const target = await startTarget('target_read');
  t.teardown(() => target.stop());
  const out = `/tmp/nf-inject-cli-${process.pid}`;
  t.teardown(() => rmSync(out, { force: true }));

  const r = await cli(['inject', String(target.pid), PROBE, '--entry', 'probe_entry', '--arg', out, '--json']);
  t.equal(r.code, 0, r.stderr);
  const rep = JSON.parse(r.stdout);
  t.match(rep, { ok: true, pid: target.pid, library: PROBE, entry: 'probe_entry', entryResult: 0, safePoint: true });
  t.ok(rep.stoppedUs > 0 && rep.totalUs >= rep.stoppedUs, 'report has the stopped and total time');
  t.equal(readFileSync(out, 'utf8'), `pid=${target.pid}`, 'the entry ran inside the target with its argument');
  t.ok(readFileSync(`/proc/${target.pid}/maps`, 'utf8').includes(PROBE), 'the library is mapped in the target');
  t.equal(await target.echo('after'), 'echo after', 'the target runs on, neither stopped nor traced');
  t.match(readFileSync(`/proc/${target.pid}/status`, 'utf8'), /\nTracerPid:\s+0\n/, 'no tracer left attached');

  const human = await cli(['inject', String(target.pid), PROBE]);
  t.equal(human.code, 0, human.stderr);
  t.match(human.stdout, new RegExp(`^injected ${PROBE} into ${target.pid}: stopped \\d+\\.\\d{3} ms, total \\d+\\.\\d{3} ms, \\d+ thread\\(s\\)`), 'human-readable report');
});

t.test('failures exit 1 with the reason; usage errors exit 2', async (t) => {
  const target = await startTarget('target_read');
  t.teardown(() => target.stop());
  const missing = await cli(['inject', String(target.pid), '/nonexistent/libnope.so']);
  t.equal(missing.code, 1, 'a library the target cannot load');
  t.match(missing.stderr, /^nightfuse inject: .*No such file/m, "dlopen's error from the target");
  const noEntry = await cli(['inject', String(target.pid), PROBE, '--entry', 'no_such_symbol']);
  t.equal(noEntry.code, 1);
  t.match(noEntry.stderr, /entry symbol no_such_symbol not found/);
  t.equal(await target.echo('still'), 'echo still', 'the target survived both');
  const [gone, notPid] = await Promise.all([cli(['inject', '999999999', PROBE]), cli(['inject', 'abc', PROBE])]);
  t.equal(gone.code, 1, 'no such process');
  t.equal(notPid.code, 2, 'not a pid: a usage error');
});
