/**
 * The node store: what lives on this node, in SQLite (better-sqlite3, WAL mode). Each
 * multi-row change is one transaction, so a kill -9 at any moment leaves either the old or
 * the new state. Calls are synchronous; they are short and local. Every call throws
 * StorageErrors only: SQLite's errors are translated at the database (sqlite-errors.ts),
 * e.g. a full disk is RESOURCE_EXHAUSTED and a taken key ALREADY_EXISTS.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { DeviceId, ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { MIGRATIONS, type Migration } from './migrations.js';
import { fromSqliteError, withStorageErrors } from './sqlite-errors.js';
import { toSnapshotCopy, type SnapshotCopyRecord, type SnapshotCopyRow } from './snapshot-copy-record.js';
import { STAGED_COLUMNS, stagedVolumeValues, toStagedVolume, type StagedVolumeRecord, type StagedVolumeRow } from './staged-volume-record.js';

export type VolumeState = 'creating' | 'ready' | 'deleting';
export type ReplicaState = 'in-sync' | 'rebuilding' | 'faulted';

export interface VolumeRecord {
  id: VolumeId;
  name: string;
  sizeBytes: number;
  state: VolumeState;
  epoch: number;
  /** Whether the volume should be served over NBD (restored after a restart). */
  exported: boolean;
  createdAt: string;
}

export interface ReplicaRecord {
  id: ReplicaId;
  volumeId: VolumeId;
  deviceId: DeviceId;
  state: ReplicaState;
  createdAt: string;
}

export interface SnapshotRecord {
  id: SnapshotId;
  volumeId: VolumeId;
  name: string;
  deviceId: DeviceId;
  sizeBytes: number;
  createdAt: string;
}

interface VolumeRow {
  id: string; name: string; size_bytes: number; state: VolumeState; epoch: number; exported: number; created_at: string;
}
interface ReplicaRow { id: string; volume_id: string; device_id: string; state: ReplicaState; created_at: string }
interface SnapshotRow { id: string; volume_id: string; name: string; device_id: string; size_bytes: number; created_at: string }

const toVolume = (r: VolumeRow): VolumeRecord => ({
  id: r.id as VolumeId, name: r.name, sizeBytes: r.size_bytes, state: r.state, epoch: r.epoch, exported: r.exported !== 0, createdAt: r.created_at,
});
const toReplica = (r: ReplicaRow): ReplicaRecord => ({
  id: r.id as ReplicaId, volumeId: r.volume_id as VolumeId, deviceId: r.device_id as DeviceId, state: r.state, createdAt: r.created_at,
});
const toSnapshot = (r: SnapshotRow): SnapshotRecord => ({
  id: r.id as SnapshotId, volumeId: r.volume_id as VolumeId, name: r.name, deviceId: r.device_id as DeviceId, sizeBytes: r.size_bytes, createdAt: r.created_at,
});

export class NodeStore {
  private readonly db: Database.Database;

  private constructor(db: Database.Database) {
    this.db = db;
  }

  /** Opens (creating if needed) the store at `path` and runs pending migrations. */
  static open(path: string, log: Logger, migrations: readonly Migration[] = MIGRATIONS): NodeStore {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    let db: Database.Database;
    try {
      db = withStorageErrors(new Database(path), 'node store');
    } catch (err) {
      const wrapped = fromSqliteError(err, 'node store');
      throw new StorageError(Code.UNAVAILABLE, `cannot open the node store at ${path}: ${(err as Error).message}`,
        { cause: err, details: wrapped instanceof StorageError ? wrapped.details : {} });
    }
    db.pragma('journal_mode = WAL');
    // FULL: a committed transaction survives power loss, not only a process crash.
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    const store = new NodeStore(db);
    store.migrate(migrations, log);
    return store;
  }

