/**
 * Rebuild against real replicas (test/helpers/rebuild-fixture.ts), followed region by
 * region: checkpoints, aborts, the rate limit, live writes, verify rounds.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { Code, StorageError } from '../../src/common/errors.js';
import { contiguousRuns, runRebuild } from '../../src/engine/rebuild.js';
import { RegionMap } from '../../src/engine/region-map.js';
import { controlOf, sameBytes, setup as setupRebuild, sourceRef, targetRef, type Setup } from '../helpers/rebuild-fixture.js';

const KiB = 1024;
const REGION = 64 * KiB;
/** 33 regions, the last one 16 KiB. */
const SIZE = 32 * REGION + 16 * KiB;
/** The shared fixture, with one region per copy run so that these tests can follow the copy region by region. */
async function setup(t: ExecutionContext): Promise<Setup> {
  const s = await setupRebuild(t, SIZE, REGION);
  const context = s.context;
  s.context = (map, extra = {}) => context(map, { runMaxBytes: REGION, ...extra });
  return s;
}

/** Fills the source: random data in most regions, zeros in regions 5, 6 and 20, data in the short last one. */
async function fillSource(s: Setup): Promise<void> {
  for (let r = 0; r < 33; r++) {
    if (r === 5 || r === 6 || r === 20) continue;
    await s.source.inner.write(r * REGION, randomBytes(Math.min(REGION, SIZE - r * REGION)), false);
  }
  await s.source.inner.flush();
}

/** Makes the target hold the source's bytes except in `dirty`, where it holds junk. */
async function staleTarget(s: Setup, dirty: readonly number[]): Promise<void> {
  const bytes = await s.deviceBytes(s.src, sourceRef);
  await s.target.inner.write(0, bytes, false);
  for (const r of dirty) await s.target.inner.write(r * REGION, randomBytes(Math.min(REGION, SIZE - r * REGION)), false);
  await s.target.inner.flush();
}

function mapOf(regions: readonly number[]): RegionMap {
  const map = new RegionMap(SIZE, REGION);
  for (const r of regions) map.set(r);
  return map;
}

test('copies exactly the set regions, zeros as write-zeroes, checkpoints on the target, and finishes in sync', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const dirty = [0, 1, 5, 6, 7, 19, 20, 32];
  await staleTarget(s, dirty);
  const map = mapOf(dirty);
  const dirtyBytes = map.dirtyBytes();
  t.is(dirtyBytes, 7 * REGION + 16 * KiB);
  const reports: number[] = [];
  const result = await runRebuild(s.context(map, { concurrency: 3, onProgress: (p) => reports.push(p.doneBytes) }));

  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef), 'target byte-identical to the source');
  t.deepEqual(s.target.regionsWritten(), dirty, 'only the set regions were written');
  t.is(s.target.bytesIn(), dirtyBytes);
  const zeroed = s.target.events.filter((e) => e.op === 'write-zeroes').map((e) => e.offset / REGION);
  t.deepEqual(zeroed.sort((a, b) => a - b), [5, 6, 20], 'zero regions went as write-zeroes');
  t.false(s.source.events.some((e) => e.op === 'read' && [5, 6, 20].includes(e.offset / REGION)), 'the source\'s holes were never read');
  t.deepEqual(result, { ...result, doneBytes: dirtyBytes, copiedBytes: dirtyBytes - 3 * REGION, zeroedBytes: 0, discardedBytes: 3 * REGION, regionsVerified: dirty.length });

  t.is(map.count(), 0);
  t.deepEqual(s.saved.at(-1), Buffer.alloc(5), 'the persisted map ends empty');
  const last = s.progress.at(-1)!;
  t.deepEqual(last, { doneBytes: dirtyBytes, totalBytes: dirtyBytes, checkpoint: Buffer.alloc(5) }, 'the checkpoint on the target is the map');
  t.is(reports.at(-1), dirtyBytes);
  const status = await s.targetControl.getReplicaStatus(targetRef);
  t.is(status.state, 'in-sync');
  t.is(status.rebuild, undefined);
  const flushes = s.target.events.filter((e) => e.op === 'flush').length;
  t.true(flushes >= 1, 'the target was flushed before bits were cleared');
});

