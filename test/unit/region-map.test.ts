import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { RegionLocks, RegionMap } from '../../src/engine/region-map.js';
import { TokenBucket, type Clock } from '../../src/engine/token-bucket.js';

const KiB = 1024;

// ---- RegionMap ----

test('geometry: region count, offsets and a short last region', (t) => {
  const map = new RegionMap(10 * KiB + 512, 4 * KiB);
  t.is(map.regionCount, 3);
  t.is(map.regionOffset(2), 8 * KiB);
  t.is(map.regionLength(1), 4 * KiB);
  t.is(map.regionLength(2), 2 * KiB + 512);
  t.is(new RegionMap(8 * KiB, 4 * KiB).regionCount, 2);
  t.is(new RegionMap(0, 4 * KiB).regionCount, 0);
  t.is(new RegionMap(0, 4 * KiB).nextSet(0), -1);
  t.throws(() => map.regionOffset(3), { instanceOf: StorageError, message: /region 3 is outside/ });
});

test('markRange sets every region the range touches, at region boundaries exactly', (t) => {
  const map = new RegionMap(64 * KiB, 4 * KiB);
  t.false(map.markRange(0, 0), 'an empty range touches nothing');
  t.true(map.markRange(4 * KiB - 1, 1));
  t.deepEqual(setRegions(map), [0]);
  t.true(map.markRange(4 * KiB - 1, 2), 'one byte on each side of a boundary touches both');
  t.deepEqual(setRegions(map), [0, 1]);
  t.false(map.markRange(0, 8 * KiB), 'nothing new');
  t.true(map.markRange(8 * KiB, 4 * KiB));
  t.deepEqual(setRegions(map), [0, 1, 2], 'a range that ends on a boundary does not touch the next region');
  t.true(map.markRange(20 * KiB + 1, 12 * KiB));
  t.deepEqual(setRegions(map), [0, 1, 2, 5, 6, 7, 8]);
  t.throws(() => map.markRange(60 * KiB, 8 * KiB), { instanceOf: StorageError, message: /outside the volume/ });
});

test('the last short region: markRange reaches it, dirtyBytes counts its real length', (t) => {
  const size = 10 * KiB + 512;
  const map = new RegionMap(size, 4 * KiB);
  t.true(map.markRange(size - 1, 1));
  t.deepEqual(setRegions(map), [2]);
  t.is(map.dirtyBytes(), 2 * KiB + 512);
  map.set(0);
  t.is(map.count(), 2);
  t.is(map.dirtyBytes(), 4 * KiB + 2 * KiB + 512);
  map.clear(2);
  t.is(map.dirtyBytes(), 4 * KiB);
  const full = RegionMap.full(size, 4 * KiB);
  t.is(full.count(), 3);
  t.is(full.dirtyBytes(), size);
});

test('set/clear/has keep a running count; setAll covers exactly the regions', (t) => {
  const map = new RegionMap(100 * KiB, KiB); // 100 regions: the last byte holds 4 bits
  map.set(7);
  map.set(7);
  map.set(8);
  t.is(map.count(), 2);
  t.true(map.has(7) && map.has(8) && !map.has(9));
  map.clear(7);
  map.clear(7);
  t.is(map.count(), 1);
  map.setAll();
  t.is(map.count(), 100);
  t.is(map.dirtyBytes(), 100 * KiB);
  t.is(map.toBuffer()[12], 0x0f, 'no bits past the last region');
});

test('nextSet skips clear bytes and returns -1 past the last set bit', (t) => {
  const map = new RegionMap(4096 * KiB, KiB);
  t.is(map.nextSet(0), -1);
  for (const r of [3, 17, 800, 4095]) map.set(r);
  t.is(map.nextSet(0), 3);
  t.is(map.nextSet(3), 3);
  t.is(map.nextSet(4), 17);
  t.is(map.nextSet(18), 800);
  t.is(map.nextSet(801), 4095);
  t.is(map.nextSet(4096), -1);
  t.is(map.nextSet(-5), 3);
  map.clear(4095);
  t.is(map.nextSet(801), -1);
});

