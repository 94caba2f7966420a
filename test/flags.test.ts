import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { envName, MAX_SECRET_FILE_BYTES, parseFlags, secretFlag } from '../common/flags.js';

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

t.test('flags from the environment: NIGHTFUSE_<FLAG_NAME>, the command line wins', async (t) => {
  const env = { NIGHTFUSE_HTTP_PORT: '9100', NIGHTFUSE_LISTEN_ADDR: '10.0.0.1', NIGHTFUSE_LB_PICK_LEAST_LOAD: 'true', OTHER: 'x' };
  const a = parseFlags(specs, [], { env });
  t.same(a.values, { http_port: 9100, listen_addr: '10.0.0.1', lb_pick_least_load: true });
  t.same([...a.fromEnv].sort(), ['http_port', 'lb_pick_least_load', 'listen_addr']);
  t.equal(a.given.size, 0, 'environment values are not "given" on the command line');
  const b = parseFlags(specs, ['--http_port=9200', '--nolb_pick_least_load'], { env });
  t.equal(b.values.http_port, 9200, 'argv wins');
  t.equal(b.values.lb_pick_least_load, false, '--noflag wins over the environment');
  t.notOk(b.fromEnv.has('http_port'));
  t.equal(b.values.listen_addr, '10.0.0.1');
  t.equal(parseFlags(specs, [], { env: { NIGHTFUSE_LISTEN_ADDR: '' } }).values.listen_addr, '0.0.0.0', 'an empty variable is unset');
  t.equal(parseFlags(specs, []).values.http_port, 8080, 'no env option: the environment is not read');
  t.equal(envName('root_path_for_ipc'), 'NIGHTFUSE_ROOT_PATH_FOR_IPC');
  t.throws(() => parseFlags(specs, [], { env: { NIGHTFUSE_HTTP_PORT: 'eighty' } }), { name: 'FlagError', message: 'NIGHTFUSE_HTTP_PORT (--http_port): "eighty" is not an integer' });
  t.throws(() => parseFlags(specs, [], { env: { NIGHTFUSE_HTTP_PORT: '70000' } }), /NIGHTFUSE_HTTP_PORT \(--http_port\): 70000 is above 65535/);
  t.throws(() => parseFlags(specs, [], { env: { NIGHTFUSE_LB_PICK_LEAST_LOAD: 'sometimes' } }), /NIGHTFUSE_LB_PICK_LEAST_LOAD.*not a boolean/);
});

t.test('secrets from files: --x_file next to --x', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nf-secret-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'token');
  writeFileSync(file, '  s3cret-from-file\n');
  const sp = { admin_token: { type: 'string', default: '', help: '' }, admin_token_file: { type: 'string', default: '', help: '' } } as const;
  const p = (argv: string[], env: Record<string, string> = {}) => secretFlag(parseFlags(sp, argv, { env }), 'admin_token');
  t.equal(p([]), '', 'neither: empty');
  t.equal(p(['--admin_token=direct']), 'direct');
  t.equal(p([`--admin_token_file=${file}`]), 's3cret-from-file', 'file content, surrounding whitespace dropped');
  t.equal(p([], { NIGHTFUSE_ADMIN_TOKEN_FILE: file }), 's3cret-from-file', 'file named in the environment');
  t.equal(p(['--admin_token=direct'], { NIGHTFUSE_ADMIN_TOKEN_FILE: file }), 'direct', 'command line wins over an env file');
  t.equal(p([`--admin_token_file=${file}`], { NIGHTFUSE_ADMIN_TOKEN: 'env' }), 's3cret-from-file', 'command-line file wins over an env value');
  t.throws(() => p(['--admin_token=a', `--admin_token_file=${file}`]), /give --admin_token and --admin_token_file, not both/);
  t.throws(() => p([], { NIGHTFUSE_ADMIN_TOKEN: 'a', NIGHTFUSE_ADMIN_TOKEN_FILE: file }), /give NIGHTFUSE_ADMIN_TOKEN and NIGHTFUSE_ADMIN_TOKEN_FILE, not both/);
  t.throws(() => p([`--admin_token_file=${join(dir, 'missing')}`]), /--admin_token_file: cannot read .*missing: ENOENT/);
  writeFileSync(join(dir, 'empty'), '\n');
  t.throws(() => p([`--admin_token_file=${join(dir, 'empty')}`]), /--admin_token_file: .*empty is empty/);
  t.throws(() => p([`--admin_token_file=${dir}`]), /is not a regular file/);
  writeFileSync(join(dir, 'big'), Buffer.alloc(MAX_SECRET_FILE_BYTES + 1, 'a'));
  t.throws(() => p([`--admin_token_file=${join(dir, 'big')}`]), /has 65537 bytes; a secret file holds at most 65536/);
  t.throws(() => secretFlag(parseFlags(specs, []), 'listen_addr'), /no --listen_addr_file flag/);
});

t.test('the node id: --node_id, else the hash of --node_name, else of the host name (Nightcore)', async (t) => {
  const { nodeIdFrom } = await import('../launcher/main.js');
  const { hostnameNodeId } = await import('../launcher/ipc-files.js');
  t.equal(nodeIdFrom(7, 'ignored'), 7);
  t.equal(nodeIdFrom(0x12345, ''), 0x2345, '16 bits, as the wire carries');
  t.equal(nodeIdFrom(-1, 'worker-a'), hostnameNodeId('worker-a\n'), 'as Nightcore would on a host named worker-a');
  t.not(nodeIdFrom(-1, 'worker-a'), nodeIdFrom(-1, 'worker-b'));
  t.equal(nodeIdFrom(-1, ''), hostnameNodeId(), 'no name: this host');
});
