/**
 * Rebuild copies only allocated data (issue 11): the file backend's allocated ranges
 * (SEEK_DATA / SEEK_HOLE on real sparse files), and rebuilds between real file-backed
 * replicas that read only the source's data, discard the rest on the target in large
 * requests, and copy everything when the source does not know the call.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { Code, StorageError } from '../../src/common/errors.js';
import { mergeSmallHoles } from '../../src/engine/rebuild-extents.js';
import { runRebuild, type RebuildResult } from '../../src/engine/rebuild.js';
import { RegionMap } from '../../src/engine/region-map.js';
import { EPOCH, controlOf, sameBytes, setup, sourceRef, targetRef, type Setup } from '../helpers/rebuild-fixture.js';
import { codeOf, replicaFixture, runBatch } from '../helpers/replica-fixture.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const REGION = MiB;
const SIZE = 16 * MiB;

test('the file backend reports the data extents of a sparse replica, at most maxExtents at a time', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const ref = { replicaId: 'rep-sparse', volumeId: 'vol-sparse' };
  await fx.manager.create(ref, 8 * MiB, 1, true);
  const replica = await fx.manager.open(ref);
  await runBatch(replica, 1, [
    { seq: 1, op: 'write', offset: MiB, lengthBytes: 0, data: randomBytes(64 * KiB) },
    { seq: 2, op: 'write', offset: 3 * MiB + 4 * KiB, lengthBytes: 0, data: randomBytes(8 * KiB) },
  ]);
  t.deepEqual(await fx.manager.allocatedRanges(ref, 1, 0, 8 * MiB), {
    extents: [{ offset: MiB, lengthBytes: 64 * KiB }, { offset: 3 * MiB + 4 * KiB, lengthBytes: 8 * KiB }], endOffset: 8 * MiB,
  });

  // A write accepted just before the call is seen, though not yet complete when it is made.
  const pending = runBatch(replica, 1, [{ seq: 3, op: 'write', offset: 8 * MiB - 4 * KiB, lengthBytes: 0, data: randomBytes(4 * KiB) }]);
  const first = await fx.manager.allocatedRanges(ref, 1, 0, 8 * MiB, 2);
  await pending;
  t.deepEqual(first, { extents: [{ offset: MiB, lengthBytes: 64 * KiB }, { offset: 3 * MiB + 4 * KiB, lengthBytes: 8 * KiB }], endOffset: 3 * MiB + 12 * KiB },
    'cut short at the extent limit: endOffset says where to go on');
  t.deepEqual(await fx.manager.allocatedRanges(ref, 1, first.endOffset, 8 * MiB - first.endOffset, 2), {
    extents: [{ offset: 8 * MiB - 4 * KiB, lengthBytes: 4 * KiB }], endOffset: 8 * MiB,
  });
  t.deepEqual(await fx.manager.allocatedRanges(ref, 1, MiB + 32 * KiB, MiB), { extents: [{ offset: MiB + 32 * KiB, lengthBytes: 32 * KiB }], endOffset: 2 * MiB + 32 * KiB },
    'extents are clipped to the range asked for');
  t.deepEqual(await fx.manager.allocatedRanges(ref, 1, 4 * MiB, 2 * MiB), { extents: [], endOffset: 6 * MiB }, 'a hole has no extents');

  // A trim makes a hole again.
  await runBatch(replica, 1, [{ seq: 4, op: 'trim', offset: MiB, lengthBytes: 64 * KiB }]);
  t.deepEqual((await fx.manager.allocatedRanges(ref, 1, 0, 2 * MiB)).extents, []);

  t.is(await codeOf(fx.manager.allocatedRanges(ref, 1, 7 * MiB, 2 * MiB)), Code.OUT_OF_RANGE);
  await fx.manager.allocatedRanges(ref, 2, 0, MiB);
  t.is(await codeOf(fx.manager.allocatedRanges(ref, 1, 0, MiB)), Code.FAILED_PRECONDITION, 'fenced by epoch');
});

test('a device that cannot tell where its data is (the dm pool) reports the whole range as data', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const open = fx.pool.open.bind(fx.pool);
  fx.pool.open = async (id) => {
    const device = await open(id);
    return { ...device, id: device.id, sizeBytes: device.sizeBytes, read: device.read.bind(device), write: device.write.bind(device), flush: device.flush.bind(device),
      trim: device.trim.bind(device), writeZeroes: device.writeZeroes.bind(device), close: device.close.bind(device), allocatedRanges: undefined };
  };
  const ref = { replicaId: 'rep-dm', volumeId: 'vol-dm' };
  await fx.manager.create(ref, 4 * MiB, 1, true);
  t.deepEqual(await fx.manager.allocatedRanges(ref, 1, MiB, 2 * MiB), { extents: [{ offset: MiB, lengthBytes: 2 * MiB }], endOffset: 3 * MiB });
});

/** Writes random data in [offset, offset + lengthBytes) of the source (and flushes). */
async function writeSource(s: Setup, pieces: ReadonlyArray<[number, number]>): Promise<void> {
  for (const [offset, lengthBytes] of pieces) await s.source.inner.write(offset, randomBytes(lengthBytes), false);
  await s.source.inner.flush();
}

