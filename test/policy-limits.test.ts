// Hostile merge policies: refused on their text, before they become objects,
// in the parser itself and through a real gateway (file at start, SIGHUP and
// file reload, the admin API), with the limit named and the gateway unhurt.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Composer } from 'yaml';
import { parsePolicy, loadPolicy, PolicyError } from '../common/policy.js';
import { POLICY_LIMITS } from '../common/policy-limits.js';
import { startGatewayProcess, usage } from './adversary.js';
import { CLI, FIXTURE_CONFIG, waitFor } from './helpers.js';
import { rng, sleep, type Rng } from './hostile-peers.js';

const L = POLICY_LIMITS;
const dir = mkdtempSync(join(tmpdir(), 'nightfuse-policy-limits-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function refusal(text: string): string {
  try {
    parsePolicy(text, 'test');
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    return err.errors.join('; ');
  }
  return 'accepted';
}

const billionLaughs = ['a: &a [x, x, x, x, x, x, x, x, x, x]', ...Array.from({ length: 8 }, (_, i) => {
  const p = String.fromCharCode(97 + i);
  return `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(10).fill(`*${p}`).join(', ')}]`;
})].join('\n');
const compactRules = (n: number) => `rules: [${Array.from({ length: n }, (_, i) => `{caller: F${i}, callee: B}`).join(', ')}]`;

/** The hostile documents of the issue, each with the limit it must be refused by. */
const HOSTILE: [string, string, RegExp][] = [
  ['100 KB of brackets', '['.repeat(100_000), /over the limit of 32768 bytes \(limit: size\)/],
  ['30 KB of brackets', '['.repeat(30_000), /nested deeper than 16 levels at line 1, column 16 \(limit: depth\)/],
  ['closed brackets, 17 deep', `rules: ${'['.repeat(16)}${']'.repeat(16)}`, /\(limit: depth\)/],
  ['mixed flow', '{a: ['.repeat(5000), /\(limit: depth\)/],
  ['deep block nesting', Array.from({ length: 100 }, (_, i) => `${' '.repeat(i)}k${i}:`).join('\n'), /nested deeper than 16 levels at line 17, column 17 \(limit: depth\)/],
  ['deep block sequences', Array.from({ length: 30 }, (_, i) => `${' '.repeat(2 * i)}-`).join('\n'), /\(limit: depth\)/],
  ['compact nested sequences', '- '.repeat(5000), /\(limit: depth\)/],
  ['complex keys', '? '.repeat(5000), /\(limit: depth\)/],
  ['block sequences in flow', `rules:\n${Array.from({ length: 20 }, (_, i) => `${'  '.repeat(i + 1)}- [`).join('\n')}`, /\(limit: depth\)/],
  ['billion laughs', billionLaughs, /alias expansion over the limit of 100 \(limit: aliases\)/],
  ['alias bomb in rules', `x: &r {caller: A, callee: B}\nrules: [${Array(300).fill('*r').join(', ')}]`, /\(limit: (aliases|rules)\)/],
  ['10k rules', compactRules(10_000), /\(limit: size\)/],
  ['257 rules', compactRules(257), /rules: 257 rules, over the limit of 256 \(limit: rules\)/],
  ['1 MB of text', `rules: []\n#${'x'.repeat(1_000_000)}`, /policy text of 1000011 bytes is over the limit of 32768 bytes \(limit: size\)/],
  ['multi-byte text over the limit', `# ${'€'.repeat(11_000)}`, /\(limit: size\)/],
  ['comment lines', '#\n'.repeat(9000), /more than 8000 entries \(limit: entries\)/],
  ['quote storm', '"'.repeat(30_000), /\(limit: entries\)/],
  ['a flow list of 16k items', `trustGroups: {g: [${Array.from({ length: 8000 }, () => 'f').join(',')}]}`, /\(limit: (entries|size)\)/],
];

t.test('hostile documents are refused by the limit they break', async (t) => {
  for (const [what, text, want] of HOSTILE) t.match(refusal(text), want, what);
});

t.test('what looks deep but is not: brackets in quotes, comments and block scalars', async (t) => {
  const deep = '['.repeat(40);
  t.equal(refusal(`rules:\n  - { caller: "${deep}", callee: '${deep}' }`), 'accepted', 'brackets inside quoted strings');
  t.equal(refusal(`rules: [] # ${deep}\n# ${deep}`), 'accepted', 'brackets in comments');
  t.match(refusal(`notes: |\n  ${deep}\n  ${deep}\nrules: []`), /unknown field "notes"/, 'brackets in a block scalar: only the schema objects');
  t.equal(refusal(`rules:\n  - caller: "a\\"[[[[[[[[[[[[[[[[[[[[[[[[b"\n    callee: 'it''s [[[[[[[[[[[[[[[[[[[[[['`), 'accepted', 'escaped quotes do not end the string');
  t.equal(refusal(compactRules(256)), 'accepted', '256 rules');
  t.equal(refusal(`rules: [{caller: &c Foo, callee: *c}]`), 'accepted', 'an alias or two is fine');
  const real = refusal(`defaults:\n  mode: auto\ntrustGroups:\n  web: [Foo, Bar]\nrules:\n  - caller: Foo\n    callee: "Ba*"\n    mode: always\n`);
  t.equal(real, 'accepted', 'a normal policy');
});

t.test('parse errors stop at the first one; keys are unique scalars', async (t) => {
  t.match(refusal(']'.repeat(30_000)), /^not valid JSON or YAML: Unexpected flow-seq-end token.* at line 1, column 1$/, 'an error storm: its first error only');
  t.match(refusal('a: 1\nb: 2\na: 3'), /duplicate key "a" at line 3, column 1/, 'duplicate keys');
  t.match(refusal('? [x, y]\n: 1'), /keys must be plain strings at line 1/, 'collection keys');
  t.match(refusal('rules: [\n'), /not valid JSON or YAML: .* at line/, 'syntax errors carry a position');
  t.equal(typeof (new Composer() as unknown as { onError: unknown }).onError, 'function', 'the yaml Composer still has the onError sink the parser hooks');
});

t.test('globs match in linear time (a regex of many .* would backtrack for ever)', async (t) => {
  const p = parsePolicy(`rules: [{caller: "${'*a'.repeat(40)}*b", callee: "*", mode: never}]`);
  t.equal(p.forPair('a'.repeat(60), 'X').source, 'defaults', 'no match, at once');
  t.equal(p.forPair(`${'a'.repeat(60)}b`, 'X').settings.mode, 'never', 'and a match');
});

t.test('files: read only up to the limit', async (t) => {
  const big = join(dir, 'big.yaml');
  writeFileSync(big, `rules: []\n#${'x'.repeat(10 << 20)}`);
  t.throws(() => loadPolicy(big), { message: /policy text of 10485771 bytes is over the limit of 32768 bytes \(limit: size\)/ }, 'a 10 MB file, by its size');
  t.throws(() => loadPolicy('/dev/zero'), { message: /policy text is over the limit of 32768 bytes \(limit: size\)/ }, 'an endless device: refused after the limit');
});

// ---- generated ----

const NAMES = ['Foo', 'Bar', 'Baz', 'Qux', 'F1', 'F22', 'Blob'];
const GLOBS = ['*', 'Ba*', 'F?', 'F*2', '?oo', 'B*b', 'Qux'];

function globRef(p: string, s: string): boolean {
  // reference matcher, by dynamic programming (the gateway's may differ in how, not in what)
  const m = p.length;
  const dp: boolean[][] = Array.from({ length: m + 1 }, () => Array(s.length + 1).fill(false));
  dp[0][0] = true;
  for (let i = 1; i <= m; i++) {
    dp[i][0] = dp[i - 1][0] && p[i - 1] === '*';
    for (let j = 1; j <= s.length; j++) {
      dp[i][j] = p[i - 1] === '*' ? dp[i - 1][j] || dp[i][j - 1] : (p[i - 1] === '?' || p[i - 1] === s[j - 1]) && dp[i - 1][j - 1];
    }
  }
  return dp[m][s.length];
}

/** A valid policy, in block or flow style, and what forPair must answer for each pair. */
function validPolicy(r: Rng): { text: string; check: (caller: string, callee: string) => string } {
  const rules = Array.from({ length: r.int(0, 12) }, () => ({ caller: r.pick([...NAMES, ...GLOBS]), callee: r.pick([...NAMES, ...GLOBS]), mode: r.pick(['auto', 'always', 'never']), isolation: r.pick(['inline', 'stack', 'thread']) }));
  const flow = r.chance(0.5);
  const lines = ['defaults:', '  mode: auto', '  isolation: thread'];
  if (flow || rules.length === 0) lines.push(`rules: [${rules.map((x) => `{caller: "${x.caller}", callee: "${x.callee}", mode: ${x.mode}, isolation: ${x.isolation}}`).join(', ')}]`);
  else lines.push('rules:', ...rules.flatMap((x) => [`  - caller: "${x.caller}" # ${'['.repeat(r.int(0, 30))}`, `    callee: '${x.callee}'`, `    mode: ${x.mode}`, `    isolation: ${x.isolation}`]));
  return {
    text: lines.join('\n') + '\n',
    check: (caller, callee) => {
      const i = rules.findIndex((x) => globRef(x.caller, caller) && globRef(x.callee, callee));
      return i < 0 ? 'defaults auto thread' : `rules[${i}] ${rules[i].mode} ${rules[i].isolation}`;
    },
  };
}

const UNITS = ['[', ']', '{', '}', ',', ' ', '\n', '- ', ': ', '? ', 'a', '"', "'", '#', '&a ', '*a ', '!t ', '|\n', '>\n', '  ', 'rules:\n', 'caller: x\n', '\\', '---\n', '\t', '`', '<<: *a\n', '€', '\u0000'];

function hostilePolicy(r: Rng): string {
  switch (r.int(0, 5)) {
    case 0: return HOSTILE[r.int(0, HOSTILE.length - 1)][1];
    case 1: return r.bytes(r.int(0, 2000)).toString('latin1');
    case 2: return `${'['.repeat(r.int(0, 40))}${'a: '.repeat(r.int(0, 5))}${'{'.repeat(r.int(0, 40))}`;
    case 3: return Array.from({ length: r.int(1, 60) }, (_, i) => `${' '.repeat(r.int(0, i * 2))}${r.pick(['- ', 'k: ', '? ', '- [', '{a: '])}`).join('\n');
    default: {
      const mix = Array.from({ length: r.int(1, 4) }, () => r.pick(UNITS));
      let s = '';
      const len = r.chance(0.1) ? r.int(20_000, 40_000) : r.int(1, 3000);
      while (s.length < len) s += r.pick(mix);
      return s;
    }
  }
}

t.test('generated: 1500 policies, valid ones answer right, hostile ones are refused cleanly', async (t) => {
  let valid = 0;
  let refused = 0;
  const wrong: string[] = [];
  for (let seed = 1; seed <= 1500; seed++) {
    const r = rng(seed);
    if (seed % 3 === 0) {
      const v = validPolicy(r);
      try {
        const p = parsePolicy(v.text, 'gen');
        for (const caller of NAMES) {
          for (const callee of NAMES) {
            const got = p.forPair(caller, callee);
            const desc = got.source === 'defaults' ? `defaults ${got.settings.mode} ${got.settings.isolation}` : `${got.source.split(' ')[0]} ${got.settings.mode} ${got.settings.isolation}`;
            if (desc !== v.check(caller, callee)) wrong.push(`seed ${seed} ${caller}->${callee}: ${desc}, want ${v.check(caller, callee)}`);
          }
        }
        valid++;
      } catch (err) {
        wrong.push(`seed ${seed}: valid policy refused: ${(err as Error).message.slice(0, 300)} in ${JSON.stringify(v.text.slice(0, 300))}`);
      }
    } else {
      const text = hostilePolicy(r);
      try {
        parsePolicy(text, 'gen');
      } catch (err) {
        if (!(err instanceof PolicyError)) wrong.push(`seed ${seed}: ${(err as Error).name}: ${(err as Error).message.slice(0, 120)}`);
        else if (err.errors.length === 0 || err.errors.some((e) => e.length > 2000)) wrong.push(`seed ${seed}: unclear refusal`);
        refused++;
      }
    }
  }
  t.same(wrong.slice(0, 20), [], 'valid policies match the reference; every refusal is a PolicyError');
  t.ok(valid + refused >= 1400, `${valid} valid, ${refused} refused`);
});

// ---- through a real gateway ----

function runToExit(args: string[], timeoutMs = 30000): Promise<{ code: number | null; signal: string | null; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, stdout });
    });
  });
}