test('round trip through toBuffer and the constructor; a wrong length is INVALID_ARGUMENT', (t) => {
  const map = new RegionMap(77 * KiB, 4 * KiB); // 20 regions, 3 bytes
  for (const r of [0, 9, 19]) map.set(r);
  const bits = map.toBuffer();
  t.is(bits.length, 3);
  t.deepEqual([...bits], [0x01, 0x02, 0x08]);
  bits[0] = 0xff; // a copy: the map is not changed through it
  t.is(map.count(), 3);
  const again = new RegionMap(77 * KiB, 4 * KiB, map.toBuffer());
  t.deepEqual(setRegions(again), [0, 9, 19]);
  t.is(again.count(), 3);
  t.is(again.dirtyBytes(), map.dirtyBytes());
  const stray = new RegionMap(77 * KiB, 4 * KiB, Buffer.from([0, 0, 0xff]));
  t.deepEqual(setRegions(stray), [16, 17, 18, 19], 'bits past the last region are dropped');
  t.is(stray.count(), 4);
  const err = t.throws(() => new RegionMap(77 * KiB, 4 * KiB, Buffer.alloc(4)), { instanceOf: StorageError });
  t.is(err.code, Code.INVALID_ARGUMENT);
  t.regex(err.message, /saved region map of 4 bytes does not fit .* 20 regions .* \(3 bytes expected\)/);
});

function setRegions(map: RegionMap): number[] {
  const out: number[] = [];
  for (let r = map.nextSet(0); r >= 0; r = map.nextSet(r + 1)) out.push(r);
  return out;
}

// ---- RegionLocks ----

const R = 4 * KiB;

/** Whether a promise settled within a few turns of the event loop. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true), () => (done = true));
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  return done;
}

test('shared holds of the same regions run together, synchronously', (t) => {
  const locks = new RegionLocks(16 * R, R);
  const a = locks.tryShared(0, 2 * R);
  const b = locks.tryShared(R, 2 * R);
  t.truthy(a);
  t.truthy(b);
  a!();
  b!();
  t.truthy(locks.tryShared(0, 16 * R));
  t.truthy(locks.tryShared(0, 0), 'an empty range holds nothing');
});

test('an exclusive hold waits for shared holders of its regions, and new shared holds wait for it', async (t) => {
  const locks = new RegionLocks(16 * R, R);
  const live = locks.tryShared(R + 100, 10)!;
  const ex = locks.exclusive(1, 1);
  t.false(await settled(ex), 'waits for the shared holder');
  t.is(locks.tryShared(R, 1), undefined, 'a new shared hold on a region an exclusive waits for is refused');
  const other = locks.tryShared(2 * R, R);
  t.truthy(other, 'other regions are free');
  other?.();
  const later = locks.shared(0, 2 * R);
  live();
  t.true(await settled(ex));
  const release = await ex;
  t.false(await settled(later), 'shared waits while the exclusive is held');
  t.is(locks.tryShared(R, R), undefined);
  release();
  t.true(await settled(later));
  const l = await later;
  release(); // a second release changes nothing
  t.false(await settled(locks.exclusive(0, 1)), 'the shared hold from the queue is real');
  l();
});

test('a stream of new shared holds does not starve a waiting exclusive', async (t) => {
  const locks = new RegionLocks(4 * R, R);
  let held = locks.tryShared(0, R)!;
  const ex = locks.exclusive(0, 1);
  const queued: Promise<() => void>[] = [];
  for (let i = 0; i < 10; i++) {
    queued.push(locks.shared(0, 10));
    // the old holder finishes, a new one keeps arriving
    held();
    held = () => undefined;
  }
  t.true(await settled(ex), 'the exclusive got the region though shared requests kept coming');
  for (const q of queued) t.false(await settled(q));
  (await ex)();
  for (const q of queued) t.true(await settled(q));
  for (const q of queued) (await q)();
});

test('exclusive holds of disjoint ranges do not block each other; overlapping ones go in order', async (t) => {
  const locks = new RegionLocks(16 * R, R);
  const a = await locks.exclusive(0, 4);
  const b = locks.exclusive(4, 4);
  t.true(await settled(b), 'disjoint: granted at once');
  const c = locks.exclusive(3, 2);
  const d = locks.exclusive(4, 1);
  t.false(await settled(c));
  t.false(await settled(d));
  (await b)();
  t.false(await settled(c), 'c still overlaps a');
  t.false(await settled(d), 'd overlaps c, which asked first');
  a();
  t.true(await settled(c));
  t.false(await settled(d));
  (await c)();
  t.true(await settled(d));
  (await d)();
  t.truthy(locks.tryShared(0, 16 * R), 'everything released');
});

test('a shared hold spanning regions is all or nothing', async (t) => {
  const locks = new RegionLocks(8 * R, R);
  const ex = await locks.exclusive(2, 1);
  const wide = locks.shared(0, 4 * R);
  t.false(await settled(wide));
  const other = locks.exclusive(0, 1);
  t.true(await settled(other), 'the waiting shared hold took none of its regions');
  (await other)();
  ex();
  t.true(await settled(wide));
  (await wide)();
});

test('out-of-range lock requests are refused', async (t) => {
  const locks = new RegionLocks(8 * R, R);
  t.throws(() => locks.tryShared(7 * R, 2 * R), { message: /outside the volume/ });
  await t.throwsAsync(locks.exclusive(7, 2), { message: /outside the volume's 8 regions/ });
});

// ---- TokenBucket ----

/** A clock that only moves when someone sleeps; records every sleep. */
function fakeClock(): Clock & { sleeps: number[]; t: number } {
  const clock = {
    t: 0,
    sleeps: [] as number[],
    now: () => clock.t,
    sleep: async (ms: number) => {
      clock.sleeps.push(ms);
      clock.t += ms;
    },
  };
  return clock;
}

