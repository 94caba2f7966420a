// The socialnet example: a chain of depth 4 and a fan-out merge step by step
// under load; the function in another trust group never does.
import t from 'tap';
import { join } from 'node:path';
import { loadLoop, post, ROOT, startStack, type Stack } from './helpers.js';

const TOKEN = 'chains';
let stack: Stack;
t.before(async () => {
  stack = await startStack({
    config: join(ROOT, 'examples', 'socialnet', 'func_config.json'),
    gatewayFlags: [`--merge_policy_file=${join(ROOT, 'examples', 'socialnet', 'merge-policy.yaml')}`, `--admin_token=${TOKEN}`],
    launcherFlags: ['--merge_tick_ms=250'],
  });
});
t.teardown(() => stack?.stop());

const get = async (path: string) =>
  (await fetch(`http://127.0.0.1:${stack.httpPort}/admin/v1${path}`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json() as Promise<any[]>;

t.test('ComposePost -> Text -> UrlShorten -> UniqueId: the whole chain ends up in ComposePost\'s process', async (t) => {
  const input = 'hello @alice see https://example.com/x and @bob';
  const expected = (await post(stack.httpPort, '/function/ComposePost', input)).body.toString();
  t.match(expected, /^\{"post_id":"[0-9a-f]{16}","text":"hello @alice see https:\/\/nf\.io\/[0-9a-f]{8} and @bob\|mentions=alice,bob","storage":"stored:\d+:[0-9a-f]{8}"\}$/);
  const loop = loadLoop(stack.httpPort, '/function/ComposePost', () => input, () => expected, 2);
  // UniqueId is merged by whichever caller gets hot first (ComposePost or UrlShorten); either way it ends up local.
  const want = [['ComposePost', 'Text'], ['Text', 'UrlShorten'], ['Text', 'UserMention'], ['*', 'UniqueId']];
  const has = (m: any, a: string, b: string) => (a === '*' || m.caller === a) && m.callee === b && m.state === 'merged';
  const deadline = Date.now() + 30000;
  let merges: any[] = [];
  while (Date.now() < deadline) {
    merges = await get('/merges');
    if (want.every(([a, b]) => merges.some((m) => has(m, a, b) && m.workersMerged === m.workersTotal))) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  for (const [a, b] of want) t.ok(merges.some((m) => has(m, a, b)), `${a} <- ${b} merged`);
  const text = merges.find((m) => m.caller === 'Text' && m.callee === 'UrlShorten');
  t.ok(text.workersTotal > 2, `Text->UrlShorten applies in Text's and ComposePost's workers (${text.workersTotal})`);
  t.notOk(merges.some((m) => m.callee === 'PostStorage'), 'PostStorage (trust group storage) never merged');
  // Steady state: no call to a social function crosses IPC any more.
  const social = ['Text', 'UrlShorten', 'UserMention', 'UniqueId'];
  const ipcCalls = async () => {
    const edges = await get('/edges');
    const ipc = edges.filter((x) => social.includes(x.callee)).reduce((n, x) => n + x.calls - x.localCalls, 0);
    const storage = edges.find((x) => x.caller === 'ComposePost' && x.callee === 'PostStorage')?.calls ?? 0;
    return { ipc, storage };
  };
  await new Promise((r) => setTimeout(r, 1500));
  const a = await ipcCalls();
  await new Promise((r) => setTimeout(r, 1500));
  const b = await ipcCalls();
  t.equal(b.ipc, a.ipc, 'calls to Text, UrlShorten, UserMention and UniqueId no longer cross IPC');
  t.ok(b.storage > a.storage, 'ComposePost -> PostStorage still flows over IPC');
  await loop.stop();
  t.same(loop.stats.bad, [], 'every response identical before, during and after the merges');
  t.ok(loop.stats.ok > 100, `${loop.stats.ok} calls`);
});
