// The policy file watched by a real gateway, written the way editors and `>` do it: truncated, then
// filled. A half-written file must never be applied (an empty or cut policy parses, and would be).
import t from 'tap';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGatewayProcess } from './adversary.js';
import { sleep } from './hostile-peers.js';
import { waitFor } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'nightfuse-policy-reload-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('a policy file truncated, then written a moment later, is applied once, whole', async (t) => {
  const file = join(dir, 'policy.yaml');
  const first = 'rules:\n  - { caller: Foo, callee: Bar, mode: never }\n';
  const fd0 = openSync(file, 'w');
  writeSync(fd0, first);
  closeSync(fd0);
  const gw = await startGatewayProcess([`--merge_policy_file=${file}`, '--admin_token=tok']);
  t.teardown(() => gw.stop());
  const policy = async () => (await (await fetch(`http://127.0.0.1:${gw.http}/admin/v1/policy`, { headers: { authorization: 'Bearer tok' } })).json()) as
    { text: string; reloads: { ok: number; refused: number } };
  const before = (await policy()).reloads;
  const second = 'defaults: { isolation: stack }\nrules:\n  - { caller: Foo, callee: Bar, mode: always }\n';
  // truncated and half written, then a pause past the watcher's 500 ms poll (and under its 1 s settle time), then the rest
  const fd = openSync(file, 'w'); // truncated: an empty file is a valid (empty) policy
  await sleep(700);
  const mid = await policy();
  t.equal(mid.text, first, 'while the file is truncated, the old policy stays');
  writeSync(fd, second);
  closeSync(fd);
  await waitFor(async () => (await policy()).text === second, 5000, 'the whole new policy applied');
  const after = (await policy()).reloads;
  t.equal(after.ok - before.ok, 1, 'applied once: the half-written file was never read as a policy');
  t.equal(after.refused, before.refused, 'and nothing was refused on the way');
});
