/**
 * Snapshot copies on the replica side (issue 12): the replica manager over a real file pool
 * and node store takes, lists, deletes copies and makes replicas from them; fenced by epoch,
 * idempotent, kept across a restart, by replica deletion and by the orphan collector; and
 * the five RPCs over a real replica server.
 */
import test from 'ava';
import { Code } from '../../src/common/errors.js';
import type { DeviceId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ReplicaCollector } from '../../src/cluster/replica-gc.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { connect } from '../../src/replica/replica-client.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { codeOf, filled, replicaFixture, runBatch, startReplicaNode, type ReplicaFixture } from '../helpers/replica-fixture.js';
import { makeTestPki } from '../helpers/tls.js';

const MiB = 1 << 20;
const SIZE = 4 * MiB;
const ref = { replicaId: 'rep-a', volumeId: 'vol-a' };
const SNAP = 'snap-1' as SnapshotId;

async function write(fx: ReplicaFixture, epoch: number, offset: number, byte: number): Promise<void> {
  const replica = await fx.manager.open(ref);
  const [r] = await runBatch(replica, epoch, [{ seq: 1, op: 'write', offset, lengthBytes: 4096, data: filled(4096, byte) }]);
  if (r!.error) throw r!.error;
}

async function readDevice(fx: ReplicaFixture, id: string, offset: number, length: number): Promise<Buffer> {
  const dev = await fx.pool.open(id as DeviceId);
  try {
    return await dev.read(offset, length);
  } finally {
    await dev.close();
  }
}

async function withReplica(t: import('ava').ExecutionContext, epoch = 1): Promise<ReplicaFixture> {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, SIZE, epoch, true);
  return fx;
}

test('a copy holds the replica as it was at the call; later writes stay out of it; listed with its replica and volume', async (t) => {
  const fx = await withReplica(t);
  await write(fx, 1, 0, 0xa1);
  const copy = await fx.manager.snapshot(ref, 1, SNAP);
  t.like(copy, { snapshotId: SNAP, volumeId: 'vol-a', replicaId: 'rep-a', sizeBytes: SIZE });
  await write(fx, 1, 0, 0xb2);
  t.deepEqual(await readDevice(fx, SNAP, 0, 4096), filled(4096, 0xa1), 'the copy has the write before the call, not the one after');
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => [c.snapshotId, c.replicaId, c.volumeId]), [[SNAP, 'rep-a', 'vol-a']]);
});

test('cutOnly: the answer comes at the cut, marked filling; writes after it stay out of the copy; the call again waits for the whole copy, which is then recorded', async (t) => {
  const fx = await withReplica(t);
  await write(fx, 1, 0, 0xa1);
  const cut = await fx.manager.snapshot(ref, 1, SNAP, { cutOnly: true });
  t.like(cut, { snapshotId: SNAP, replicaId: 'rep-a', volumeId: 'vol-a', sizeBytes: SIZE, filling: true });
  await write(fx, 1, 0, 0xb2);
  const whole = await fx.manager.snapshot(ref, 1, SNAP);
  t.like(whole, { snapshotId: SNAP, replicaId: 'rep-a', sizeBytes: SIZE });
  t.falsy(whole.filling);
  t.deepEqual(await readDevice(fx, SNAP, 0, 4096), filled(4096, 0xa1), 'the copy has the write before the cut, not the one after');
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId), [SNAP]);
  t.like(await fx.manager.snapshot(ref, 1, SNAP, { cutOnly: true }), { snapshotId: SNAP, sizeBytes: SIZE }, 'a copy already whole is answered as it is');
});

