import t from 'tap';
import { CallTable } from '../common/call-table.js';
import { packCallId } from '../proto/wire.js';

let seed = 99;
const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;

t.test('behaves as a Map under random sets and deletes, through growth and probe wrap-around', async (t) => {
  for (const [label, keyOf] of [
    ['random call ids', (i: number) => packCallId({ funcId: 2, methodId: 0, clientId: 0, callId: (i * 2654435761) >>> 0 })],
    ['sequential call ids', (i: number) => packCallId({ funcId: 1, methodId: 0, clientId: 7, callId: i })],
    ['nested ids (client and call vary)', (i: number) => packCallId({ funcId: 3, methodId: 0, clientId: i % 37, callId: i >> 3 })],
  ] as [string, (i: number) => bigint][]) {
    const table = new CallTable<number>(16);
    const map = new Map<bigint, number>();
    let bad = 0;
    for (let op = 0; op < 200000; op++) {
      const k = keyOf(rnd(op < 100000 ? 40 : 3000)); // a small key space first (long probe runs), then a wide one (growth)
      const r = rnd(10);
      if (r < 5) {
        table.set(k, op);
        map.set(k, op);
      } else if (r < 8) {
        if (table.delete(k) !== map.delete(k)) bad++;
      } else if (table.get(k) !== map.get(k) || table.has(k) !== map.has(k)) bad++;
      if (table.size !== map.size) bad++;
      if (op % 5000 === 0) {
        const a = table.values().sort((x, y) => x - y);
        const b = [...map.values()].sort((x, y) => x - y);
        if (a.join() !== b.join()) bad++;
        for (const key of map.keys()) if (table.get(key) !== map.get(key)) bad++;
      }
    }
    t.equal(bad, 0, `${label}: 200,000 operations agree with a Map (size at the end ${map.size})`);
  }
});

t.test('a deleted entry leaves no reference behind', async (t) => {
  const table = new CallTable<object>();
  for (let i = 0; i < 100; i++) table.set(BigInt(i) << 28n, { i });
  for (let i = 0; i < 100; i++) table.delete(BigInt(i) << 28n);
  t.equal(table.size, 0);
  t.same(table.values(), []);
  const slots = (table as unknown as { vals: unknown[]; keys: unknown[] });
  t.ok(slots.vals.every((v) => v === undefined) && slots.keys.every((k) => k === undefined), 'every slot empty');
});
