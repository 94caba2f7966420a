import t from 'tap';
import { DEFAULT_SETTINGS, parsePolicy } from '../common/policy.js';

t.test('defaults, rules (first match, globs), trust groups', async (t) => {
  const p = parsePolicy(`
defaults: { minCallsPerSec: 10, unmergeBelowCallsPerSec: 1 }
trustGroups:
  web: [Foo, Bar]
  storage: [Db]
rules:
  - { caller: Foo, callee: "Ba?", mode: always, isolation: inline }
  - { caller: "*", callee: "Ba*", mode: never }
`);
  t.equal(p.forPair('Foo', 'Bar').settings.mode, 'always');
  t.equal(p.forPair('Foo', 'Bar').settings.isolation, 'inline');
  t.equal(p.forPair('Foo', 'Bar').source, 'rules[0] (Foo -> Ba?)');
  t.equal(p.forPair('Foo', 'Bax').settings.mode, 'always', '? matches one character');
  t.equal(p.forPair('Other', 'Baz').settings.mode, 'never', 'second rule');
  t.equal(p.forPair('Foo', 'Db').settings.minCallsPerSec, 10, 'defaults merged over built-ins');
  t.equal(p.forPair('Foo', 'Db').settings.isolation, DEFAULT_SETTINGS.isolation);
  t.equal(p.forPair('Foo', 'Bar').sameGroup, true);
  t.equal(p.forPair('Foo', 'Db').sameGroup, false, 'different groups');
  t.equal(p.forPair('X', 'Y').sameGroup, true, 'unlisted functions share the default group');
  t.equal(p.trustGroup('X'), 'default');
  const empty = parsePolicy('');
  t.same(empty.settings, DEFAULT_SETTINGS, 'an empty file is the defaults');
  t.equal(DEFAULT_SETTINGS.mode, 'auto');
  t.equal(DEFAULT_SETTINGS.isolation, 'thread', 'conservative default isolation');
  t.equal(parsePolicy('{"rules":[{"caller":"A","callee":"B","mode":"never"}]}').forPair('A', 'B').settings.mode, 'never', 'JSON works too');
});

t.test('errors name the field and the rule', async (t) => {
  const bad = (text: string, re: RegExp, what: string) => t.throws(() => parsePolicy(text, 'p.yaml'), { name: 'PolicyError', message: re }, what);
  bad('rules:\n  - { caller: Foo, callee: Bar, isolation: fast }', /rules\[0\] \(Foo -> Bar\)\.isolation: must be one of inline, stack, thread/, 'enum in a rule');
  bad('defaults: { mode: sometimes }', /defaults\.mode: must be one of auto, always, never/, 'enum in defaults');
  bad('rules:\n  - { caller: Foo }', /rules\[0\] \(Foo -> undefined\): missing field "callee"/, 'missing field');
  bad('defaults: { minIpcShare: 2 }', /defaults\.minIpcShare: must be <= 1/, 'range');
  bad('limits: { maxCalleesPerWorker: 1.5 }', /limits\.maxCalleesPerWorker: must be integer/, 'integer');
  bad('bogus: 1', /top level: unknown field "bogus"/, 'unknown top-level field');
  bad('rules:\n  - { caller: A, callee: B, colour: red }', /rules\[0\] \(A -> B\): unknown field "colour"/, 'unknown field in a rule');
  bad('trustGroups: { a: [X], b: [X] }', /trustGroups\.b: "X" is also in trust group "a"/, 'a function in two groups');
  bad('defaults: { minCallsPerSec: 5, unmergeBelowCallsPerSec: 10 }', /unmergeBelowCallsPerSec \(10\) must not exceed minCallsPerSec \(5\)/, 'hysteresis the wrong way round');
  bad('rules: [ {caller: A, callee: B, ', /not valid JSON or YAML/, 'syntax error');
  let thrown: unknown;
  try {
    parsePolicy('defaults: { mode: x, isolation: y }', 'p.yaml');
  } catch (err) {
    thrown = err;
  }
  t.match(thrown, { name: 'PolicyError' }, 'two bad fields are refused');
  t.match((thrown as { errors?: string[] })?.errors, [/defaults\.mode/, /defaults\.isolation/], 'every problem reported at once');
  t.equal((thrown as { errors?: string[] })?.errors?.length, 2, 'and nothing else');
});