test('abort mid-way keeps only flushed regions cleared; the next run with the persisted map copies the rest', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const dirty = Array.from({ length: 33 }, (_, r) => r);
  await staleTarget(s, dirty);
  const first = RegionMap.full(SIZE, REGION);
  const ac = new AbortController();
  let reads = 0;
  s.source.afterRead = () => {
    if (++reads === 10) ac.abort();
  };
  const err = await t.throwsAsync(runRebuild(s.context(first, { concurrency: 2, signal: ac.signal })), { instanceOf: StorageError });
  t.is(err.code, Code.CANCELLED);
  t.regex(err.message, /rebuild of replica rep-tgt of volume vol-rebuild cancelled/);
  const firstBytes = s.target.bytesIn();
  t.true(firstBytes >= 10 * REGION && firstBytes < SIZE, `the first run copied part of the volume (${firstBytes} bytes)`);
  const savedBits = s.saved.at(-1)!;
  const persisted = new RegionMap(SIZE, REGION, savedBits);
  t.is(persisted.dirtyBytes(), SIZE - firstBytes, 'exactly the copied (and flushed) regions were cleared');
  const status = await s.targetControl.getReplicaStatus(targetRef);
  t.is(status.state, 'rebuilding');
  t.deepEqual(status.rebuild?.checkpoint, savedBits, 'the target recorded the checkpoint');
  t.is(status.rebuild?.doneBytes, firstBytes);

  // A restart: the engine loads the saved map and runs again.
  s.source.afterRead = undefined;
  s.target.events.length = 0;
  const second = await runRebuild(s.context(persisted));
  t.is(s.target.bytesIn(), SIZE - firstBytes);
  t.is(second.doneBytes, SIZE - firstBytes, 'both runs together copied the volume once');
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef));
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');
});

test('an abort while waiting on the rate limit rejects at once with CANCELLED', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const ac = new AbortController();
  // One byte a second; the bucket is charged after each region: region 3's charge passes on
  // the burst, region 4's puts the worker 18 hours in debt before region 9.
  const running = runRebuild(s.context(mapOf([3, 4, 9]), { concurrency: 1, rateBytesPerSec: 1, signal: ac.signal }));
  while (!s.target.events.some((e) => e.op === 'write' && e.offset === 4 * REGION)) await new Promise((resolve) => setImmediate(resolve));
  ac.abort();
  const err = await t.throwsAsync(running, { instanceOf: StorageError });
  t.is(err.code, Code.CANCELLED);
  t.deepEqual(new RegionMap(SIZE, REGION, s.saved.at(-1)).nextSet(0), 9, 'the regions copied before the abort stay cleared');
  t.false(s.target.events.some((e) => e.offset === 9 * REGION), 'region 9 was not copied');
});

test('a checkpoint about every second clears only regions the target flushed before it', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const dirty = [0, 1, 2, 3, 4, 5];
  // Region 0 takes over a second to read, so a checkpoint falls due while the copy goes on.
  s.source.afterRead = (offset) => (offset === 0 ? new Promise((resolve) => setTimeout(resolve, 1200)) : undefined);
  await runRebuild(s.context(mapOf(dirty), { concurrency: 1 }));
  t.true(s.progress.length >= 2, `a checkpoint before the end (${s.progress.length} in all)`);
  const mid = new RegionMap(SIZE, REGION, s.progress[0]!.checkpoint);
  t.false(mid.has(0), 'region 0 was cleared mid-way');
  t.true(mid.count() > 0 && s.progress[0]!.doneBytes < s.progress[0]!.totalBytes, 'before the end');
  s.progress.forEach((p, i) => {
    const bits = new RegionMap(SIZE, REGION, p.checkpoint);
    const events = s.target.events.slice(0, s.progressAt[i]);
    const lastFlush = events.map((e) => e.op).lastIndexOf('flush');
    for (const r of dirty.filter((d) => !bits.has(d))) {
      const written = events.findIndex((e) => (e.op === 'write' || e.op === 'write-zeroes') && Math.floor(e.offset / REGION) === r);
      t.true(written >= 0 && written < lastFlush, `checkpoint ${i}: region ${r} was written and flushed before its bit was cleared`);
    }
    t.is(p.doneBytes, (dirty.length - bits.count()) * REGION);
  });
  t.is(s.progress.at(-1)!.doneBytes, dirty.length * REGION);
});

