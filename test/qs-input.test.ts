import t from 'tap';
import { queryToJsonInput } from '../gateway/qs-input.js';

const q = (s: string) => queryToJsonInput(s).toString();

t.test("qsAsInput builds Nightcore's JSON byte for byte", async (t) => {
  t.equal(q('b=2&a=x+y'), '{"a":"x y","b":"2"}', 'sorted keys, + is a space');
  t.equal(q(''), 'null', 'no query');
  t.equal(q('&&'), 'null', 'only empty pieces');
  t.equal(q('a=1&a=2'), '{"a":"2"}', 'last duplicate wins');
  t.equal(q('a=%41%62&c=%e2%82%ac'), '{"a":"Ab","c":"€"}', 'escapes, either case, UTF-8');
  t.equal(q('=v'), '{"":"v"}', 'empty key allowed');
  t.equal(q('a=1=2&b=ok'), '{"b":"ok"}', 'second = makes the piece invalid');
  t.equal(q('novalue&b=ok'), '{"b":"ok"}', 'missing = makes the piece invalid');
  t.equal(q('a=%zz&b=ok'), '{"b":"ok"}', 'malformed escape');
  t.equal(q('a=x y&b=ok'), '{"b":"ok"}', 'raw character outside the allowed set');
  t.equal(q('a=%ff&b=ok'), '{"b":"ok"}', 'invalid UTF-8 skipped instead of crashing');
  t.equal(q('q=%22%5C%0A'), '{"q":"\\"\\\\\\n"}', 'JSON escaping');
  t.equal(q('Z=1&a=2&B=3'), '{"B":"3","Z":"1","a":"2"}', 'byte-wise order');
  t.equal(q('inDate=2015-04-09&lat=37.7&lon=-122.4'), '{"inDate":"2015-04-09","lat":"37.7","lon":"-122.4"}');
});
