/** The NBD server's buffer pool (src/engine/nbd/buffer-pool.ts). */
import test from 'ava';
import { BLOCK_BYTES, BufferPool } from '../../src/engine/nbd/buffer-pool.js';

const KiB = 1024;
const total = (bufs: Buffer[]): number => bufs.reduce((n, b) => n + b.length, 0);

test('small data gets one buffer of its size class; large data whole blocks; views add up exactly', (t) => {
  const pool = new BufferPool();
  for (const bytes of [1, 512, 4 * KiB, 5000, 128 * KiB, 128 * KiB + 1, BLOCK_BYTES, 1024 * KiB + 7, 32 * 1024 * KiB]) {
    const views: Buffer[] = [];
    const owned: Buffer[] = [];
    pool.take(bytes, views, owned);
    t.is(total(views), bytes, `${bytes} bytes`);
    t.is(total(owned), BufferPool.footprint(bytes), `footprint of ${bytes}`);
    t.is(views.length, owned.length);
    views.forEach((v, i) => t.is(v.buffer, owned[i]!.buffer));
    pool.give(owned);
    t.is(owned.length, 0);
  }
});

test('given-back memory is reused, by any large request size', (t) => {
  const pool = new BufferPool();
  const views: Buffer[] = [];
  const owned: Buffer[] = [];
  pool.take(1024 * KiB, views, owned);
  const blocks = new Set(owned);
  pool.give(owned);
  t.is(pool.freeBytes, 1024 * KiB);
  const again: Buffer[] = [];
  pool.take(600 * KiB, [], again);
  t.true(again.every((b) => blocks.has(b)));
  const small: Buffer[] = [];
  pool.take(4 * KiB, [], small);
  const first = small[0];
  pool.give(small);
  const small2: Buffer[] = [];
  pool.take(3000, [], small2);
  t.is(small2[0], first);
});

test('free blocks are kept only up to the retention limit', (t) => {
  const pool = new BufferPool(2 * BLOCK_BYTES);
  const owned: Buffer[] = [];
  pool.take(5 * BLOCK_BYTES, [], owned);
  pool.give(owned);
  t.is(pool.freeBytes, 2 * BLOCK_BYTES);
});
