// The node agent's nested-call bookkeeping, driven with real pools, dispatcher and edge
// statistics (no worker processes: the calls stay queued, so nothing is answered behind
// the test's back): refused calls are counted as calls and failures, and a refused duplicate
// id leaves the call in flight under that id in place.
import t from 'tap';
import { pino } from 'pino';
import type { FuncEntry } from '../common/func-config.js';
import { Dispatcher } from '../launcher/dispatch.js';
import { EdgeStats } from '../launcher/edge-stats.js';
import { IpcRoot } from '../launcher/ipc-files.js';
import { NestedCalls } from '../launcher/nested-calls.js';
import type { SpawnedProcess } from '../launcher/spawn.js';
import type { WorkerSupervisor } from '../launcher/worker-supervisor.js';
import { FunctionPool, Worker } from '../launcher/workers.js';
import { encodeIpc, MessageType, packCallId } from '../proto/wire.js';

const entry = (funcName: string, funcId: number, library?: string): FuncEntry =>
  ({ funcName, funcId, allowHttpGet: false, qsAsInput: false, grpcMethods: [], isGrpc: false, library });

t.test('refused nested calls: counted, failed, and the call in flight stays', async (t) => {
  const pools = new Map([
    [1, new FunctionPool(entry('Caller', 1, '/lib/caller.so'))],
    [2, new FunctionPool(entry('Callee', 2, '/lib/callee.so'))],
    [3, new FunctionPool(entry('NoLibrary', 3))],
  ]);
  const log = pino({ level: 'silent' });
  const ipc = new IpcRoot(`/dev/shm/nightfuse-nested-test-${process.pid}`);
  const sent: MessageType[] = [];
  const dispatch = new Dispatcher(pools, ipc, log, { sendToGateway: (_c, type) => sent.push(type) });
  const edges = new EdgeStats();
  const nested = new NestedCalls(pools, ipc, log, edges, dispatch);
  let capacityAsked = 0;
  dispatch.connect({ ensureCapacity: () => capacityAsked++ } as unknown as WorkerSupervisor, nested);
  const caller = new Worker(7, 0, pools.get(1)!, { pid: 12345 } as unknown as SpawnedProcess);
  caller.state = 'busy';
  const invoke = (funcId: number, callId: number) =>
    encodeIpc({ type: MessageType.INVOKE_FUNC, fullCallId: packCallId({ funcId, methodId: 0, clientId: 7, callId }), inline: Buffer.from('hi') });

  const callee = pools.get(2)!;
  nested.onInvoke(caller, invoke(2, 1));
  t.equal(callee.counters.calls, 1, 'the call is counted on the callee');
  t.equal(callee.queued, 1, 'and queued there (no worker yet)');
  t.equal(capacityAsked, 1, 'the pool was asked to grow');
  const id1 = packCallId({ funcId: 2, methodId: 0, clientId: 7, callId: 1 });
  const first = caller.nested.get(id1);
  t.ok(first, 'the caller has it in flight');

  nested.onInvoke(caller, invoke(2, 1)); // the same id again
  t.equal(callee.counters.calls, 2, 'a duplicate id is a call');
  t.equal(callee.counters.failures, 1, 'and a failure');
  t.equal(caller.nested.get(id1), first, 'the call in flight under that id is still there');
  t.equal(callee.queued, 1, 'the duplicate was not queued');

  const none = pools.get(3)!;
  nested.onInvoke(caller, invoke(3, 2));
  t.same([none.counters.calls, none.counters.failures], [1, 1], 'a function without library or command: one call, one failure');
  nested.onInvoke(caller, invoke(9, 3));
  t.equal(caller.nested.size, 1, 'refused calls are never in flight');
  t.same(sent, [], 'nothing went to the gateway');
});