  private migrate(migrations: readonly Migration[], log: Logger): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    const newest = migrations.reduce((v, m) => Math.max(v, m.version), 0);
    if (current > newest) {
      throw new StorageError(Code.FAILED_PRECONDITION,
        `the node store has schema version ${current}, newer than this cairnd knows (${newest}): run a cairnd at least as new as the one that wrote it`);
    }
    for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
      if (m.version <= current) continue;
      try {
        this.db.transaction(() => {
          this.db.exec(m.sql);
          this.db.pragma(`user_version = ${m.version}`);
        })();
      } catch (err) {
        throw new StorageError(Code.INTERNAL, `node store migration ${m.version} (${m.description}) failed and was rolled back: ${(err as Error).message}`,
          { cause: err, details: err instanceof StorageError ? err.details : {} });
      }
      log.info({ version: m.version, description: m.description }, 'node store migrated');
    }
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // --- meta ---------------------------------------------------------------------------

  getMeta(key: string): string | undefined {
    const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return row?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  // --- volumes ------------------------------------------------------------------------

  /** Records a new volume and its replicas in one transaction. ALREADY_EXISTS on a taken name. */
  insertVolume(volume: VolumeRecord, replicas: ReplicaRecord[]): void {
    const insertVolume = this.db.prepare(
      'INSERT INTO volumes (id, name, size_bytes, state, epoch, exported, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)');
    const insertReplica = this.db.prepare('INSERT INTO replicas (id, volume_id, device_id, state, created_at) VALUES (?, ?, ?, ?, ?)');
    try {
      this.db.transaction(() => {
        insertVolume.run(volume.id, volume.name, volume.sizeBytes, volume.state, volume.epoch, volume.exported ? 1 : 0, volume.createdAt);
        for (const r of replicas) insertReplica.run(r.id, r.volumeId, r.deviceId, r.state, r.createdAt);
      })();
    } catch (err) {
      if (isStorageError(err, Code.ALREADY_EXISTS)) {
        throw new StorageError(Code.ALREADY_EXISTS, `volume "${volume.name}" already exists`, { cause: err, details: { ...(err as StorageError).details, volume: volume.name } });
      }
      throw err;
    }
  }

  getVolume(id: VolumeId): VolumeRecord | undefined {
    const row = this.db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as VolumeRow | undefined;
    return row && toVolume(row);
  }

  getVolumeByName(name: string): VolumeRecord | undefined {
    const row = this.db.prepare('SELECT * FROM volumes WHERE name = ?').get(name) as VolumeRow | undefined;
    return row && toVolume(row);
  }

  listVolumes(): VolumeRecord[] {
    return (this.db.prepare('SELECT * FROM volumes ORDER BY name').all() as VolumeRow[]).map(toVolume);
  }

  /** Updates the given fields of a volume. NOT_FOUND when it does not exist. */
  updateVolume(id: VolumeId, patch: Partial<Pick<VolumeRecord, 'sizeBytes' | 'state' | 'epoch' | 'exported'>>): VolumeRecord {
    const current = this.getVolume(id);
    if (!current) throw new StorageError(Code.NOT_FOUND, `volume ${id} not found`, { details: { volumeId: id } });
    const next = { ...current, ...patch };
    this.db.prepare('UPDATE volumes SET size_bytes = ?, state = ?, epoch = ?, exported = ? WHERE id = ?')
      .run(next.sizeBytes, next.state, next.epoch, next.exported ? 1 : 0, id);
    return next;
  }

  /** Removes the volume with its replicas and snapshots. Not an error when it does not exist. */
  deleteVolume(id: VolumeId): void {
    this.db.prepare('DELETE FROM volumes WHERE id = ?').run(id);
  }

  // --- replicas -----------------------------------------------------------------------

  listReplicas(volumeId?: VolumeId): ReplicaRecord[] {
    const rows = volumeId === undefined
      ? this.db.prepare('SELECT * FROM replicas ORDER BY created_at').all()
      : this.db.prepare('SELECT * FROM replicas WHERE volume_id = ? ORDER BY created_at').all(volumeId);
    return (rows as ReplicaRow[]).map(toReplica);
  }

  setReplicaState(id: ReplicaId, state: ReplicaState): void {
    const info = this.db.prepare('UPDATE replicas SET state = ? WHERE id = ?').run(state, id);
    if (info.changes === 0) throw new StorageError(Code.NOT_FOUND, `replica ${id} not found`, { details: { replica: id } });
  }

  // --- snapshots ----------------------------------------------------------------------

  insertSnapshot(snapshot: SnapshotRecord): void {
    try {
      this.db.prepare('INSERT INTO snapshots (id, volume_id, name, device_id, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(snapshot.id, snapshot.volumeId, snapshot.name, snapshot.deviceId, snapshot.sizeBytes, snapshot.createdAt);
    } catch (err) {
      if (isStorageError(err, Code.ALREADY_EXISTS)) {
        throw new StorageError(Code.ALREADY_EXISTS, `snapshot "${snapshot.name}" already exists`, { cause: err, details: { ...(err as StorageError).details, snapshot: snapshot.name } });
      }
      throw err;
    }
  }

  listSnapshots(volumeId?: VolumeId): SnapshotRecord[] {
    const rows = volumeId === undefined
      ? this.db.prepare('SELECT * FROM snapshots ORDER BY created_at').all()
      : this.db.prepare('SELECT * FROM snapshots WHERE volume_id = ? ORDER BY created_at').all(volumeId);
    return (rows as SnapshotRow[]).map(toSnapshot);
  }

  deleteSnapshot(id: SnapshotId): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  /** Every device id the store knows of (replicas and snapshots): what the pool must keep. */
  knownDeviceIds(): Set<DeviceId> {
    const rows = this.db.prepare('SELECT device_id FROM replicas UNION SELECT device_id FROM snapshots').all() as { device_id: string }[];
    return new Set(rows.map((r) => r.device_id as DeviceId));
  }

  // --- hosted replicas (the replica service, src/replica/) ----------------------------
  // Rows of `replicas` seen with their epoch and rebuild progress (migration 2). Replicas
  // of volumes recorded in the cluster store have no row in `volumes`.

  getHostedReplica(id: ReplicaId): HostedReplicaRecord | undefined {
    const row = this.db.prepare('SELECT * FROM replicas WHERE id = ?').get(id) as HostedReplicaRow | undefined;
    return row && toHostedReplica(row);
  }

  listHostedReplicas(): HostedReplicaRecord[] {
    return (this.db.prepare('SELECT * FROM replicas ORDER BY created_at, id').all() as HostedReplicaRow[]).map(toHostedReplica);
  }

  /** Records a replica this node hosts. ALREADY_EXISTS when its id or device id is taken. */
  insertHostedReplica(r: HostedReplicaRecord): void {
    try {
      this.db.prepare(`INSERT INTO replicas (id, volume_id, device_id, state, created_at, epoch, rebuild_done_bytes, rebuild_total_bytes, rebuild_checkpoint)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(r.id, r.volumeId, r.deviceId, r.state, r.createdAt, r.epoch, r.rebuild.doneBytes, r.rebuild.totalBytes, r.rebuild.checkpoint);
    } catch (err) {
      if (isStorageError(err, Code.ALREADY_EXISTS)) {
        throw new StorageError(Code.ALREADY_EXISTS, `replica ${r.id} or its device ${r.deviceId} already exists`, { cause: err, details: { ...(err as StorageError).details, replica: r.id } });
      }
      throw err;
    }
  }

  /** Forgets a hosted replica. Not an error when it does not exist. */
  deleteHostedReplica(id: ReplicaId): void {
    this.db.prepare('DELETE FROM replicas WHERE id = ?').run(id);
  }

  /**
   * Raises the replica's epoch to `epoch` when that is newer and returns the stored one.
   * Durable when it returns (synchronous=FULL). NOT_FOUND when there is no such replica.
   */
  raiseReplicaEpoch(id: ReplicaId, epoch: number): number {
    const raise = this.db.prepare('UPDATE replicas SET epoch = ? WHERE id = ? AND epoch < ?');
    const read = this.db.prepare('SELECT epoch FROM replicas WHERE id = ?');
    const stored = this.db.transaction(() => {
      raise.run(epoch, id, epoch);
      return read.get(id) as { epoch: number } | undefined;
    })();
    if (!stored) throw new StorageError(Code.NOT_FOUND, `replica ${id} not found`, { details: { replica: id } });
    return stored.epoch;
  }

  /** Sets a hosted replica's state and rebuild progress together. NOT_FOUND when absent. */
  setReplicaRebuild(id: ReplicaId, state: ReplicaState, rebuild: RebuildProgressRecord): void {
    const info = this.db.prepare('UPDATE replicas SET state = ?, rebuild_done_bytes = ?, rebuild_total_bytes = ?, rebuild_checkpoint = ? WHERE id = ?')
      .run(state, rebuild.doneBytes, rebuild.totalBytes, rebuild.checkpoint, id);
    if (info.changes === 0) throw new StorageError(Code.NOT_FOUND, `replica ${id} not found`, { details: { replica: id } });
  }

  // --- dirty-region maps (the volume engine, src/engine/; migration 3) ----------------
  // One bitmap per out-of-sync replica of a volume whose engine runs on this node.

  loadDirtyMap(volumeId: VolumeId, replicaId: ReplicaId): DirtyMapRecord | undefined {
    const row = this.db.prepare('SELECT region_bytes, bits FROM dirty_maps WHERE volume_id = ? AND replica_id = ?').get(volumeId, replicaId) as
      { region_bytes: number; bits: Buffer } | undefined;
    return row && { regionBytes: row.region_bytes, bits: row.bits };
  }

  /** Replaces the map. Durable when it returns (synchronous=FULL). */
  saveDirtyMap(volumeId: VolumeId, replicaId: ReplicaId, regionBytes: number, bits: Buffer): void {
    this.db.prepare(`INSERT INTO dirty_maps (volume_id, replica_id, region_bytes, bits, updated_at) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT(volume_id, replica_id) DO UPDATE SET region_bytes = excluded.region_bytes, bits = excluded.bits, updated_at = excluded.updated_at`)
      .run(volumeId, replicaId, regionBytes, bits, new Date().toISOString());
  }

  /** Not an error when there is no such map. */
  deleteDirtyMap(volumeId: VolumeId, replicaId: ReplicaId): void {
    this.db.prepare('DELETE FROM dirty_maps WHERE volume_id = ? AND replica_id = ?').run(volumeId, replicaId);
  }

  /** The maps under the names the engine expects (`DirtyMapStore` of src/engine/engine-types.ts). */
  dirtyMaps(): NodeDirtyMaps {
    return new NodeDirtyMaps(this);
  }

  // --- snapshot copies (the replica service, src/replica/; migration 5) ---------------
  // A copy's pool device id is its snapshot id; the pool keeps those of listSnapshotCopies
  // besides knownDeviceIds (which stays readable on stores before migration 5).

  getSnapshotCopy(id: SnapshotId): SnapshotCopyRecord | undefined {
    const row = this.db.prepare('SELECT * FROM snapshot_copies WHERE snapshot_id = ?').get(id) as SnapshotCopyRow | undefined;
    return row && toSnapshotCopy(row);
  }

  listSnapshotCopies(): SnapshotCopyRecord[] {
    return (this.db.prepare('SELECT * FROM snapshot_copies ORDER BY created_at, snapshot_id').all() as SnapshotCopyRow[]).map(toSnapshotCopy);
  }

  /** Records a copy. ALREADY_EXISTS when the snapshot id is taken. Durable when it returns. */
  insertSnapshotCopy(c: SnapshotCopyRecord): void {
    try {
      this.db.prepare('INSERT INTO snapshot_copies (snapshot_id, volume_id, replica_id, size_bytes, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(c.snapshotId, c.volumeId, c.replicaId, c.sizeBytes, c.createdAt);
    } catch (err) {
      if (isStorageError(err, Code.ALREADY_EXISTS)) {
        throw new StorageError(Code.ALREADY_EXISTS, `snapshot ${c.snapshotId} already has a copy on this node`, { cause: err, details: { ...(err as StorageError).details, snapshot: c.snapshotId } });
      }
      throw err;
    }
  }

  /** Forgets a copy. Not an error when there is none. */
  deleteSnapshotCopy(id: SnapshotId): void {
    this.db.prepare('DELETE FROM snapshot_copies WHERE snapshot_id = ?').run(id);
  }

  // --- staged volumes (CSI staging, src/engine/stager.ts; migration 4) ----------------

  getStagedVolume(volume: string): StagedVolumeRecord | undefined {
    const row = this.db.prepare('SELECT * FROM staged_volumes WHERE volume = ?').get(volume) as StagedVolumeRow | undefined;
    return row && toStagedVolume(row);
  }

  listStagedVolumes(): StagedVolumeRecord[] {
    return (this.db.prepare('SELECT * FROM staged_volumes ORDER BY volume').all() as StagedVolumeRow[]).map(toStagedVolume);
  }

  /** Writes the record (replacing the volume's previous one). Durable when it returns. */
  putStagedVolume(record: StagedVolumeRecord): void {
    this.db.prepare(`INSERT OR REPLACE INTO staged_volumes (${STAGED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(...stagedVolumeValues(record));
  }

  /** Not an error when there is no such record. */
  deleteStagedVolume(volume: string): void {
    this.db.prepare('DELETE FROM staged_volumes WHERE volume = ?').run(volume);
  }
}

export interface DirtyMapRecord {
  regionBytes: number;
  /** Bit r is byte r >> 3, mask 1 << (r & 7). */
  bits: Buffer;
}

/**
 * The node store's dirty-region maps as the engine's `DirtyMapStore`. It matches that
 * interface structurally: the store layer does not import from the engine layer above it.
 */
export class NodeDirtyMaps {
  constructor(private readonly store: NodeStore) {}

  load(volumeId: VolumeId, replicaId: ReplicaId): DirtyMapRecord | undefined {
    return this.store.loadDirtyMap(volumeId, replicaId);
  }

  save(volumeId: VolumeId, replicaId: ReplicaId, regionBytes: number, bits: Buffer): void {
    this.store.saveDirtyMap(volumeId, replicaId, regionBytes, bits);
  }

  delete(volumeId: VolumeId, replicaId: ReplicaId): void {
    this.store.deleteDirtyMap(volumeId, replicaId);
  }
}

// --- hosted replicas: records ---------------------------------------------------------

export interface RebuildProgressRecord {
  doneBytes: number;
  totalBytes: number;
  /** Opaque to the store: what the rebuilding engine needs to resume. */
  checkpoint: Buffer;
}

export interface HostedReplicaRecord extends ReplicaRecord {
  /** The newest volume epoch this replica has seen. */
  epoch: number;
  rebuild: RebuildProgressRecord;
}

interface HostedReplicaRow extends ReplicaRow {
  epoch: number; rebuild_done_bytes: number; rebuild_total_bytes: number; rebuild_checkpoint: Buffer | null;
}

const toHostedReplica = (r: HostedReplicaRow): HostedReplicaRecord => ({
  ...toReplica(r),
  epoch: r.epoch,
  rebuild: { doneBytes: r.rebuild_done_bytes, totalBytes: r.rebuild_total_bytes, checkpoint: r.rebuild_checkpoint ?? Buffer.alloc(0) },
});
