/**
 * The replicas this node hosts (no gRPC here): create, delete, status, checksums and the
 * rebuild marks, each fenced by epoch, plus the `Replica` objects that serve I/O.
 *
 * A replica is recorded in the node store before its device is made and forgotten after
 * its device is gone, so a crash in between leaves a record that the same call, repeated,
 * completes. Control calls on one replica run one after another (a per-replica lock);
 * calls on different replicas run concurrently.
 */
import { Code, StorageError, staleEpochError } from '../common/errors.js';
import { asDeviceId, type ReplicaId, type VolumeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { AllocatedRanges, PoolBackend } from '../pool/backend.js';
import type { HostedReplicaRecord, NodeStore, RebuildProgressRecord, ReplicaState } from '../store/node-store.js';
import { CHECKSUM_ALGORITHM, checkRegions, checksumRegions } from './checksum.js';
import { DEFAULT_REPLICA_LIMITS, type ReplicaLimits } from './io-types.js';
import { Replica } from './replica.js';
import { MAX_VOLUME_ID_LENGTH, NO_PROGRESS, checkReplicaSize, wholeBytes, type ReplicaRefInput, type ReplicaStatusView } from './replica-refs.js';
import { SnapshotCopies, type SnapshotCallOptions, type SnapshotCopyView } from './snapshot-copies.js';

export type { ReplicaRefInput, ReplicaStatusView } from './replica-refs.js';
export type { SnapshotCallOptions, SnapshotCopyView } from './snapshot-copies.js';

export interface ChecksumRangeResult {
  algorithm: string;
  offset: number;
  regionBytes: number;
  digests: Buffer[];
}

export interface ReplicaManagerOptions {
  pool: PoolBackend;
  store: NodeStore;
  log: Logger;
  limits?: Partial<ReplicaLimits>;
}

export const MAX_CHECKPOINT_BYTES = 64 << 10;
/** At most this many extents per allocatedRanges answer (about 40 KiB on the wire). */
export const MAX_ALLOCATED_EXTENTS = 2048;

export class ReplicaManager {
  readonly limits: ReplicaLimits;
  private readonly replicas = new Map<ReplicaId, Promise<Replica>>();
  private readonly locks = new KeyedLock();
  private readonly copies: SnapshotCopies;
  /** Replicas being deleted: no new I/O opens them. */
  private readonly deleting = new Set<ReplicaId>();
  private closed = false;

  constructor(private readonly opts: ReplicaManagerOptions) {
    this.limits = { ...DEFAULT_REPLICA_LIMITS, ...opts.limits };
    this.copies = new SnapshotCopies({
      pool: opts.pool, store: opts.store, log: opts.log, locks: this.locks,
      parseRef: (ref) => this.parseRef(ref),
      notFound: (ref) => this.notFound(ref),
      fence: (record, epoch) => this.fence(record, epoch),
      openReplica: async (id) => this.replicas.get(id)?.catch(() => undefined),
      statusOf: (id) => this.statusOf(id),
      delete: (ref, epoch) => this.delete(ref, epoch),
    });
  }

  /** The replica for I/O. NOT_FOUND when this node has no such replica of that volume. */
  async open(ref: ReplicaRefInput, anyVolume = false): Promise<Replica> {
    if (this.closed) throw new StorageError(Code.UNAVAILABLE, 'the replica service is shutting down');
    const id = this.parseRef(ref, anyVolume);
    let loading = this.replicas.get(id);
    if (!loading && this.deleting.has(id)) throw this.notFound(ref);
    if (!loading) {
      loading = this.load(id);
      this.replicas.set(id, loading);
      loading.catch(() => this.replicas.get(id) === loading && this.replicas.delete(id));
    }
    const replica = await loading;
    if (!anyVolume && replica.volumeId !== ref.volumeId) throw this.notFound(ref);
    return replica;
  }

  async create(ref: ReplicaRefInput, sizeBytes: number, epoch: number, inSync: boolean): Promise<ReplicaStatusView> {
    const id = this.parseRef(ref);
    checkReplicaSize(id, sizeBytes);
    return this.locks.run(id, async () => {
      const existing = this.opts.store.getHostedReplica(id);
      if (existing && existing.volumeId !== ref.volumeId) {
        throw new StorageError(Code.ALREADY_EXISTS, `replica ${id} already exists for volume ${existing.volumeId}, not ${ref.volumeId}`, { details: { replica: id } });
      }
      if (existing) {
        await this.fence(existing, epoch);
      } else {
        wholeBytes(epoch, 'epoch');
        this.opts.store.insertHostedReplica({
          id, volumeId: ref.volumeId as VolumeId, deviceId: asDeviceId(id), state: inSync ? 'in-sync' : 'rebuilding',
          createdAt: new Date().toISOString(), epoch, rebuild: NO_PROGRESS,
        });
      }
      try {
        await this.opts.pool.create(asDeviceId(id), sizeBytes);
      } catch (err) {
        if (!existing) this.opts.store.deleteHostedReplica(id);
        throw err;
      }
      if (!existing) this.opts.log.info({ replica: id, volumeId: ref.volumeId, sizeBytes, epoch, inSync }, 'replica created');
      return this.statusOf(id);
    });
  }

  /**
   * Grows the replica's device to `sizeBytes` (online volume expansion): fenced like every
   * change, idempotent (a replica already that size answers its status), never shrinking
   * (OUT_OF_RANGE). The pool refuses a size it cannot provision with RESOURCE_EXHAUSTED
   * (its ENOSPC or thin-pool overcommit), and the replica stays as it was. The open replica
   * accepts I/O up to the new end only once the device has it.
   */
  async resize(ref: ReplicaRefInput, sizeBytes: number, epoch: number): Promise<ReplicaStatusView> {
    const id = this.parseRef(ref);
    checkReplicaSize(id, sizeBytes);
    return this.locks.run(id, async () => {
      const record = this.opts.store.getHostedReplica(id);
      if (!record || record.volumeId !== ref.volumeId) throw this.notFound(ref);
      await this.fence(record, epoch);
      const info = await this.opts.pool.inspect(record.deviceId);
      if (sizeBytes < info.sizeBytes) {
        throw new StorageError(Code.OUT_OF_RANGE, `replica ${id} is ${info.sizeBytes} bytes and cannot shrink to ${sizeBytes}: volumes only grow`,
          { details: { replica: id, sizeBytes: info.sizeBytes, requestedBytes: sizeBytes } });
      }
      if (sizeBytes > info.sizeBytes) {
        await this.opts.pool.resize(record.deviceId, sizeBytes);
        this.opts.log.info({ replica: id, volumeId: record.volumeId, sizeBytes, previousBytes: info.sizeBytes, epoch }, 'replica resized');
      }
      const loaded = this.replicas.get(id);
      const replica = loaded && await loaded.catch(() => undefined);
      replica?.grew(sizeBytes);
      return this.statusOf(id);
    });
  }

  /** Deletes the replica and its device. Not an error when this node has no such replica. */
  async delete(ref: ReplicaRefInput, epoch: number): Promise<void> {
    const id = this.parseRef(ref);
    await this.locks.run(id, async () => {
      const record = this.opts.store.getHostedReplica(id);
      if (!record) return;
      if (record.volumeId !== ref.volumeId) {
        this.opts.log.warn({ replica: id, volumeId: ref.volumeId, replicaVolumeId: record.volumeId }, 'replica delete names another volume; nothing deleted');
        return;
      }
      await this.fence(record, epoch);
      this.deleting.add(id);
      try {
        const loaded = this.replicas.get(id);
        this.replicas.delete(id);
        if (loaded) await loaded.then((r) => r.close(), () => undefined);
        await this.opts.pool.delete(record.deviceId);
        this.opts.store.deleteHostedReplica(id);
      } finally {
        this.deleting.delete(id);
      }
      this.opts.log.info({ replica: id, volumeId: record.volumeId, epoch }, 'replica deleted');
    });
  }

  /** NOT_FOUND when absent. `ref.volumeId` may be empty. */
  async status(ref: ReplicaRefInput): Promise<ReplicaStatusView> {
    const id = this.parseRef(ref, ref.volumeId === '');
    const record = this.opts.store.getHostedReplica(id);
    if (!record || (ref.volumeId !== '' && record.volumeId !== ref.volumeId)) throw this.notFound(ref);
    return this.statusOf(id);
  }

  /**
   * When replica `id` last admitted a request at a current epoch (ms since the epoch), or 0
   * when it is not open or never did. A pull's temporary replicas have no volume document;
   * this is what shows they are in use (cluster/replica-gc.ts).
   */
  async lastUsedAt(id: ReplicaId): Promise<number> {
    const loading = this.replicas.get(id);
    if (!loading) return 0;
    return loading.then((r) => r.lastAdmittedAt, () => 0);
  }

  async list(): Promise<ReplicaStatusView[]> {
    const out: ReplicaStatusView[] = [];
    for (const r of this.opts.store.listHostedReplicas()) {
      out.push(await this.statusOf(r.id).catch(() => this.view(r, 0, 0)));
    }
    return out;
  }

  async checksumRange(ref: ReplicaRefInput, epoch: number, offset: number, lengthBytes: number, regionBytes: number, signal?: AbortSignal): Promise<ChecksumRangeResult> {
    const replica = await this.open(ref);
    replica.admitEpoch(epoch);
    replica.checkRange(offset, lengthBytes, 'checksum');
    checkRegions(lengthBytes, regionBytes);
    await replica.writesSettled();
    const digests = await checksumRegions(await replica.openedDevice(), offset, lengthBytes, regionBytes, signal);
    return { algorithm: CHECKSUM_ALGORITHM, offset, regionBytes, digests };
  }

  /**
   * Which bytes of [offset, offset + lengthBytes) hold data, after every write accepted
   * before the call has completed (as checksumRange). At most `maxExtents` (capped at
   * MAX_ALLOCATED_EXTENTS) extents: when `endOffset` falls short of the range's end, ask
   * again from there. A device that cannot tell (the dm pool today) reports the whole
   * range as one extent.
   */
  async allocatedRanges(ref: ReplicaRefInput, epoch: number, offset: number, lengthBytes: number, maxExtents = MAX_ALLOCATED_EXTENTS): Promise<AllocatedRanges> {
    const replica = await this.open(ref);
    replica.admitEpoch(epoch);
    replica.checkRange(offset, lengthBytes, 'allocated ranges');
    const limit = Math.min(MAX_ALLOCATED_EXTENTS, Math.floor(maxExtents) || MAX_ALLOCATED_EXTENTS);
    if (!(limit >= 1)) throw new StorageError(Code.INVALID_ARGUMENT, `max extents must be at least 1, got ${maxExtents}`);
    await replica.writesSettled();
    const device = await replica.openedDevice();
    if (lengthBytes === 0) return { extents: [], endOffset: offset };
    if (!device.allocatedRanges) return { extents: [{ offset, lengthBytes }], endOffset: offset + lengthBytes };
    return device.allocatedRanges(offset, lengthBytes, limit);
  }

  /** Marks the replica rebuilding; keeps recorded progress unless `restart`. */
  startRebuild(ref: ReplicaRefInput, epoch: number, totalBytes: number, restart: boolean): Promise<ReplicaStatusView> {
    return this.changeRebuild(ref, epoch, (record) => {
      const resume = record.state === 'rebuilding' && !restart;
      const base = resume ? record.rebuild : NO_PROGRESS;
      return { state: 'rebuilding', rebuild: { ...base, totalBytes: wholeBytes(totalBytes, 'total bytes') || base.totalBytes } };
    }, 'replica rebuild started');
  }

  updateRebuildProgress(ref: ReplicaRefInput, epoch: number, progress: RebuildProgressRecord): Promise<ReplicaStatusView> {
    return this.changeRebuild(ref, epoch, (record) => {
      if (record.state !== 'rebuilding') {
        throw new StorageError(Code.FAILED_PRECONDITION, `replica ${record.id} is ${record.state}, not rebuilding: call StartRebuild first`, { details: { replica: record.id } });
      }
      if (progress.checkpoint.byteLength > MAX_CHECKPOINT_BYTES) {
        throw new StorageError(Code.INVALID_ARGUMENT, `rebuild checkpoint of ${progress.checkpoint.byteLength} bytes exceeds the limit of ${MAX_CHECKPOINT_BYTES}`);
      }
      return { state: 'rebuilding', rebuild: { doneBytes: wholeBytes(progress.doneBytes, 'done bytes'), totalBytes: wholeBytes(progress.totalBytes, 'total bytes'), checkpoint: progress.checkpoint } };
    });
  }

  /** Marks the replica in sync. Idempotent. */
  finishRebuild(ref: ReplicaRefInput, epoch: number): Promise<ReplicaStatusView> {
    return this.changeRebuild(ref, epoch, () => ({ state: 'in-sync', rebuild: NO_PROGRESS }), 'replica rebuild finished');
  }

  // --- snapshot copies (snapshot-copies.ts) ------------------------------------------------

  /** Copies the replica's device into this node's copy of `snapshotId` (SnapshotCopies.snapshot). */
  snapshot(ref: ReplicaRefInput, epoch: number, snapshotId: string, opts: SnapshotCallOptions = {}): Promise<SnapshotCopyView> {
    return this.copies.snapshot(ref, epoch, snapshotId, opts);
  }

  snapshotCopy(snapshotId: string): Promise<SnapshotCopyView | undefined> {
    return this.copies.snapshotCopy(snapshotId);
  }

  adoptSnapshotCopy(ref: ReplicaRefInput, epoch: number, snapshotId: string, volumeId: VolumeId): Promise<SnapshotCopyView> {
    return this.copies.adoptSnapshotCopy(ref, epoch, snapshotId, volumeId);
  }

  deleteSnapshotCopy(snapshotId: string): Promise<void> {
    return this.copies.deleteSnapshotCopy(snapshotId);
  }

  listSnapshotCopies(): Promise<SnapshotCopyView[]> {
    return this.copies.listSnapshotCopies();
  }

  createReplicaFromSnapshot(ref: ReplicaRefInput, sizeBytes: number, epoch: number, snapshotId: string): Promise<ReplicaStatusView> {
    return this.copies.createReplicaFromSnapshot(ref, sizeBytes, epoch, snapshotId);
  }

  /** Closes every open device (waiting for requests in flight). Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    const loaded = [...this.replicas.values()];
    this.replicas.clear();
    await Promise.allSettled(loaded.map((p) => p.then((r) => r.close())));
  }

  private async changeRebuild(ref: ReplicaRefInput, epoch: number,
    next: (record: HostedReplicaRecord) => { state: ReplicaState; rebuild: RebuildProgressRecord }, event?: string): Promise<ReplicaStatusView> {
    const id = this.parseRef(ref);
    return this.locks.run(id, async () => {
      const replica = await this.open(ref);
      replica.admitEpoch(epoch);
      const record = this.opts.store.getHostedReplica(id);
      if (!record) throw this.notFound(ref);
      const change = next(record);
      this.opts.store.setReplicaRebuild(id, change.state, change.rebuild);
      replica.state = change.state;
      if (event) this.opts.log.info({ replica: id, volumeId: record.volumeId, epoch, totalBytes: change.rebuild.totalBytes, doneBytes: change.rebuild.doneBytes }, event);
      return this.statusOf(id);
    });
  }

  /** Refuses a stale epoch and durably adopts a newer one, through the open replica if any. */
  private async fence(record: HostedReplicaRecord, epoch: number): Promise<void> {
    const loaded = this.replicas.get(record.id);
    const replica = loaded && await loaded.catch(() => undefined);
    if (replica && !replica.isClosed) return replica.admitEpoch(epoch);
    wholeBytes(epoch, 'epoch');
    if (epoch < record.epoch) {
      throw staleEpochError(record.id, record.volumeId, epoch, record.epoch);
    }
    if (epoch > record.epoch) this.opts.store.raiseReplicaEpoch(record.id, epoch);
  }

  private async load(id: ReplicaId): Promise<Replica> {
    const record = this.opts.store.getHostedReplica(id);
    if (!record) throw new StorageError(Code.NOT_FOUND, `replica ${id} not found on this node`, { details: { replica: id } });
    const info = await this.opts.pool.inspect(record.deviceId).catch((err: unknown) => {
      throw new StorageError(Code.NOT_FOUND, `replica ${id} has no device on this node (an interrupted create?): create it again`, { cause: err, details: { replica: id } });
    });
    return new Replica({
      record, sizeBytes: info.sizeBytes, store: this.opts.store, limits: this.limits,
      openDevice: () => this.opts.pool.open(record.deviceId), log: this.opts.log,
    });
  }

  private async statusOf(id: ReplicaId): Promise<ReplicaStatusView> {
    const record = this.opts.store.getHostedReplica(id);
    if (!record) throw new StorageError(Code.NOT_FOUND, `replica ${id} not found on this node`, { details: { replica: id } });
    const info = await this.opts.pool.inspect(record.deviceId);
    return this.view(record, info.sizeBytes, info.allocatedBytes);
  }

  private view(r: HostedReplicaRecord, sizeBytes: number, allocatedBytes: number): ReplicaStatusView {
    return {
      replicaId: r.id, volumeId: r.volumeId, sizeBytes, allocatedBytes, epoch: r.epoch, state: r.state,
      rebuild: r.state === 'rebuilding' ? r.rebuild : undefined, createdAt: r.createdAt,
    };
  }

  private parseRef(ref: ReplicaRefInput, anyVolume = false): ReplicaId {
    if (!ref.replicaId) throw new StorageError(Code.INVALID_ARGUMENT, 'the request names no replica');
    const id = asDeviceId(ref.replicaId) as string as ReplicaId;
    if (!anyVolume && (!ref.volumeId || ref.volumeId.length > MAX_VOLUME_ID_LENGTH)) {
      throw new StorageError(Code.INVALID_ARGUMENT, `replica ${id}: the request names no valid volume id`, { details: { replica: id } });
    }
    return id;
  }

  private notFound(ref: ReplicaRefInput): StorageError {
    return new StorageError(Code.NOT_FOUND, `replica ${ref.replicaId} of volume ${ref.volumeId} not found on this node`, { details: { replica: ref.replicaId, volumeId: ref.volumeId } });
  }
}