test('idempotent: the same call answers the same copy; the id taken by another replica is ALREADY_EXISTS; a replica id as snapshot id is refused', async (t) => {
  const fx = await withReplica(t);
  await fx.manager.create({ replicaId: 'rep-b', volumeId: 'vol-b' }, SIZE, 1, true);
  const first = await fx.manager.snapshot(ref, 1, SNAP);
  await write(fx, 1, 0, 0xcc);
  const again = await fx.manager.snapshot(ref, 1, SNAP);
  t.is(again.createdAt, first.createdAt);
  t.deepEqual(await readDevice(fx, SNAP, 0, 4096), filled(4096, 0), 'the repeated call did not retake the copy');
  t.is(await codeOf(fx.manager.snapshot({ replicaId: 'rep-b', volumeId: 'vol-b' }, 1, SNAP)), Code.ALREADY_EXISTS);
  t.is(await codeOf(fx.manager.snapshot(ref, 1, 'rep-b')), Code.ALREADY_EXISTS, 'a snapshot id may not name a replica device');
  t.deepEqual(await readDevice(fx, 'rep-b', 0, 512), filled(512, 0), 'replica rep-b is untouched');
  t.is(await codeOf(fx.manager.snapshot({ replicaId: 'rep-x', volumeId: 'vol-a' }, 1, 'snap-2')), Code.NOT_FOUND);
});

test('fenced: an older epoch is FAILED_PRECONDITION and leaves no copy; a newer one is recorded first', async (t) => {
  const fx = await withReplica(t, 3);
  t.is(await codeOf(fx.manager.snapshot(ref, 2, SNAP)), Code.FAILED_PRECONDITION);
  t.deepEqual(await fx.manager.listSnapshotCopies(), []);
  t.is(await codeOf(fx.pool.inspect(SNAP as string as DeviceId)), Code.NOT_FOUND, 'no device');
  await fx.manager.snapshot(ref, 5, SNAP);
  t.is((await fx.manager.status(ref)).epoch, 5);
  t.is(await codeOf(fx.manager.snapshot(ref, 4, 'snap-2')), Code.FAILED_PRECONDITION);
});

test('a restart still lists the copies; deleting the replica keeps them; deleting a copy removes device and record, twice is fine', async (t) => {
  const fx = await withReplica(t);
  await write(fx, 1, MiB, 0x5a);
  await fx.manager.snapshot(ref, 1, SNAP);
  await fx.reopen();
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId), [SNAP], 'known after a restart');
  await fx.manager.delete(ref, 1);
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId), [SNAP], 'kept when its replica is deleted');
  t.deepEqual(await readDevice(fx, SNAP, MiB, 4096), filled(4096, 0x5a));
  await fx.manager.deleteSnapshotCopy(SNAP);
  await fx.manager.deleteSnapshotCopy(SNAP);
  t.deepEqual(await fx.manager.listSnapshotCopies(), []);
  t.is(await codeOf(fx.pool.inspect(SNAP as string as DeviceId)), Code.NOT_FOUND);
});

test('deleteSnapshotCopy never deletes a replica device named by mistake', async (t) => {
  const fx = await withReplica(t);
  await write(fx, 1, 0, 0x77);
  await fx.manager.deleteSnapshotCopy('rep-a');
  t.deepEqual(await readDevice(fx, 'rep-a', 0, 4096), filled(4096, 0x77));
});

