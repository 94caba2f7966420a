// In a plain node process of its own (tap's loader makes this one's memory too noisy to judge 10 MiB in).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './helpers.js';

// Three bursts of 64 KiB Buffers with a small one that stays after every third, as a loaded
// process leaves them; nothing collects them but the trimmer's own GC. RssAnon is printed before
// each burst and once the trimmer had 3.5 quiet seconds.
const SCRIPT = `
import { readFileSync } from 'node:fs';
import { trimWhenIdle, idleTrims } from ${JSON.stringify(join(ROOT, 'dist', 'common', 'idle-trim.js'))};
const anon = () => Number(/RssAnon:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let calls = 0;
trimWhenIdle(() => calls);
await sleep(3500);
const pins = [];
const out = [];
for (let round = 0; round < 3; round++) {
  const base = anon();
  let burst = [];
  for (let i = 0; i < 1500; i++) {
    burst.push(Buffer.alloc(65536, i));
    if (i % 3 === 0) pins.push(Buffer.alloc(2000, 1));
  }
  calls++;
  const held = anon();
  burst = null;
  const trims = idleTrims();
  await sleep(3500);
  out.push({ base, held, after: anon(), trimmed: idleTrims() > trims });
}
console.log(JSON.stringify({ out, pins: pins.length }));
process.exit(0);
`;

t.test('the Buffers its own GC collects are given back too (V8 frees their backing stores after gc() returns)', async (t) => {
  const r = spawnSync(process.execPath, ['--max-semi-space-size=2', '--initial-heap-size=64', '--input-type=module', '-e', SCRIPT], { encoding: 'utf8', timeout: 60000 });
  t.equal(r.status, 0, 'the child ran', { stderr: r.stderr });
  const { out } = JSON.parse(r.stdout) as { out: { base: number; held: number; after: number; trimmed: boolean }[] };
  out.forEach((x, i) => {
    t.ok(x.trimmed, `round ${i + 1}: trimmed`);
    // what may stay: the 1 MiB of small Buffers kept, and the allocator's slack
    t.ok(x.after - x.base < 12, `round ${i + 1}: RssAnon back near where it was (${x.base.toFixed(1)} -> ${x.held.toFixed(1)} -> ${x.after.toFixed(1)} MiB)`);
  });
});
