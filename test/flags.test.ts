import t from 'tap';
import { parseFlags } from '../common/flags.js';

const specs = {
  http_port: { type: 'int', default: 8080, help: '', min: 0, max: 65535 },
  listen_addr: { type: 'string', default: '0.0.0.0', help: '' },
  lb_pick_least_load: { type: 'bool', default: false, help: '' },
} as const;

t.test('absl syntax', async (t) => {
  t.same(parseFlags(specs, []).values, { http_port: 8080, listen_addr: '0.0.0.0', lb_pick_least_load: false }, 'defaults');
  const a = parseFlags(specs, ['--http_port=9000', '--listen_addr', '127.0.0.1', '--lb_pick_least_load']);
  t.same(a.values, { http_port: 9000, listen_addr: '127.0.0.1', lb_pick_least_load: true });
  t.ok(a.given.has('http_port'));
  t.equal(parseFlags(specs, ['--lb_pick_least_load=false']).values.lb_pick_least_load, false);
  t.equal(parseFlags(specs, ['--lb_pick_least_load', '--nolb_pick_least_load']).values.lb_pick_least_load, false, '--noflag');
});

t.test('errors name the flag', async (t) => {
  t.throws(() => parseFlags(specs, ['--bogus=1']), { name: 'FlagError', message: 'unknown flag --bogus' });
  t.throws(() => parseFlags(specs, ['--http_port=abc']), /--http_port: "abc" is not an integer/);
  t.throws(() => parseFlags(specs, ['--http_port=70000']), /above 65535/);
  t.throws(() => parseFlags(specs, ['--lb_pick_least_load=maybe']), /not a boolean/);
  t.throws(() => parseFlags(specs, ['--listen_addr']), /needs a value/);
  t.throws(() => parseFlags(specs, ['stray']), /unexpected argument "stray"/);
});

t.test("other Nightcore binaries' flags are accepted when listed as ignored", async (t) => {
  const r = parseFlags(specs, ['--disable_monitor', '--instant_rps_p_norm', '0.7', '--http_port=1'], { ignored: ['disable_monitor', 'instant_rps_p_norm'] });
  t.equal(r.values.http_port, 1);
});
