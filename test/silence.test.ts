// A stall of our own event loop is not the peer's silence; real silence is.
import t from 'tap';
import { SilenceWatch } from '../common/silence.js';

const busy = (ms: number) => {
  const end = Date.now() + ms;
  while (Date.now() < end) { /* the loop is stalled */ }
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a stalled check credits the stall to the peer', async (t) => {
  const w = new SilenceWatch(50);
  busy(400); // our loop stalled: no check ran for 8 periods
  t.ok(w.check() < 100, 'the stall does not count as silence');
});

t.test('silence with our loop running counts', async (t) => {
  const w = new SilenceWatch(50);
  for (let i = 0; i < 8; i++) {
    await sleep(50);
    w.check();
  }
  t.ok(w.check() >= 350, 'checked on time, the peer said nothing: silent');
  w.heard();
  t.ok(w.check() < 50, 'heard again');
});
