/** The NBD server's shared in-flight byte budget (src/engine/nbd/byte-budget.ts). */
import test from 'ava';
import { ByteBudget } from '../../src/engine/nbd/byte-budget.js';
import { BLOCK_SIZE_MAX } from '../../src/engine/nbd/protocol.js';

const MiB = 1 << 20;
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('a budget below one maximum-size request is refused', (t) => {
  t.throws(() => new ByteBudget(BLOCK_SIZE_MAX - 1), { instanceOf: RangeError });
  t.notThrows(() => new ByteBudget(BLOCK_SIZE_MAX));
});

test('takes what fits; a maximum-size request always gets through once nothing is held', async (t) => {
  const b = new ByteBudget(40 * MiB);
  t.true(b.tryTake(30 * MiB));
  t.false(b.tryTake(32 * MiB));
  const order: string[] = [];
  b.wait(32 * MiB, () => order.push('big'));
  // Someone waiting ahead: a small request that would fit queues behind it (no starvation).
  t.false(b.tryTake(MiB));
  b.wait(MiB, () => order.push('small'));
  await tick();
  t.deepEqual(order, []);
  b.give(30 * MiB);
  await tick();
  t.deepEqual(order, ['big', 'small']);
  t.is(b.usedBytes, 33 * MiB);
});

test('a withdrawn waiter is never granted and lets the next one through', async (t) => {
  const b = new ByteBudget(32 * MiB);
  t.true(b.tryTake(32 * MiB));
  let granted = 0;
  const cancel = b.wait(16 * MiB, () => granted++);
  b.wait(8 * MiB, () => (granted += 10));
  cancel();
  b.give(32 * MiB);
  await tick();
  t.is(granted, 10);
  t.is(b.usedBytes, 8 * MiB);
  t.throws(() => b.give(9 * MiB));
});