const gatewayArgs = (policy: string, extra: string[] = []) => ['gateway', '--listen_addr=127.0.0.1', '--http_port=0', '--grpc_port=0', '--engine_conn_port=0',
  '--control_port=-1', `--func_config_file=${FIXTURE_CONFIG}`, `--merge_policy_file=${policy}`, ...extra];

t.test('a hostile policy file at start: refused with the limit named, exit non-zero, no crash', async (t) => {
  const cases = HOSTILE.filter(([what]) => ['100 KB of brackets', '30 KB of brackets', 'billion laughs'].includes(what));
  await Promise.all(cases.map(async ([what, text, want]) => {
    const file = join(dir, `start-${what.replace(/\W+/g, '-')}.yaml`);
    writeFileSync(file, text);
    const r = await runToExit(gatewayArgs(file));
    t.equal(r.signal, null, `${what}: no signal (no abort, no OOM kill)`);
    t.equal(r.code, 1, `${what}: exit code 1 (the start was refused; see the README's exit codes)`);
    t.match(r.stderr, want, `${what}: the limit named`);
    t.notMatch(r.stdout, /gateway ready/, `${what}: never ready`);
  }));
});

t.test('SIGHUP, file change and the admin API: hostile policies refused, the old one stays, the gateway is unhurt', async (t) => {
  const file = join(dir, 'live.yaml');
  const good = 'rules:\n  - { caller: Foo, callee: Bar, mode: never }\n';
  writeFileSync(file, good);
  const gw = await startGatewayProcess([`--merge_policy_file=${file}`, '--admin_token=tok']);
  t.teardown(() => gw.stop());
  const port = gw.http;
  const pid = gw.pid;
  const admin = async (method: string, path: string, body?: string) => {
    const res = await fetch(`http://127.0.0.1:${port}/admin/v1${path}`, { method, body, headers: { authorization: 'Bearer tok' } });
    return { status: res.status, data: await res.json() as { text?: string; lastError?: string; errors?: string[]; reloads?: { ok: number; refused: number } } };
  };
  for (const [what, text, want] of HOSTILE.filter(([w]) => ['30 KB of brackets', 'billion laughs', '1 MB of text', '257 rules'].includes(w))) {
    const before = (await admin('GET', '/policy')).data.reloads!.refused;
    writeFileSync(file, text);
    gw.child.kill('SIGHUP');
    await waitFor(async () => (await admin('GET', '/policy')).data.reloads!.refused > before, 5000, `${what}: reload refused`);
    const p = (await admin('GET', '/policy')).data;
    t.match(p.lastError, want, `${what} (SIGHUP or file change): refused, the limit named`);
    t.equal(p.text, good, `${what}: the old policy stays`);
  }
  writeFileSync(file, good);
  await sleep(2000); // let the file watcher settle on the good text (500 ms poll + 1 s settle)
  const base = usage(pid);
  let n = 0;
  const wrong: string[] = [];
  for (let seed = 1; seed <= 400; seed++) {
    const r = rng(50_000 + seed);
    const text = seed % 10 === 0 ? validPolicy(r).text : hostilePolicy(r);
    let expectOk: boolean;
    try {
      parsePolicy(text);
      expectOk = true;
    } catch {
      expectOk = false;
    }
    const res = await admin('PUT', '/policy', text);
    n++;
    if (expectOk ? res.status !== 200 : !(res.status === 400 || res.status === 413)) wrong.push(`seed ${seed}: ${res.status} ${JSON.stringify(res.data).slice(0, 120)}, want ${expectOk ? 200 : '400/413'}`);
    else if (!expectOk && res.status === 400 && !(res.data.errors?.length)) wrong.push(`seed ${seed}: 400 without errors`);
  }
  t.same(wrong.slice(0, 20), [], `${n} PUT /admin/v1/policy: 200 for the valid, 400 naming the problem for the rest`);
  for (const [what, text, want] of HOSTILE) {
    const res = await admin('PUT', '/policy', text);
    t.ok(res.status === 400 || res.status === 413, `${what}: ${res.status}`);
    if (res.status === 400) t.match(res.data.errors?.join('; '), want, `${what}: the limit named`);
  }
  t.equal(gw.child.exitCode, null, 'gateway alive');
  t.equal((await (await fetch(`http://127.0.0.1:${port}/healthz`)).text()), 'ok\n', 'and serving');
  const after = usage(pid);
  t.ok(after.rssKiB - base.rssKiB < 32 * 1024, `RSS ${base.rssKiB} -> ${after.rssKiB} KiB over ${n + HOSTILE.length} policies (an admin-token holder's)`);
  t.ok(after.fds <= base.fds + 2, `FDs ${base.fds} -> ${after.fds}`);
});
