/**
 * The preStop drain's bookkeeping (src/daemon/node-drain.ts) over fake engines; the real
 * drain under writes is test/integration/node-drain.test.ts.
 */
import test from 'ava';
import { silentLogger } from '../../src/common/log.js';
import { StorageError, Code } from '../../src/common/errors.js';
import { NodeDrain } from '../../src/daemon/node-drain.js';

test('a drain flushes every engine once, reports a failed flush by volume, and a second call answers the same result', async (t) => {
  const calls: string[] = [];
  const engine = (name: string, fail = false) => [name, {
    flush: async () => {
      calls.push(name);
      if (fail) throw new StorageError(Code.UNAVAILABLE, `replica of ${name} unreachable`);
    },
  }] as [string, { flush(): Promise<void> }];
  const drain = new NodeDrain(() => [engine('a'), engine('b', true), engine('c')], silentLogger());
  t.false(drain.draining);
  const [first, second] = await Promise.all([drain.drain(), drain.drain()]);
  t.true(drain.draining);
  t.is(first, second);
  t.deepEqual(first.flushed, ['a', 'c']);
  t.deepEqual(first.failed, [{ volume: 'b', err: 'replica of b unreachable' }]);
  t.deepEqual(calls.sort(), ['a', 'b', 'c'], 'each engine flushed once');
  t.is(await drain.drain(), first);
  t.deepEqual(calls.length, 3);
});
