/**
 * ReplicaManager.resize, the replica half of online volume expansion: grows the device,
 * idempotent, never shrinks, fenced by epoch, RESOURCE_EXHAUSTED when the pool cannot hold
 * it; an open replica accepts I/O past its old end only once it grew.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { FileBackend } from '../../src/pool/file-backend.js';
import { ReplicaManager } from '../../src/replica/replica-manager.js';
import { NodeStore } from '../../src/store/node-store.js';
import { codeOf, filled, replicaFixture, runBatch } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const ref = { replicaId: 'rep-a', volumeId: 'vol-a' };

test('a replica grows, keeps its data, takes writes at the new end (only after growing) and reads zeros there', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, 4 * MiB, 1, true);
  const replica = await fx.manager.open(ref);
  t.deepEqual(await runBatch(replica, 1, [{ seq: 1, op: 'write', offset: 0, lengthBytes: 0, data: filled(4096, 1) }]), [{ seq: 1 }]);
  const before = await runBatch(replica, 1, [{ seq: 2, op: 'write', offset: 4 * MiB, lengthBytes: 0, data: filled(4096, 2) }]);
  t.is(before[0]!.error?.code, Code.OUT_OF_RANGE);

  const status = await fx.manager.resize(ref, 8 * MiB, 1);
  t.is(status.sizeBytes, 8 * MiB);
  t.deepEqual(await runBatch(replica, 1, [{ seq: 3, op: 'write', offset: 8 * MiB - 4096, lengthBytes: 0, data: filled(4096, 3) }]), [{ seq: 3 }]);
  const reads = await runBatch(replica, 1, [
    { seq: 4, op: 'read', offset: 0, lengthBytes: 4096 },
    { seq: 5, op: 'read', offset: 8 * MiB - 4096, lengthBytes: 4096 },
    { seq: 6, op: 'read', offset: 5 * MiB, lengthBytes: 4096 },
  ]);
  t.deepEqual(reads.map((r) => r.data), [filled(4096, 1), filled(4096, 3), filled(4096, 0)]);

  t.is((await fx.manager.resize(ref, 8 * MiB, 1)).sizeBytes, 8 * MiB, 'the same size again is not an error');
  t.is(await codeOf(fx.manager.resize(ref, 4 * MiB, 1)), Code.OUT_OF_RANGE, 'replicas never shrink');
  t.is(await codeOf(fx.manager.resize(ref, 8 * MiB + 100, 1)), Code.INVALID_ARGUMENT, 'not a multiple of 512');
  t.is(await codeOf(fx.manager.resize({ ...ref, volumeId: 'vol-other' }, 16 * MiB, 1)), Code.NOT_FOUND);
  t.is(await codeOf(fx.manager.resize({ ...ref, replicaId: 'rep-none' }, 16 * MiB, 1)), Code.NOT_FOUND);
});

test('a resize at a stale epoch is fenced; a newer epoch is adopted', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, 4 * MiB, 3, true);
  t.is(await codeOf(fx.manager.resize(ref, 8 * MiB, 2)), Code.FAILED_PRECONDITION);
  t.is((await fx.manager.status(ref)).sizeBytes, 4 * MiB, 'nothing grew');
  const s = await fx.manager.resize(ref, 8 * MiB, 4);
  t.deepEqual([s.sizeBytes, s.epoch], [8 * MiB, 4]);
});

test('a pool without room for the larger size is RESOURCE_EXHAUSTED and the replica stays as it was', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-resize-'));
  const log = silentLogger();
  const pool = await FileBackend.open({ dir: join(dir, 'pool'), log, capacityBytes: 16 * MiB });
  const store = NodeStore.open(join(dir, 'node.db'), log);
  const manager = new ReplicaManager({ pool, store, log });
  t.teardown(async () => {
    await manager.close();
    store.close();
    await pool.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await manager.create(ref, 8 * MiB, 1, true);
  t.is(await codeOf(manager.resize(ref, 32 * MiB, 1)), Code.RESOURCE_EXHAUSTED);
  t.is((await manager.status(ref)).sizeBytes, 8 * MiB);
  t.is((await manager.resize(ref, 16 * MiB, 1)).sizeBytes, 16 * MiB, 'up to the capacity it fits');
});