test('a live write racing the copy of its region ends up on the target', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  await staleTarget(s, [2, 3]);
  const fresh = Buffer.alloc(4 * KiB, 0x5a);
  const liveOffset = 3 * REGION + 8 * KiB;
  /** What the engine does for a write while a replica rebuilds: a shared region hold around writing to both. */
  const liveWrite = async (): Promise<void> => {
    const release = s.locks.tryShared(liveOffset, fresh.length) ?? await s.locks.shared(liveOffset, fresh.length);
    try {
      await Promise.all([s.source.inner.write(liveOffset, fresh, false), s.target.inner.write(liveOffset, fresh, false)]);
    } finally {
      release();
    }
  };
  let unblock!: () => void;
  let live: Promise<void> | undefined;
  let liveWaited = false;
  let liveStarted!: () => void;
  const started = new Promise<void>((resolve) => (liveStarted = resolve));
  s.source.afterRead = async (offset) => {
    if (offset !== 3 * REGION || live) return;
    // The rebuild holds region 3 and has read its old bytes: a live write comes in now.
    const probe = s.locks.tryShared(liveOffset, fresh.length);
    probe?.();
    liveWaited = probe === undefined;
    live = liveWrite();
    liveStarted();
    await new Promise<void>((resolve) => (unblock = resolve));
  };
  const running = runRebuild(s.context(mapOf([2, 3]), { concurrency: 1 }));
  await Promise.race([started, running]);
  t.truthy(live, 'the copy of region 3 started');
  t.true(liveWaited, 'live I/O on a region being copied waits');
  unblock();
  await running;
  await live;
  t.is(s.target.events.filter((e) => e.op === 'write' && e.offset === 3 * REGION).length, 1, 'region 3 was copied once: verify found nothing stale');
  const target = await s.deviceBytes(s.tgt, targetRef);
  t.deepEqual(target.subarray(liveOffset, liveOffset + fresh.length), fresh);
  sameBytes(t, target, await s.deviceBytes(s.src, sourceRef));

  // And the other order: a live write holding the region first makes the copy wait for it.
  s.source.afterRead = undefined;
  const held = s.locks.tryShared(7 * REGION, 512)!;
  // The event that proves it: the copy asked for region 7's lock, and is not granted it
  // while the live write holds it.
  const exclusive = s.locks.exclusive.bind(s.locks);
  let asked = (): void => undefined;
  const askedFor7 = new Promise<void>((resolve) => (asked = resolve));
  let granted = false;
  s.locks.exclusive = (first, count) => {
    if (first === 7) asked();
    return exclusive(first, count).then((release) => {
      granted = true;
      return release;
    });
  };
  const second = runRebuild(s.context(mapOf([7]), { concurrency: 1 }));
  await askedFor7;
  await new Promise((resolve) => setImmediate(resolve));
  t.false(granted, 'the copy waits for live I/O on its region');
  t.false(s.source.events.some((e) => e.op === 'read' && e.offset === 7 * REGION), 'nothing of region 7 was read meanwhile');
  await s.source.inner.write(7 * REGION, fresh, false);
  await s.target.inner.write(7 * REGION, fresh, false);
  held();
  await second;
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef));
});

test('a region that differs at verify is copied again; one that keeps differing is DATA_LOSS', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  await staleTarget(s, [10, 11, 12]);
  // Corrupt region 11 on the target once, between its copy and the checksum comparison.
  let corrupted = false;
  s.targetControl.checksumRange = async (ref, epoch, offset, lengthBytes, regionBytes) => {
    if (!corrupted) {
      corrupted = true;
      await s.target.inner.write(11 * REGION + 100 * 512, Buffer.alloc(512, 0xee), false);
    }
    return controlOf(s.tgt.manager).checksumRange(ref, epoch, offset, lengthBytes, regionBytes);
  };
  const map = mapOf([10, 11, 12]);
  const result = await runRebuild(s.context(map));
  const copies = s.target.events.filter((e) => e.op === 'write').map((e) => e.offset / REGION);
  t.deepEqual(copies.sort((a, b) => a - b), [10, 11, 11, 12], 'region 11 was copied a second time');
  t.is(result.regionsVerified, 3);
  t.is(result.copiedBytes, 4 * REGION);
  t.is(result.doneBytes, 4 * REGION);
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef));
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');

  // A target that corrupts region 12 on every write never agrees.
  const s2 = await setup(t);
  await fillSource(s2);
  s2.target.mangleWrite = (offset, data) => {
    if (Math.floor(offset / REGION) !== 12) return data;
    const bad = Buffer.from(data);
    bad[0]! ^= 0xff;
    return bad;
  };
  const map2 = mapOf([10, 12]);
  const err = await t.throwsAsync(runRebuild(s2.context(map2)), { instanceOf: StorageError });
  t.is(err.code, Code.DATA_LOSS);
  t.is(err.message, 'replica rep-tgt still differs from its source in 1 regions after 3 rebuild rounds; it stays faulted: check its disk');
  t.deepEqual(s2.target.events.filter((e) => e.op === 'write' && e.offset === 12 * REGION).length, 3, 'three rounds of copies');
  t.true(map2.has(12) && !map2.has(10), 'the differing region stays set');
  t.deepEqual(s2.saved.at(-1), map2.toBuffer(), 'and persisted');
  t.is((await s2.targetControl.getReplicaStatus(targetRef)).state, 'rebuilding', 'not finished');
});

test('an error from the target rejects the rebuild with that error, without finishing it', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  s.target.failWrites = new StorageError(Code.UNAVAILABLE, 'node-b is unreachable');
  const err = await t.throwsAsync(runRebuild(s.context(mapOf([1, 2, 3]))), { instanceOf: StorageError });
  t.is(err.code, Code.UNAVAILABLE);
  t.is(err.message, 'node-b is unreachable');
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'rebuilding');
});

test('an already clean map verifies nothing and finishes', async (t) => {
  const s = await setup(t);
  const result = await runRebuild(s.context(new RegionMap(SIZE, REGION)));
  t.is(result.copiedBytes, 0);
  t.is(result.regionsVerified, 0);
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');
});

test('contiguous runs are cut at gaps and at the maximum length', (t) => {
  t.deepEqual(contiguousRuns([], 64), []);
  t.deepEqual(contiguousRuns([1, 2, 3, 7, 8, 10], 64), [[1, 3], [7, 2], [10, 1]]);
  t.deepEqual(contiguousRuns([0, 1, 2, 3, 4], 2), [[0, 2], [2, 2], [4, 1]]);
});
