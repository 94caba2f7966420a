import t from 'tap';
import { ConfigError, parseFuncConfig } from '../common/func-config.js';

const cfg = (entries: unknown) => () => parseFuncConfig(JSON.stringify(entries));

t.test('accepts a Nightcore config and keeps its raw bytes', async (t) => {
  const text = JSON.stringify([
    { funcName: 'Foo', funcId: 1, minWorkers: 2, maxWorkers: 2, unknownKey: { x: 1 } },
    { funcName: 'hotels', funcId: 2, allowHttpGet: true, qsAsInput: true },
    { funcName: 'grpc:hipstershop.CartService', funcId: 9, grpcMethods: ['AddItem', 'GetCart', 'EmptyCart'], minWorkers: 8, maxWorkers: 32 },
    { funcName: 'Lib', funcId: 10, library: 'build/libx.so' },
  ]);
  const c = parseFuncConfig(text, '/opt/fns');
  t.equal(c.raw.toString(), text, 'raw bytes kept for workers');
  t.equal(c.entries.length, 4);
  t.equal(c.byName.get('grpc:hipstershop.CartService')!.grpcMethods.indexOf('GetCart'), 1);
  t.equal(c.byName.get('grpc:hipstershop.CartService')!.grpcService, 'hipstershop.CartService');
  t.equal(c.byId.get(2)!.qsAsInput, true);
  t.equal(c.byName.get('Foo')!.minWorkers, 2);
  t.equal(c.byName.get('hotels')!.minWorkers, undefined, 'absent stays absent (engine then starts 4)');
  t.equal(c.byName.get('Lib')!.library, '/opt/fns/build/libx.so', 'library resolved against the config folder');
});

t.test('each Nightcore rule, with errors naming the entry', async (t) => {
  t.throws(() => parseFuncConfig('{not json'), { name: 'ConfigError', message: /not valid JSON/ });
  t.throws(cfg({ funcName: 'A', funcId: 1 }), /must be a JSON array/);
  t.throws(cfg([{ funcId: 1 }]), /entry #0: funcName is missing/);
  t.throws(cfg([{ funcName: 'A' }]), /entry #0 \("A"\): funcId is missing/);
  t.throws(cfg([{ funcName: 7, funcId: 1 }]), /funcName must be a string/);
  t.throws(cfg([{ funcName: 'A', funcId: '1' }]), /\("A"\): funcId must be a number/);
  t.throws(cfg([{ funcName: 'My_Func', funcId: 1 }]), /entry #0 \("My_Func"\): function name "My_Func" may only use A-Z a-z 0-9/);
  t.throws(cfg([{ funcName: 'a-b', funcId: 1 }]), /may only use/);
  t.throws(cfg([{ funcName: 'grpc:bad-name', funcId: 1, grpcMethods: [] }]), /gRPC service name "bad-name"/);
  t.throws(cfg([{ funcName: '', funcId: 1 }]), /name is empty/);
  t.throws(cfg([{ funcName: 'A', funcId: 0 }]), /funcId 0 is out of range 1..254/);
  t.throws(cfg([{ funcName: 'A', funcId: 255 }]), /funcId 255 is out of range/, "255 overflows Nightcore's engine tracer");
  t.throws(cfg([{ funcName: 'A', funcId: 1 }, { funcName: 'A', funcId: 2 }]), /entry #1 \("A"\): duplicate funcName "A"/);
  t.throws(cfg([{ funcName: 'A', funcId: 1 }, { funcName: 'B', funcId: 1 }]), /entry #1 \("B"\): duplicate funcId 1 \(also used by "A"\)/);
  t.throws(cfg([{ funcName: 'grpc:S', funcId: 1 }]), /\("grpc:S"\): gRPC service entries need grpcMethods/);
  t.throws(cfg([{ funcName: 'grpc:S', funcId: 1, grpcMethods: 'M' }]), /grpcMethods must be an array/);
  t.throws(cfg([{ funcName: 'grpc:S', funcId: 1, grpcMethods: ['M', 3] }]), /grpcMethods\[1\] must be a string/);
  t.throws(cfg([{ funcName: 'grpc:S', funcId: 1, grpcMethods: ['M', 'M'] }]), /grpcMethods has "M" twice/);
  const many = Array.from({ length: 65 }, (_, i) => `M${i}`);
  t.throws(cfg([{ funcName: 'grpc:S', funcId: 1, grpcMethods: many }]), /65 grpcMethods, at most 64/);
  t.doesNotThrow(cfg([{ funcName: 'grpc:S', funcId: 1, grpcMethods: many.slice(0, 64) }]), '64 methods are fine');
  t.throws(cfg([{ funcName: 'A', funcId: 1, allowHttpGet: 'yes' }]), /allowHttpGet must be true or false/);
  t.throws(cfg([{ funcName: 'A', funcId: 1, minWorkers: 5, maxWorkers: 2 }]), /minWorkers 5 is greater than maxWorkers 2/);
  t.throws(cfg([{ funcName: 'A', funcId: 1, library: 'x.so', command: 'y' }]), /either library or command/);
  t.throws(cfg([null]), /entry #0: must be an object/);
});

t.test('grpcMethods on a plain entry and http flags on a grpc entry are ignored, as in Nightcore', async (t) => {
  const c = parseFuncConfig(JSON.stringify([
    { funcName: 'A', funcId: 1, grpcMethods: 'whatever' },
    { funcName: 'grpc:S', funcId: 2, grpcMethods: ['M'], allowHttpGet: true },
  ]));
  t.same(c.byName.get('A')!.grpcMethods, []);
  t.equal(c.byName.get('grpc:S')!.allowHttpGet, false);
  let thrown: unknown;
  try {
    parseFuncConfig('[{"funcName": "A"}]', '/opt/fns/func_config.json');
  } catch (err) {
    thrown = err;
  }
  t.ok(thrown instanceof ConfigError, 'config errors are ConfigError (the CLI prints them without a stack)');
});