test('createReplicaFromSnapshot: the copy\'s bytes, grown to a larger size, in sync at the epoch; idempotent; smaller is OUT_OF_RANGE; no copy is NOT_FOUND', async (t) => {
  const fx = await withReplica(t);
  await write(fx, 1, 2 * MiB, 0x42);
  await fx.manager.snapshot(ref, 1, SNAP);
  const newRef = { replicaId: 'rep-new', volumeId: 'vol-new' };
  const made = await fx.manager.createReplicaFromSnapshot(newRef, 2 * SIZE, 7, SNAP);
  t.like(made, { replicaId: 'rep-new', volumeId: 'vol-new', sizeBytes: 2 * SIZE, epoch: 7, state: 'in-sync' });
  const replica = await fx.manager.open(newRef);
  const [r] = await runBatch(replica, 7, [{ seq: 1, op: 'read', offset: 2 * MiB, lengthBytes: 4096 }, { seq: 2, op: 'read', offset: SIZE, lengthBytes: 4096 }]);
  t.deepEqual(r!.data, filled(4096, 0x42));
  const again = await fx.manager.createReplicaFromSnapshot(newRef, 2 * SIZE, 7, SNAP);
  t.is(again.createdAt, made.createdAt);
  t.is(await codeOf(fx.manager.createReplicaFromSnapshot({ replicaId: 'rep-small', volumeId: 'vol-s' }, SIZE / 2, 1, SNAP)), Code.OUT_OF_RANGE);
  t.is(await codeOf(fx.manager.createReplicaFromSnapshot({ replicaId: 'rep-none', volumeId: 'vol-s' }, SIZE, 1, 'snap-none')), Code.NOT_FOUND);
  t.deepEqual((await fx.manager.list()).map((x) => x.replicaId).sort(), ['rep-a', 'rep-new'], 'the refused calls left no replica');
  await fx.manager.delete(newRef, 7);
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId), [SNAP], 'the child\'s deletion keeps the copy');
});

test('the orphan collector deletes an unlisted replica but keeps its snapshot copy', async (t) => {
  const fx = await withReplica(t);
  await write(fx, 1, 0, 0x99);
  await fx.manager.snapshot(ref, 1, SNAP);
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const gc = new ReplicaCollector({ store, manager: fx.manager, graceMs: 1000, log: silentLogger() });
  const t0 = Date.now() + 10_000;
  await gc.pass(t0);
  t.deepEqual(await gc.pass(t0 + 2000), ['rep-a' as ReplicaId]);
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId), [SNAP]);
  t.deepEqual(await readDevice(fx, SNAP, 0, 4096), filled(4096, 0x99));
});

test('over gRPC: SnapshotReplica, ListSnapshotCopies, CreateReplicaFromSnapshot, DeleteSnapshotCopy; SnapshotVolume without an engine is FAILED_PRECONDITION', async (t) => {
  const pki = await makeTestPki();
  t.teardown(() => pki.cleanup());
  const n = await startReplicaNode(await pki.node('node-b'));
  t.teardown(() => n.cleanup());
  const client = connect(n.address, await pki.node('engine-a'), { log: silentLogger(), deadlineMs: 10_000 });
  t.teardown(() => client.close());
  await client.createReplica(ref, SIZE, 2, true);
  const cut = await client.snapshotReplica(ref, 2, SNAP, { cutOnly: true });
  t.like(cut, { snapshotId: SNAP, replicaId: 'rep-a', volumeId: 'vol-a', sizeBytes: SIZE, filling: true });
  const copy = await client.snapshotReplica(ref, 2, SNAP);
  t.like(copy, { snapshotId: SNAP, replicaId: 'rep-a', volumeId: 'vol-a', sizeBytes: SIZE });
  t.falsy(copy.filling);
  t.is(await codeOf(client.snapshotReplica(ref, 1, 'snap-old' as SnapshotId)), Code.FAILED_PRECONDITION);
  t.deepEqual((await client.listSnapshotCopies()).map((c) => c.snapshotId), [SNAP]);
  const made = await client.createReplicaFromSnapshot({ replicaId: 'rep-c', volumeId: 'vol-c' }, SIZE, 1, SNAP);
  t.like(made, { replicaId: 'rep-c', state: 'in-sync', sizeBytes: SIZE });
  t.is(await codeOf(client.createReplicaFromSnapshot({ replicaId: 'rep-d', volumeId: 'vol-d' }, SIZE, 1, 'snap-none' as SnapshotId)), Code.NOT_FOUND);
  await client.deleteSnapshotCopy(SNAP);
  t.deepEqual(await client.listSnapshotCopies(), []);
  t.is(await codeOf(client.snapshotVolume('vol-a' as VolumeId, SNAP, 1000)), Code.FAILED_PRECONDITION);
});
