/**
 * Every SQLite error leaves the node store as a StorageError whose code comes from the
 * SQLite error code (kept in details.sqliteCode): a full filesystem is RESOURCE_EXHAUSTED,
 * a taken key ALREADY_EXISTS, a row that breaks a CHECK FAILED_PRECONDITION.
 */
import test from 'ava';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Code, StorageError } from '../../src/common/errors.js';
import type { DeviceId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { NodeStore } from '../../src/store/node-store.js';
import { loopFsUnavailable, makeLoopFs } from '../helpers/loop-fs.js';

const ext4Missing = await loopFsUnavailable('ext4');

function expectStorageError(t: import('ava').ExecutionContext, fn: () => unknown, code: Code, sqliteCode: RegExp): void {
  const err = t.throws(fn);
  t.true(err instanceof StorageError, `a StorageError, not ${err?.constructor.name}: ${err?.message}`);
  t.is((err as StorageError).code, code, `${Code[(err as StorageError).code]}: ${err?.message}`);
  t.regex(String((err as StorageError).details.sqliteCode), sqliteCode);
}

test('constraint errors: a taken id is ALREADY_EXISTS, a broken CHECK FAILED_PRECONDITION', (t) => {
  const store = NodeStore.open(':memory:', silentLogger());
  t.teardown(() => store.close());
  const now = new Date().toISOString();
  const replica = {
    id: 'rep-1' as ReplicaId, volumeId: 'vol-1' as VolumeId, deviceId: 'dev-1' as DeviceId, state: 'in-sync' as const, createdAt: now, epoch: 1,
    rebuild: { doneBytes: 0, totalBytes: 0, checkpoint: Buffer.alloc(0) },
  };
  store.insertHostedReplica(replica);
  expectStorageError(t, () => store.insertHostedReplica(replica), Code.ALREADY_EXISTS, /^SQLITE_CONSTRAINT/);
  // A row the schema's CHECK refuses (a size of 0): a broken rule, not a name clash.
  const volume = { id: 'vol-2' as VolumeId, name: 'v2', sizeBytes: 0, state: 'ready' as const, epoch: 1, exported: false, createdAt: now };
  expectStorageError(t, () => store.insertVolume(volume, []), Code.FAILED_PRECONDITION, /^SQLITE_CONSTRAINT_CHECK$/);
});

test('a full filesystem under the node store: RESOURCE_EXHAUSTED, not a raw SqliteError', async (t) => {
  if (ext4Missing) {
    if (process.env.CI === 'true') t.fail(ext4Missing);
    else t.pass(`skipped: ${ext4Missing}`);
    return;
  }
  const fs = await makeLoopFs('ext4', 32 * 1024 * 1024);
  t.teardown(() => fs.dispose());
  const store = NodeStore.open(join(fs.mountPoint, 'node.db'), silentLogger());
  t.teardown(() => store.close());
  // Fill the filesystem.
  const filler = await open(join(fs.mountPoint, 'filler'), 'w');
  const chunk = Buffer.alloc(1 << 20, 1);
  try {
    for (;;) await filler.write(chunk);
  } catch (err) {
    t.is((err as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    await filler.close();
  }
  const bits = Buffer.alloc(4 << 20, 0xff);
  expectStorageError(t, () => {
    for (let i = 0; i < 16; i++) store.saveDirtyMap('vol-1' as VolumeId, `rep-${i}` as ReplicaId, 1 << 20, bits);
  }, Code.RESOURCE_EXHAUSTED, /^SQLITE_FULL/);
});