/** Random bytes over the whole target: the stale data a rebuild must overwrite or discard. */
async function staleTarget(s: Setup): Promise<void> {
  await s.target.inner.write(0, randomBytes(SIZE), false);
  await s.target.inner.flush();
}

/** Half of every 1 MiB region, alternately its first and second half: 8 MiB of 16. */
const HALF: Array<[number, number]> = Array.from({ length: 16 }, (_, r) => [r * MiB + (r % 2) * 512 * KiB, 512 * KiB]);

async function rebuildAll(t: ExecutionContext, s: Setup, extra: Parameters<Setup['context']>[1] = {}): Promise<RebuildResult> {
  const result = await runRebuild(s.context(RegionMap.full(SIZE, REGION), extra));
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef), 'target byte-identical to the source', REGION);
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');
  return result;
}

/** The target's data extents equal the source's: it stays sparse where the source has holes. */
async function sameAllocation(t: ExecutionContext, s: Setup): Promise<void> {
  const src = await s.src.manager.allocatedRanges(sourceRef, EPOCH, 0, SIZE);
  const tgt = await s.tgt.manager.allocatedRanges(targetRef, EPOCH, 0, SIZE);
  t.deepEqual(tgt, src, 'the target holds data exactly where the source does');
}

test('a half-written volume copies half the bytes of a full one; holes are discarded on the target', async (t) => {
  const half = await setup(t, SIZE, REGION);
  await writeSource(half, HALF);
  await staleTarget(half);
  const h = await rebuildAll(t, half);
  t.like(h, { doneBytes: SIZE, copiedBytes: 8 * MiB, discardedBytes: 8 * MiB, zeroedBytes: 0 });
  const read = half.source.events.filter((e) => e.op === 'read').reduce((n, e) => n + e.lengthBytes, 0);
  t.is(read, 8 * MiB, 'only the source\'s data was read');
  await sameAllocation(t, half);

  const full = await setup(t, SIZE, REGION);
  await writeSource(full, [[0, SIZE]]);
  await staleTarget(full);
  const f = await rebuildAll(t, full);
  t.like(f, { doneBytes: SIZE, copiedBytes: SIZE, discardedBytes: 0 });
  t.is(h.copiedBytes * 2, f.copiedBytes, 'half the data, half the bytes copied');
});

test('the empty part of a volume is discarded in one request per hole, not per chunk or region', async (t) => {
  const s = await setup(t, SIZE, REGION);
  await writeSource(s, [[0, 4 * KiB], [15 * MiB, 4 * KiB]]);
  await staleTarget(s);
  const result = await rebuildAll(t, s);
  const zeroes = s.target.events.filter((e) => e.op === 'write-zeroes').map(({ offset, lengthBytes }) => ({ offset, lengthBytes }));
  t.deepEqual(zeroes, [{ offset: 4 * KiB, lengthBytes: 15 * MiB - 4 * KiB }, { offset: 15 * MiB + 4 * KiB, lengthBytes: MiB - 4 * KiB }]);
  t.like(result, { copiedBytes: 8 * KiB, discardedBytes: SIZE - 8 * KiB });
  await sameAllocation(t, s);
  t.true((await s.targetControl.getReplicaStatus(targetRef)).allocatedBytes < MiB, 'the target gave back its stale blocks');
});

test('a source that answers a few extents at a time is asked again from where it stopped', async (t) => {
  const s = await setup(t, SIZE, REGION);
  await writeSource(s, HALF);
  await staleTarget(s);
  const base = controlOf(s.src.manager);
  let calls = 0;
  s.sourceControl = { ...base, allocatedRanges: (ref, epoch, offset, lengthBytes) => (calls++, base.allocatedRanges(ref, epoch, offset, lengthBytes, 2)) };
  const result = await rebuildAll(t, s);
  t.like(result, { copiedBytes: 8 * MiB, discardedBytes: 8 * MiB });
  t.true(calls >= 4, `asked ${calls} times`);
  await sameAllocation(t, s);
});

test('a source that does not know AllocatedRanges (UNIMPLEMENTED) has every byte copied, and is asked once', async (t) => {
  const s = await setup(t, SIZE, REGION);
  await writeSource(s, HALF);
  await staleTarget(s);
  let calls = 0;
  s.sourceControl = {
    ...controlOf(s.src.manager),
    allocatedRanges: () => {
      calls++;
      return Promise.reject(new StorageError(Code.UNIMPLEMENTED, 'unknown method AllocatedRanges'));
    },
  };
  // Runs of 4 MiB, one at a time: four runs, one question.
  const result = await rebuildAll(t, s, { runMaxBytes: 4 * MiB, concurrency: 1 });
  t.like(result, { doneBytes: SIZE, copiedBytes: SIZE, discardedBytes: 0 });
  t.is(calls, 1);
  const read = s.source.events.filter((e) => e.op === 'read').reduce((n, e) => n + e.lengthBytes, 0);
  t.is(read, SIZE, 'every byte was read');
});

test('holes shorter than the minimum are copied as data', (t) => {
  t.deepEqual(mergeSmallHoles([], 64), []);
  t.deepEqual(mergeSmallHoles([{ offset: 0, lengthBytes: 10 }, { offset: 50, lengthBytes: 10 }, { offset: 200, lengthBytes: 5 }], 64),
    [{ offset: 0, lengthBytes: 60 }, { offset: 200, lengthBytes: 5 }]);
});
