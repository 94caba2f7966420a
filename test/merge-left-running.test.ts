// An injected call that outlives its timeout is left to finish inside the worker; the launcher must not
// trust that worker again: it is retired and replaced, and calls keep being answered.
// Real injector, real worker host: the "runtime" injected is the probe library, whose entry sleeps.
import t from 'tap';
import { join } from 'node:path';
import { pino } from 'pino';
import { NATIVE_BUILD } from '../common/paths.js';
import { inject } from '../launcher/injector.js';
import { startLocalStack } from '../launcher/local-stack.js';
import { MergeControl } from '../launcher/merge-control.js';
import { FIXTURE_CONFIG, post, waitFor } from './helpers.js';

t.test('a call left running retires the worker; a replacement serves', async (t) => {
  const stack = await startLocalStack(FIXTURE_CONFIG);
  t.teardown(() => stack.stop());
  await stack.merge.stop(); // this test's MergeControl takes merge.sock
  const merge = new MergeControl({
    agent: stack.agent, log: pino({ level: 'silent' }),
    // every injection: an entry that sleeps 600 ms under a 50 ms timeout, so it is left to finish
    injector: (pid) => inject(pid, join(NATIVE_BUILD, 'libprobe.so'), { entry: 'probe_sleep', arg: '600', timeoutMs: 50 }),
  });
  await merge.start();
  t.teardown(() => merge.stop());
  const bar = stack.agent.readyWorkersOf('Bar')[0];
  t.ok(bar, `a Bar worker (pid ${bar?.pid})`);
  await t.rejects(merge.attach(bar, 2000), /failed/, 'the attach fails, saying why');
  t.equal(merge.injections.at(-1)?.leftRunning, true, 'the injection reports its call left running');
  t.match(bar.retiring, /left running/, `the worker is retired: ${bar.retiring}`);
  await waitFor(() => stack.agent.readyWorkersOf('Bar').some((w) => w !== bar), 10000, 'a replacement Bar worker');
  await waitFor(() => bar.state === 'dead', 15000, 'the retired worker stopped');
  const r = await post(stack.httpPort, '/function/Bar', 'after');
  t.equal(r.body.toString(), 'after, World\n', 'Bar is served by its replacement');
});
