import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { createHash } from 'node:crypto';
import { zeroDigest } from '../../src/replica/checksum.js';
import { filled, replicaFixture, runBatch } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const ref = { replicaId: 'rep-a', volumeId: 'vol-1' };

test('writes, reads, flush, trim and write-zeroes in one batch', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, 4 * MiB, 1, true);
  const replica = await fx.manager.open(ref);
  const writes = await runBatch(replica, 1, [
    { seq: 1, op: 'write', offset: 0, lengthBytes: 0, data: filled(8192, 0xab) },
    { seq: 2, op: 'write', offset: MiB, lengthBytes: 0, data: filled(4096, 0xcd), fua: true },
    { seq: 3, op: 'write', offset: 2 * MiB, lengthBytes: 0, data: filled(4096, 0xef) },
    { seq: 4, op: 'flush', offset: 0, lengthBytes: 0 },
  ]);
  t.deepEqual(writes.map((r) => r.error), [undefined, undefined, undefined, undefined]);
  await runBatch(replica, 1, [
    { seq: 5, op: 'trim', offset: 4096, lengthBytes: 4096 },
    { seq: 6, op: 'write-zeroes', offset: 2 * MiB, lengthBytes: 4096 },
  ]);
  const reads = await runBatch(replica, 1, [
    { seq: 7, op: 'read', offset: 0, lengthBytes: 8192 },
    { seq: 8, op: 'read', offset: MiB, lengthBytes: 4096 },
    { seq: 9, op: 'read', offset: 2 * MiB, lengthBytes: 4096 },
  ]);
  t.deepEqual(reads[0]!.data, Buffer.concat([filled(4096, 0xab), filled(4096, 0)]));
  t.deepEqual(reads[1]!.data, filled(4096, 0xcd));
  t.deepEqual(reads[2]!.data, filled(4096, 0));
});

test('every request is bounds-checked; the good ones of the batch still run', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, MiB, 0, true);
  const replica = await fx.manager.open(ref);
  const results = await runBatch(replica, 0, [
    { seq: 1, op: 'write', offset: MiB - 512, lengthBytes: 0, data: filled(1024, 1) },
    { seq: 2, op: 'read', offset: MiB, lengthBytes: 1 },
    { seq: 3, op: 'trim', offset: -4096, lengthBytes: 4096 },
    { seq: 4, op: 'read', offset: 0, lengthBytes: 0 },
    { seq: 5, op: 'unspecified', offset: 0, lengthBytes: 0 },
    { seq: 6, op: 'write', offset: 0, lengthBytes: 0 },
    { seq: 7, op: 'write', offset: MiB - 512, lengthBytes: 0, data: filled(512, 7) },
  ]);
  t.deepEqual(results.map((r) => r.error?.code), [
    Code.OUT_OF_RANGE, Code.OUT_OF_RANGE, Code.OUT_OF_RANGE, Code.INVALID_ARGUMENT, Code.INVALID_ARGUMENT, Code.INVALID_ARGUMENT, undefined,
  ]);
  t.regex(results[0]!.error!.message, /range \[1048064, 1049088\) is outside replica rep-a of 1048576 bytes/);
  const [read] = await runBatch(replica, 0, [{ seq: 8, op: 'read', offset: MiB - 512, lengthBytes: 512 }]);
  t.deepEqual(read!.data, filled(512, 7));
});

test('a batch over the request or byte limit is refused whole with RESOURCE_EXHAUSTED', async (t) => {
  const fx = await replicaFixture({ maxBatchRequests: 4, maxBatchBytes: 16384 });
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, MiB, 0, true);
  const replica = await fx.manager.open(ref);
  const many = await runBatch(replica, 0, [1, 2, 3, 4, 5].map((seq) => ({ seq, op: 'flush' as const, offset: 0, lengthBytes: 0 })));
  t.true(many.every((r) => r.error?.code === Code.RESOURCE_EXHAUSTED));
  t.regex(many[0]!.error!.message, /batch of 5 requests .* exceeds the limit of 4 requests and 16384 bytes per batch/);
  const big = await runBatch(replica, 0, [
    { seq: 1, op: 'write', offset: 0, lengthBytes: 0, data: filled(8192, 1) },
    { seq: 2, op: 'read', offset: 0, lengthBytes: 8193 },
  ]);
  t.deepEqual(big.map((r) => r.error?.code), [Code.RESOURCE_EXHAUSTED, Code.RESOURCE_EXHAUSTED]);
  const [read] = await runBatch(replica, 0, [{ seq: 3, op: 'read', offset: 0, lengthBytes: 8192 }]);
  t.deepEqual(read!.data, filled(8192, 0), 'nothing of the refused batch was written');
});

