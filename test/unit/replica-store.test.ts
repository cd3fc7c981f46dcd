import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError } from '../../src/common/errors.js';
import type { DeviceId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { MIGRATIONS } from '../../src/store/migrations.js';
import { NodeStore } from '../../src/store/node-store.js';

const log = silentLogger();
const now = new Date().toISOString();

test('migration 2 keeps existing replicas, and deleting a local volume still deletes them', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-store-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'node.db');
  const v1 = NodeStore.open(path, log, MIGRATIONS.filter((m) => m.version === 1));
  v1.insertVolume({ id: 'vol-1' as VolumeId, name: 'one', sizeBytes: 4096, state: 'ready', epoch: 0, exported: false, createdAt: now },
    [{ id: 'rep-1' as ReplicaId, volumeId: 'vol-1' as VolumeId, deviceId: 'rep-1' as DeviceId, state: 'in-sync', createdAt: now }]);
  v1.close();

  const store = NodeStore.open(path, log, MIGRATIONS.filter((m) => m.version <= 2));
  t.teardown(() => store.close());
  t.is(store.schemaVersion(), 2);
  t.like(store.getHostedReplica('rep-1' as ReplicaId), { id: 'rep-1', volumeId: 'vol-1', state: 'in-sync', epoch: 0 });
  // A replica of a volume recorded elsewhere (the cluster store) needs no local volume row.
  store.insertHostedReplica({
    id: 'rep-2' as ReplicaId, volumeId: 'vol-remote' as VolumeId, deviceId: 'rep-2' as DeviceId, state: 'rebuilding', createdAt: now,
    epoch: 4, rebuild: { doneBytes: 1, totalBytes: 2, checkpoint: Buffer.from([7]) },
  });
  t.is(store.raiseReplicaEpoch('rep-2' as ReplicaId, 3), 4, 'an older epoch does not lower it');
  t.is(store.raiseReplicaEpoch('rep-2' as ReplicaId, 6), 6);
  t.is((t.throws(() => store.raiseReplicaEpoch('rep-none' as ReplicaId, 1)) as StorageError).code, Code.NOT_FOUND);
  t.is((t.throws(() => store.insertHostedReplica({ ...store.getHostedReplica('rep-2' as ReplicaId)! })) as StorageError).code, Code.ALREADY_EXISTS);
  store.deleteVolume('vol-1' as VolumeId);
  t.deepEqual(store.listHostedReplicas().map((r) => [r.id, r.epoch, r.rebuild.checkpoint]), [['rep-2', 6, Buffer.from([7])]]);
  t.deepEqual([...store.knownDeviceIds()], ['rep-2']);
});
