import t from 'tap';
import { fullGc, IDLE_TRIM_INTERVAL_MS, idleTrims, TRIM_GROWTH_MIB, trimWhenIdle } from '../common/idle-trim.js';
import { rssParts } from '../scripts/bench-proc.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rssAnonMiB = () => rssParts(process.pid).anon;

t.test('a burst that is over gives its heap back; a process under load is left alone', async (t) => {
  let calls = 0;
  const stop = trimWhenIdle(() => calls);
  t.teardown(stop);
  await sleep(IDLE_TRIM_INTERVAL_MS * 2.5); // the trim after the start

  // Busy: the counter moves every 100 ms, so no second passes without a call.
  const before = idleTrims();
  const busy = setInterval(() => calls++, 100);
  await sleep(IDLE_TRIM_INTERVAL_MS * 2.5);
  clearInterval(busy);
  t.equal(idleTrims(), before, 'no trim while calls keep coming');

  // A burst: 64 MiB of 32 KiB backing stores (glibc's heap, below the mmap threshold), each
  // followed by a small one that stays, so the heap cannot shrink from its top by itself.
  const pins: Buffer[] = [];
  let burst: Buffer[] = [];
  for (let i = 0; i < 2048; i++) {
    burst.push(Buffer.alloc(32 << 10, 1));
    pins.push(Buffer.alloc(5000, 2));
  }
  calls++;
  burst = [];
  fullGc();
  await sleep(50);
  const held = rssAnonMiB();
  await sleep(IDLE_TRIM_INTERVAL_MS * 2.5);
  const after = rssAnonMiB();
  t.ok(idleTrims() > before, 'trimmed once the calls stopped');
  t.ok(held - after > 40, `the freed 64 MiB left the process (RssAnon ${held.toFixed(1)} -> ${after.toFixed(1)} MiB)`);
  t.equal(pins.length, 2048);
  t.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined', 'the GC it runs first is not exposed to the process');

  // A pause after calls that left little behind: no GC and no trim (they would stall the loop for nothing).
  const trimmed = idleTrims();
  calls++;
  await sleep(IDLE_TRIM_INTERVAL_MS * 2.5);
  t.equal(idleTrims(), trimmed, `no trim after a pause when private memory grew by less than ${TRIM_GROWTH_MIB} MiB`);
});