test('epoch fencing: older refused, newer adopted durably and remembered across a restart', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, MiB, 2, true);
  let replica = await fx.manager.open(ref);
  const [stale] = await runBatch(replica, 1, [{ seq: 1, op: 'write', offset: 0, lengthBytes: 0, data: filled(4096, 1) }]);
  t.is(stale!.error?.code, Code.FAILED_PRECONDITION);
  t.regex(stale!.error!.message, /stale epoch 1 < 2/);
  const [newer] = await runBatch(replica, 5, [{ seq: 2, op: 'write', offset: 0, lengthBytes: 0, data: filled(4096, 5) }]);
  t.is(newer!.error, undefined);
  t.is(fx.store.getHostedReplica('rep-a' as never)!.epoch, 5, 'the store holds the newer epoch');

  await fx.reopen();
  replica = await fx.manager.open(ref);
  t.is(replica.epoch, 5);
  const [again] = await runBatch(replica, 4, [{ seq: 3, op: 'write', offset: 0, lengthBytes: 0, data: filled(4096, 4) }]);
  t.regex(again!.error!.message, /stale epoch 4 < 5/);
  const [read] = await runBatch(replica, 5, [{ seq: 4, op: 'read', offset: 0, lengthBytes: 4096 }]);
  t.deepEqual(read!.data, filled(4096, 5));
  // Control calls are fenced too.
  const err = await t.throwsAsync(fx.manager.finishRebuild(ref, 3));
  t.is((err as StorageError).code, Code.FAILED_PRECONDITION);
  t.is((await t.throwsAsync(fx.manager.delete(ref, 4)) as StorageError).code, Code.FAILED_PRECONDITION);
  t.is((await fx.manager.status(ref)).epoch, 5);
});

test('checksums: a hole hashes as zeros; identical writes give identical digests', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const a = { replicaId: 'rep-a', volumeId: 'vol-1' };
  const b = { replicaId: 'rep-b', volumeId: 'vol-1' };
  await fx.manager.create(a, 4 * MiB, 0, true);
  await fx.manager.create(b, 4 * MiB, 0, true);
  await runBatch(await fx.manager.open(a), 0, [
    { seq: 1, op: 'write', offset: 0, lengthBytes: 0, data: filled(MiB, 0) },
    { seq: 2, op: 'write', offset: 2 * MiB + 12345, lengthBytes: 0, data: filled(1000, 9) },
  ]);
  await runBatch(await fx.manager.open(b), 0, [{ seq: 1, op: 'write', offset: 2 * MiB + 12345, lengthBytes: 0, data: filled(1000, 9) }]);
  const sa = await fx.manager.checksumRange(a, 0, 0, 4 * MiB, MiB);
  const sb = await fx.manager.checksumRange(b, 0, 0, 4 * MiB, MiB);
  t.is(sa.algorithm, 'sha256');
  t.is(sa.digests.length, 4);
  t.deepEqual(sa.digests, sb.digests);
  t.deepEqual(sa.digests[0], zeroDigest(MiB), 'written zeros and a hole agree');
  t.deepEqual(sb.digests[0], zeroDigest(MiB));
  t.notDeepEqual(sa.digests[2], zeroDigest(MiB));
  const region2 = Buffer.alloc(MiB);
  filled(1000, 9).copy(region2, 12345);
  t.deepEqual(sa.digests[2], createHash('sha256').update(region2).digest(), 'the digest is SHA-256 of the region\'s bytes');
  const tail = await fx.manager.checksumRange(a, 0, 3 * MiB, MiB - 4096, 4096 * 100);
  t.is(tail.digests.length, 3, 'the last region is shorter');
  t.deepEqual(tail.digests[2], zeroDigest(MiB - 4096 - 2 * 4096 * 100));
  t.is((await t.throwsAsync(fx.manager.checksumRange(a, 0, 3 * MiB, 2 * MiB, MiB)) as StorageError).code, Code.OUT_OF_RANGE);
  t.is((await t.throwsAsync(fx.manager.checksumRange(a, 0, 0, MiB, 1000)) as StorageError).code, Code.INVALID_ARGUMENT);
});

