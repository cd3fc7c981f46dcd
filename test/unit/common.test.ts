import test from 'ava';
import { Code, StorageError, fromNodeError, SystemError } from '../../src/common/errors.js';
import { validateName } from '../../src/common/ids.js';
import { KeyedLock } from '../../src/common/keyed-lock.js';
import { alignUp, formatBytes, parseSize } from '../../src/common/units.js';

test('sizes parse in binary, kubectl and decimal units', (t) => {
  t.is(parseSize('10GiB'), 10 * 1024 ** 3);
  t.is(parseSize('10Gi'), 10 * 1024 ** 3);
  t.is(parseSize('512MiB'), 512 * 1024 ** 2);
  t.is(parseSize('1TB'), 1e12);
  t.is(parseSize('4096'), 4096);
  t.is(parseSize('1.5GiB'), 1.5 * 1024 ** 3);
});

test('a size that cannot be read says how to write one', (t) => {
  for (const bad of ['', 'ten', '10 furlongs', '-1GiB', '1e3']) {
    const err = t.throws(() => parseSize(bad), { instanceOf: StorageError });
    t.is(err?.code, Code.INVALID_ARGUMENT);
    t.regex(err?.message ?? '', /e\.g\. 10GiB/);
  }
});

test('byte counts format in binary units', (t) => {
  t.is(formatBytes(0), '0 B');
  t.is(formatBytes(10 * 1024 ** 3), '10 GiB');
  t.is(formatBytes(1536), '1.5 KiB');
  t.is(alignUp(1, 4096), 4096);
  t.is(alignUp(8192, 4096), 8192);
});

test('volume names follow Kubernetes-style rules', (t) => {
  t.is(validateName('volume', 'pg-data-0'), 'pg-data-0');
  for (const bad of ['', 'UPPER', '-lead', 'trail-', 'a/b', 'x'.repeat(254)]) {
    t.throws(() => validateName('volume', bad), { instanceOf: StorageError, message: /not valid/ });
  }
});

test('node fs errors become SystemErrors with errno and a matching code', (t) => {
  const enoent = Object.assign(new Error('no such file'), { code: 'ENOENT', errno: -2, syscall: 'open' });
  const err = fromNodeError(enoent, 'opening the device');
  t.true(err instanceof SystemError);
  t.is(err.code, Code.NOT_FOUND);
  t.is((err as SystemError).errno, 2);
  const enospc = Object.assign(new Error('full'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
  t.is(fromNodeError(enospc, 'writing').code, Code.RESOURCE_EXHAUSTED);
});

test('a keyed lock serialises one key and not others', async (t) => {
  const lock = new KeyedLock();
  const order: string[] = [];
  let started = (): void => undefined;
  const a1Started = new Promise<void>((r) => (started = r));
  let release = (): void => undefined;
  const a1Held = new Promise<void>((r) => (release = r));
  const a1 = lock.run('a', async () => {
    order.push('a1:start');
    started();
    await a1Held;
    order.push('a1:end');
  });
  const a2 = lock.run('a', async () => {
    order.push('a2:start');
  });
  await a1Started;
  // While a1 holds "a" (until released below, not for some milliseconds): "b" runs to the end, a2 waits.
  await lock.run('b', async () => {
    order.push('b1');
  });
  t.deepEqual(order, ['a1:start', 'b1'], 'the call on "b" did not wait for "a"; the second call on "a" did');
  t.true(lock.isBusy('a'));
  release();
  await Promise.all([a1, a2]);
  t.deepEqual(order, ['a1:start', 'b1', 'a1:end', 'a2:start'], 'the second call on "a" ran after the first ended');
  t.false(lock.isBusy('a'));
});

test('a failed holder does not wedge the lock', async (t) => {
  const lock = new KeyedLock();
  await t.throwsAsync(lock.run('k', async () => { throw new Error('boom'); }));
  t.is(await lock.run('k', async () => 42), 42);
});
