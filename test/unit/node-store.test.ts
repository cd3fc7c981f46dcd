import test from 'ava';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError } from '../../src/common/errors.js';
import type { DeviceId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { MIGRATIONS } from '../../src/store/migrations.js';
import type { DirtyMapStore } from '../../src/engine/engine-types.js';
import { NodeStore, type ReplicaRecord, type VolumeRecord } from '../../src/store/node-store.js';

const log = silentLogger();

function tempDb(): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-store-'));
  return { path: join(dir, 'node.db'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function volume(name: string, id = `vol-${name}`): { v: VolumeRecord; r: ReplicaRecord } {
  const v: VolumeRecord = { id: id as VolumeId, name, sizeBytes: 1 << 20, state: 'ready', epoch: 0, exported: false, createdAt: new Date().toISOString() };
  const r: ReplicaRecord = { id: `rep-${name}` as ReplicaId, volumeId: v.id, deviceId: `dev-${name}` as DeviceId, state: 'in-sync', createdAt: v.createdAt };
  return { v, r };
}

test('a new store is at the newest schema version and in WAL mode', (t) => {
  const { path, cleanup } = tempDb();
  t.teardown(cleanup);
  const store = NodeStore.open(path, log);
  t.is(store.schemaVersion(), Math.max(...MIGRATIONS.map((m) => m.version)));
  store.close();
  const db = new Database(path);
  t.is(db.pragma('journal_mode', { simple: true }), 'wal');
  db.close();
});

test('volumes and replicas persist across reopen', (t) => {
  const { path, cleanup } = tempDb();
  t.teardown(cleanup);
  const store = NodeStore.open(path, log);
  const { v, r } = volume('data');
  store.insertVolume(v, [r]);
  store.updateVolume(v.id, { exported: true, epoch: 3 });
  store.close();

  const again = NodeStore.open(path, log);
  t.teardown(() => again.close());
  const got = again.getVolumeByName('data');
  t.deepEqual(got, { ...v, exported: true, epoch: 3 });
  t.deepEqual(again.listReplicas(v.id), [r]);
  t.deepEqual([...again.knownDeviceIds()], [r.deviceId]);
});

test('a taken volume name is ALREADY_EXISTS and leaves no partial rows', (t) => {
  const store = NodeStore.open(':memory:', log);
  t.teardown(() => store.close());
  const a = volume('same', 'vol-a');
  const b = volume('same', 'vol-b');
  b.r.deviceId = 'dev-other' as DeviceId;
  b.r.id = 'rep-other' as ReplicaId;
  store.insertVolume(a.v, [a.r]);
  const err = t.throws(() => store.insertVolume(b.v, [b.r]), { instanceOf: StorageError });
  t.is(err?.code, Code.ALREADY_EXISTS);
  t.is(store.listVolumes().length, 1);
  t.is(store.listReplicas().length, 1, 'the second volume\'s replica row was rolled back with it');
});

test('deleting a volume row removes its snapshots but keeps its hosted replicas (migration 3)', (t) => {
  const store = NodeStore.open(':memory:', log);
  t.teardown(() => store.close());
  const { v, r } = volume('gone');
  store.insertVolume(v, [r]);
  store.insertSnapshot({ id: 'snap-1' as SnapshotId, volumeId: v.id, name: 's1', deviceId: 'dev-s1' as DeviceId, sizeBytes: v.sizeBytes, createdAt: v.createdAt });
  store.deleteVolume(v.id);
  t.is(store.getVolume(v.id), undefined);
  t.deepEqual(store.listReplicas(), [r], 'the replica serves the volume from the cluster store now: it stays');
  t.deepEqual(store.listSnapshots(), []);
  t.notThrows(() => store.deleteVolume(v.id), 'deleting again is not an error');
});

test('dirty maps: saved, replaced, loaded after a reopen, deleted; one per (volume, replica)', (t) => {
  const { path, cleanup } = tempDb();
  t.teardown(cleanup);
  const vol = 'vol-1' as VolumeId;
  const a = 'rep-a' as ReplicaId;
  let store = NodeStore.open(path, log);
  const maps: DirtyMapStore = store.dirtyMaps();
  t.is(maps.load(vol, a), undefined);
  maps.save(vol, a, 1 << 20, Buffer.from([0b101, 0]));
  maps.save(vol, a, 2 << 20, Buffer.from([0b111]));
  maps.save(vol, 'rep-b' as ReplicaId, 1 << 20, Buffer.from([1]));
  maps.save('vol-2' as VolumeId, a, 1 << 20, Buffer.from([2]));
  store.close();

  store = NodeStore.open(path, log);
  t.teardown(() => store.close());
  t.deepEqual(store.loadDirtyMap(vol, a), { regionBytes: 2 << 20, bits: Buffer.from([0b111]) }, 'the second save replaced the first');
  t.deepEqual(store.dirtyMaps().load('vol-2' as VolumeId, a), { regionBytes: 1 << 20, bits: Buffer.from([2]) });
  store.dirtyMaps().delete(vol, a);
  t.is(store.loadDirtyMap(vol, a), undefined);
  t.deepEqual(store.loadDirtyMap(vol, 'rep-b' as ReplicaId)?.bits, Buffer.from([1]), 'other maps stay');
  t.notThrows(() => store.deleteDirtyMap(vol, a), 'deleting again is not an error');
});

test('migration 3 on a version-2 store keeps hosted replicas when a legacy volume row is deleted', (t) => {
  const { path, cleanup } = tempDb();
  t.teardown(cleanup);
  const v2 = NodeStore.open(path, log, MIGRATIONS.filter((m) => m.version <= 2));
  const { v, r } = volume('legacy');
  v2.insertVolume(v, [r]);
  v2.close();
  const store = NodeStore.open(path, log);
  t.teardown(() => store.close());
  t.true(store.schemaVersion() >= 3);
  store.deleteVolume(v.id);
  t.deepEqual(store.listHostedReplicas().map((h) => h.id), [r.id]);
});

test('updating a missing volume is NOT_FOUND', (t) => {
  const store = NodeStore.open(':memory:', log);
  t.teardown(() => store.close());
  const err = t.throws(() => store.updateVolume('vol-nope' as VolumeId, { state: 'ready' }), { instanceOf: StorageError });
  t.is(err?.code, Code.NOT_FOUND);
});

test('a store written by a newer cairnd is refused with a clear error', (t) => {
  const { path, cleanup } = tempDb();
  t.teardown(cleanup);
  const future = [...MIGRATIONS, { version: 99, description: 'from the future', sql: 'CREATE TABLE future (x INTEGER);' }];
  NodeStore.open(path, log, future).close();
  const err = t.throws(() => NodeStore.open(path, log), { instanceOf: StorageError });
  t.is(err?.code, Code.FAILED_PRECONDITION);
  t.regex(err?.message ?? '', /schema version 99/);
});

test('a failing migration leaves the store at the previous version', (t) => {
  const { path, cleanup } = tempDb();
  t.teardown(cleanup);
  NodeStore.open(path, log).close();
  const newest = Math.max(...MIGRATIONS.map((m) => m.version));
  const broken = [...MIGRATIONS, { version: newest + 1, description: 'broken', sql: 'CREATE TABLE ok (x INTEGER); THIS IS NOT SQL;' }];
  const err = t.throws(() => NodeStore.open(path, log, broken), { instanceOf: StorageError });
  t.regex(err?.message ?? '', new RegExp(`migration ${newest + 1} \\(broken\\) failed and was rolled back`));
  const store = NodeStore.open(path, log);
  t.teardown(() => store.close());
  t.is(store.schemaVersion(), newest);
});

test('meta values round-trip and overwrite', (t) => {
  const store = NodeStore.open(':memory:', log);
  t.teardown(() => store.close());
  t.is(store.getMeta('node-id'), undefined);
  store.setMeta('node-id', 'a');
  store.setMeta('node-id', 'b');
  t.is(store.getMeta('node-id'), 'b');
});