test('token bucket: the burst passes at once, then bytes wait at the rate', async (t) => {
  const clock = fakeClock();
  const bucket = new TokenBucket(1000, 500, clock);
  await bucket.take(500);
  t.deepEqual(clock.sleeps, []);
  await bucket.take(250);
  t.deepEqual(clock.sleeps, [250]);
  clock.t += 1000; // idle: refills up to the burst only
  await bucket.take(600);
  t.deepEqual(clock.sleeps, [250, 100]);
  await bucket.take(2000); // more than the burst: one long wait
  t.deepEqual(clock.sleeps, [250, 100, 2000]);
});

test('token bucket: concurrent takers queue behind each other at the configured rate', async (t) => {
  const clock = fakeClock();
  const pending: Array<() => void> = [];
  clock.sleep = (ms: number) => {
    clock.sleeps.push(ms);
    return new Promise<void>((resolve) => pending.push(resolve));
  };
  const bucket = new TokenBucket(100, 0, clock);
  const takes = [bucket.take(100), bucket.take(100), bucket.take(100)];
  t.deepEqual(clock.sleeps, [1000, 2000, 3000], 'each waits for the debt of those before it');
  clock.t = 3000;
  for (const p of pending) p();
  await Promise.all(takes);
});

test('token bucket: rate 0 never waits; setRate applies from now on', async (t) => {
  const clock = fakeClock();
  const bucket = new TokenBucket(0, 0, clock);
  await bucket.take(1 << 30);
  t.deepEqual(clock.sleeps, []);
  bucket.setRate(1 << 20);
  await bucket.take(1 << 19);
  t.deepEqual(clock.sleeps, [500]);
  t.throws(() => bucket.setRate(-1), { message: /rate must be zero/ });
});

test('token bucket: a wait rejects with CANCELLED when the signal aborts, and the bytes are given back', async (t) => {
  const bucket = new TokenBucket(1, 0); // the real clock: this wait would last 1000 s
  const ac = new AbortController();
  const waiting = bucket.take(1000, ac.signal);
  ac.abort();
  const err = await t.throwsAsync(waiting, { instanceOf: StorageError });
  t.is(err.code, Code.CANCELLED);
  await t.throwsAsync(bucket.take(1, ac.signal), { instanceOf: StorageError, message: /cancelled/ });

  const clock = fakeClock();
  clock.sleep = (ms, signal) => new Promise((_resolve, reject) => {
    clock.sleeps.push(ms);
    signal?.addEventListener('abort', () => reject(new StorageError(Code.CANCELLED, 'cancelled')));
  });
  const fake = new TokenBucket(100, 0, clock);
  const ac2 = new AbortController();
  const p = fake.take(100, ac2.signal);
  ac2.abort();
  await t.throwsAsync(p);
  clock.sleep = async (ms) => {
    clock.sleeps.push(ms);
  };
  await fake.take(100);
  t.deepEqual(clock.sleeps, [1000, 1000], 'the cancelled take left no debt behind');
});

test('clearAll empties a map for reuse: no bits, no count, and it marks again', (t) => {
  const map = RegionMap.full(10 * 1024 * KiB, 1024 * KiB);
  map.clearAll();
  t.is(map.count(), 0);
  t.is(map.nextSet(0), -1);
  t.true(map.toBuffer().equals(Buffer.alloc(2)));
  t.true(map.markRange(3 * 1024 * KiB, 1));
  t.is(map.count(), 1);
});