test('create and delete are idempotent; other volume, size and unknown ids are refused', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const first = await fx.manager.create(ref, MiB, 1, true);
  t.deepEqual(await fx.manager.create(ref, MiB, 1, true), first);
  t.is((await t.throwsAsync(fx.manager.create(ref, 2 * MiB, 1, true)) as StorageError).code, Code.ALREADY_EXISTS);
  t.is((await t.throwsAsync(fx.manager.create({ replicaId: 'rep-a', volumeId: 'vol-2' }, MiB, 1, true)) as StorageError).code, Code.ALREADY_EXISTS);
  t.is((await t.throwsAsync(fx.manager.open({ replicaId: 'rep-a', volumeId: 'vol-2' })) as StorageError).code, Code.NOT_FOUND);
  t.is((await t.throwsAsync(fx.manager.open({ replicaId: 'rep-zz', volumeId: 'vol-1' })) as StorageError).code, Code.NOT_FOUND);
  t.is((await t.throwsAsync(fx.manager.open({ replicaId: '../etc', volumeId: 'vol-1' })) as StorageError).code, Code.INVALID_ARGUMENT);
  const replica = await fx.manager.open(ref);
  await fx.manager.delete(ref, 1);
  await fx.manager.delete(ref, 1);
  const [gone] = await runBatch(replica, 1, [{ seq: 1, op: 'flush', offset: 0, lengthBytes: 0 }]);
  t.is(gone!.error?.code, Code.NOT_FOUND);
  t.deepEqual(await fx.pool.list(), []);
  t.deepEqual(await fx.manager.list(), []);
});

test('rebuild: write-only until finished, progress persists and resumes', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const created = await fx.manager.create(ref, MiB, 1, false);
  t.is(created.state, 'rebuilding');
  await fx.manager.startRebuild(ref, 1, MiB, false);
  const replica = await fx.manager.open(ref);
  const results = await runBatch(replica, 1, [
    { seq: 1, op: 'write', offset: 0, lengthBytes: 0, data: filled(4096, 3) },
    { seq: 2, op: 'read', offset: 0, lengthBytes: 4096 },
  ]);
  t.is(results[0]!.error, undefined);
  t.is(results[1]!.error?.code, Code.FAILED_PRECONDITION);
  await fx.manager.updateRebuildProgress(ref, 1, { doneBytes: 4096, totalBytes: MiB, checkpoint: Buffer.from('at 4096') });

  await fx.reopen();
  const resumed = await fx.manager.startRebuild(ref, 2, MiB, false);
  t.deepEqual(resumed.rebuild, { doneBytes: 4096, totalBytes: MiB, checkpoint: Buffer.from('at 4096') });
  t.is(resumed.epoch, 2);
  const done = await fx.manager.finishRebuild(ref, 2);
  t.is(done.state, 'in-sync');
  t.is(done.rebuild, undefined);
  const [read] = await runBatch(await fx.manager.open(ref), 2, [{ seq: 3, op: 'read', offset: 0, lengthBytes: 4096 }]);
  t.deepEqual(read!.data, filled(4096, 3));
  t.is((await t.throwsAsync(fx.manager.updateRebuildProgress(ref, 2, { doneBytes: 1, totalBytes: 1, checkpoint: Buffer.alloc(0) })) as StorageError).code,
    Code.FAILED_PRECONDITION);
});
