// FunctionPool's queue of calls waiting for a worker: order, skipped finished calls, and that a
// call it handed out is no longer reachable from it (a finished call kept by the queue outlived
// the young generation and was promoted: ~300 KB per scavenge under load).
import t from 'tap';
import { fullGc } from '../common/idle-trim.js';
import { FunctionPool, type Call } from '../launcher/workers.js';

const pool = () => new FunctionPool({ funcName: 'F', funcId: 1, allowHttpGet: false, qsAsInput: false, grpcMethods: [], isGrpc: false });
const call = (n: number): Call => ({ id: BigInt(n), funcId: 1, frame: undefined, source: { kind: 'gateway', conn: undefined }, inputSize: 0, ownsInputShm: false, receivedUs: 0 });
const tick = () => new Promise((r) => setTimeout(r, 0));

t.test('first in, first out; finished calls are skipped', async (t) => {
  const p = pool();
  const cs = [1, 2, 3, 4].map(call);
  for (const c of cs) p.enqueue(c);
  t.equal(p.queued, 4);
  cs[1].done = true;
  t.equal(p.dequeue(), cs[0]);
  t.equal(p.dequeue(), cs[2], 'the finished one is passed over');
  t.equal(p.queued, 1);
  p.enqueue(call(5));
  t.equal(p.dequeue(), cs[3]);
  t.equal(p.dequeue()?.id, 5n);
  t.equal(p.dequeue(), undefined);
  t.equal(p.queued, 0);
  // a long queue is compacted as it is taken, and keeps its order
  for (let i = 0; i < 5000; i++) p.enqueue(call(i));
  let ok = true;
  for (let i = 0; i < 5000; i++) ok &&= p.dequeue()?.id === BigInt(i);
  t.ok(ok, '5,000 queued and taken in order');
  t.equal(p.queued, 0);
});

t.test('a call taken from the queue is not kept by it', async (t) => {
  const p = pool();
  const refs: WeakRef<Call>[] = [];
  for (let i = 0; i < 100; i++) {
    const c = call(i);
    refs.push(new WeakRef(c));
    p.enqueue(c);
  }
  for (let i = 0; i < 60; i++) p.dequeue(); // 40 still queued, so the queue is not emptied and reset
  await tick(); // WeakRef targets live until the end of the job that made them
  fullGc();
  await tick();
  const alive = refs.map((r) => r.deref() !== undefined);
  t.equal(alive.slice(0, 60).filter(Boolean).length, 0, 'the 60 taken calls are collected');
  t.equal(alive.slice(60).filter(Boolean).length, 40, 'the 40 queued ones are kept');
  t.equal(p.queued, 40);
});
