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
import { asDeviceId, type DeviceId, type ReplicaId, type SnapshotId, type VolumeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { AllocatedRanges, PoolBackend } from '../pool/backend.js';
import type { HostedReplicaRecord, NodeStore, RebuildProgressRecord, ReplicaState } from '../store/node-store.js';
import type { SnapshotCopyRecord } from '../store/snapshot-copy-record.js';
import { CHECKSUM_ALGORITHM, checkRegions, checksumRegions } from './checksum.js';
import { DEFAULT_REPLICA_LIMITS, type ReplicaLimits } from './io-types.js';
import { Replica } from './replica.js';

export interface ReplicaRefInput {
  replicaId: string;
  /** Must match the replica's volume; may be empty only where a method says so. */
  volumeId: string;
}

export interface ReplicaStatusView {
  replicaId: ReplicaId;
  volumeId: VolumeId;
  sizeBytes: number;
  allocatedBytes: number;
  epoch: number;
  state: ReplicaState;
  /** Set while rebuilding. */
  rebuild: RebuildProgressRecord | undefined;
  createdAt: string;
}

/** One snapshot copy this node holds (the engine's SnapshotCopyStatus has this shape). */
export interface SnapshotCopyView {
  snapshotId: SnapshotId;
  volumeId: VolumeId;
  /** The replica it was taken from. */
  replicaId: ReplicaId;
  sizeBytes: number;
  allocatedBytes: number;
  /** RFC 3339. */
  createdAt: string;
  /**
   * True in the answer to a `cutOnly` snapshot call when the copy's content is fixed but it
   * is still being filled: the same call again (without cutOnly) waits until it is whole.
   */
  filling?: boolean;
}

/** How a SnapshotReplica call is answered. */
export interface SnapshotCallOptions {
  /**
   * Answer once the copy's content is fixed (the cut), with `filling` set when the pool goes
   * on filling it while writes resume; without it, answer when the copy is whole.
   */
  cutOnly?: boolean;
}

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
const NO_PROGRESS: RebuildProgressRecord = Object.freeze({ doneBytes: 0, totalBytes: 0, checkpoint: Buffer.alloc(0) });
const MAX_VOLUME_ID_LENGTH = 128;

function wholeBytes(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new StorageError(Code.INVALID_ARGUMENT, `${what} must be a whole number of bytes, got ${value}`);
  return value;
}

/** The lock key of a snapshot copy: apart from replica ids, which share the pool's device names. */
const copyKey = (id: SnapshotId): string => `copy/${id}`;

function parseSnapshotId(text: string): SnapshotId {
  if (!text) throw new StorageError(Code.INVALID_ARGUMENT, 'the request names no snapshot');
  return asDeviceId(text) as string as SnapshotId;
}

function checkReplicaSize(id: ReplicaId, sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `replica size must be a positive multiple of 512 bytes, got ${sizeBytes}`, { details: { replica: id } });
  }
}

export class ReplicaManager {
  readonly limits: ReplicaLimits;
  private readonly replicas = new Map<ReplicaId, Promise<Replica>>();
  private readonly locks = new KeyedLock();
  /** Copies answered at their cut and still being filled, by snapshot id. */
  private readonly filling = new Map<SnapshotId, { replicaId: ReplicaId; done: Promise<SnapshotCopyView> }>();
  /** Replicas being deleted: no new I/O opens them. */
  private readonly deleting = new Set<ReplicaId>();
  private closed = false;

  constructor(private readonly opts: ReplicaManagerOptions) {
    this.limits = { ...DEFAULT_REPLICA_LIMITS, ...opts.limits };
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

  // --- snapshot copies --------------------------------------------------------------------

  /**
   * Copies the replica's device as it is now into this node's copy of `snapshotId` (a pool
   * device of that id; thin snapshot or reflink). Fenced like every change. The caller's
   * barrier drained the volume's writes; writes still in flight here settle first. Idempotent:
   * a copy of this snapshot from this replica is answered as it is; one from another replica
   * is ALREADY_EXISTS. A failure leaves no device and no record.
   *
   * With `cutOnly` the answer comes at the cut: where the pool fills the copy while writes go
   * on (a file pool), the answer says `filling`, the caller lets writes resume, and calls
   * again without `cutOnly` to wait until the copy is whole and recorded.
   */
  async snapshot(ref: ReplicaRefInput, epoch: number, snapshotId: string, opts: SnapshotCallOptions = {}): Promise<SnapshotCopyView> {
    const id = this.parseRef(ref);
    const snap = parseSnapshotId(snapshotId);
    const filling = this.filling.get(snap);
    if (filling && filling.replicaId === id) return filling.done;
    let cutAt: { sizeBytes: number; volumeId: VolumeId } | undefined;
    let onCut: (() => void) | undefined;
    const cut = new Promise<void>((resolve) => (onCut = resolve));
    const done = this.locks.run(id, () => this.locks.run(copyKey(snap), async () => {
      const record = this.opts.store.getHostedReplica(id);
      if (!record || record.volumeId !== ref.volumeId) throw this.notFound(ref);
      await this.fence(record, epoch);
      const existing = this.opts.store.getSnapshotCopy(snap);
      if (existing) {
        if (existing.replicaId === id && existing.volumeId === record.volumeId) return this.copyView(existing);
        throw new StorageError(Code.ALREADY_EXISTS, `snapshot ${snap} already has a copy on this node, taken from replica ${existing.replicaId} of volume ${existing.volumeId}: use another snapshot id`,
          { details: { snapshot: snap, replica: existing.replicaId } });
      }
      if (opts.cutOnly) cutAt = { sizeBytes: (await this.opts.pool.inspect(record.deviceId)).sizeBytes, volumeId: record.volumeId };
      const copy = await this.copyDevice(record, snap, record.volumeId, opts.cutOnly ? onCut : undefined);
      this.opts.log.info({ snapshot: snap, replica: id, volumeId: record.volumeId, sizeBytes: copy.sizeBytes, epoch }, 'snapshot copy taken');
      return copy;
    }));
    if (!opts.cutOnly) return done;
    const first = await Promise.race([cut.then(() => 'cut' as const), done.then(() => 'done' as const, () => 'done' as const)]);
    if (first === 'done' || !cutAt) return done;
    const entry = { replicaId: id, done };
    this.filling.set(snap, entry);
    const forget = (): void => void (this.filling.get(snap) === entry && this.filling.delete(snap));
    done.then(forget, forget);
    return { snapshotId: snap, volumeId: cutAt.volumeId, replicaId: id, sizeBytes: cutAt.sizeBytes, allocatedBytes: 0, createdAt: new Date().toISOString(), filling: true };
  }

  /** This node's copy of the snapshot, or undefined when it holds none (or its device is gone). */
  async snapshotCopy(snapshotId: string): Promise<SnapshotCopyView | undefined> {
    const c = this.opts.store.getSnapshotCopy(parseSnapshotId(snapshotId));
    return c && this.copyView(c).catch(() => undefined);
  }

  /**
   * Turns a replica this node filled with a snapshot's bytes (a streamed copy: PullSnapshotCopy)
   * into its copy of `snapshotId` of volume `volumeId`, then deletes the replica. The copy is
   * a thin snapshot or reflink of the replica's device, recorded as a barrier copy is, so that
   * list, delete, restore and the collectors treat both alike. Fenced; ALREADY_EXISTS when a
   * copy of that snapshot is here already. A failure leaves no copy (the replica stays, for the
   * caller to delete).
   */
  async adoptSnapshotCopy(ref: ReplicaRefInput, epoch: number, snapshotId: string, volumeId: VolumeId): Promise<SnapshotCopyView> {
    const id = this.parseRef(ref);
    const snap = parseSnapshotId(snapshotId);
    const copy = await this.locks.run(id, () => this.locks.run(copyKey(snap), async () => {
      const record = this.opts.store.getHostedReplica(id);
      if (!record || record.volumeId !== ref.volumeId) throw this.notFound(ref);
      await this.fence(record, epoch);
      const existing = this.opts.store.getSnapshotCopy(snap);
      if (existing) {
        throw new StorageError(Code.ALREADY_EXISTS, `snapshot ${snap} already has a copy on this node, taken from replica ${existing.replicaId} of volume ${existing.volumeId}`,
          { details: { snapshot: snap, replica: existing.replicaId } });
      }
      return this.copyDevice(record, snap, volumeId);
    }));
    await this.delete(ref, epoch);
    this.opts.log.info({ snapshot: snap, replica: id, volumeId, sizeBytes: copy.sizeBytes }, 'snapshot copy received');
    return copy;
  }

  /**
   * Copies the replica's device (its writes settled, and flushed first where the pool needs
   * it) into the pool device `snap` and records it as this node's copy of that snapshot of
   * `volumeId`. With `onCut`, the pool may call it once the copy's content is fixed and fill
   * the copy while writes go on. Runs under the replica's and the copy's locks. A failure
   * leaves no device and no record.
   */
  private async copyDevice(record: HostedReplicaRecord, snap: SnapshotId, volumeId: VolumeId, onCut?: () => void): Promise<SnapshotCopyView> {
    if (this.opts.store.knownDeviceIds().has(snap as string as DeviceId)) {
      throw new StorageError(Code.ALREADY_EXISTS, `snapshot id ${snap} names another device of this node's pool: use another snapshot id`, { details: { snapshot: snap } });
    }
    const loaded = this.replicas.get(record.id);
    const replica = loaded && await loaded.catch(() => undefined);
    if (replica && !replica.isClosed) {
      await replica.writesSettled();
      if (!this.opts.pool.snapshotFlushes) await (await replica.openedDevice()).flush();
    }
    // A device of this id without a record is left from an attempt that crashed: it is of
    // another moment, so it goes rather than being adopted.
    await this.opts.pool.delete(snap as string as DeviceId);
    const info = await this.opts.pool.snapshot(record.deviceId, snap as string as DeviceId, { copy: true, ...(onCut ? { onCut } : {}) });
    const copy: SnapshotCopyRecord = { snapshotId: snap, volumeId, replicaId: record.id, sizeBytes: info.sizeBytes, createdAt: new Date().toISOString() };
    try {
      this.opts.store.insertSnapshotCopy(copy);
    } catch (err) {
      await this.opts.pool.delete(snap as string as DeviceId).catch((e: unknown) =>
        this.opts.log.warn({ snapshot: snap, err: (e as Error).message }, 'cannot delete an unrecorded snapshot copy; a repeated snapshot or delete call removes it'));
      throw err;
    }
    return { ...copy, allocatedBytes: info.allocatedBytes };
  }

  /**
   * Deletes this node's copy of the snapshot: its device, then its record. Not an error when
   * there is none; a device left without a record (a crash while it was taken) goes too.
   */
  async deleteSnapshotCopy(snapshotId: string): Promise<void> {
    const snap = parseSnapshotId(snapshotId);
    await this.locks.run(copyKey(snap), async () => {
      const existing = this.opts.store.getSnapshotCopy(snap);
      if (!existing && this.opts.store.knownDeviceIds().has(snap as string as DeviceId)) return; // another device's name: not a copy
      await this.opts.pool.delete(snap as string as DeviceId);
      if (!existing) return;
      this.opts.store.deleteSnapshotCopy(snap);
      this.opts.log.info({ snapshot: snap, volumeId: existing.volumeId, replica: existing.replicaId }, 'snapshot copy deleted');
    });
  }

  /** Every snapshot copy this node holds. A recorded copy whose device is gone is left out (and logged). */
  async listSnapshotCopies(): Promise<SnapshotCopyView[]> {
    const out: SnapshotCopyView[] = [];
    for (const c of this.opts.store.listSnapshotCopies()) {
      try {
        out.push(await this.copyView(c));
      } catch (err) {
        this.opts.log.warn({ snapshot: c.snapshotId, err: (err as Error).message }, 'a recorded snapshot copy has no device; left out of the list');
      }
    }
    return out;
  }

  /**
   * A new replica whose content is this node's copy of the snapshot (a thin or reflinked
   * child), grown to `sizeBytes`, in sync at `epoch`. Recorded before its device is made,
   * as `create`; idempotent like it. NOT_FOUND without a copy here; OUT_OF_RANGE for a size
   * smaller than the snapshot's.
   */
  async createReplicaFromSnapshot(ref: ReplicaRefInput, sizeBytes: number, epoch: number, snapshotId: string): Promise<ReplicaStatusView> {
    const id = this.parseRef(ref);
    checkReplicaSize(id, sizeBytes);
    const snap = parseSnapshotId(snapshotId);
    return this.locks.run(id, () => this.locks.run(copyKey(snap), async () => {
      const existing = this.opts.store.getHostedReplica(id);
      if (existing && existing.volumeId !== ref.volumeId) {
        throw new StorageError(Code.ALREADY_EXISTS, `replica ${id} already exists for volume ${existing.volumeId}, not ${ref.volumeId}`, { details: { replica: id } });
      }
      if (existing) await this.fence(existing, epoch);
      else wholeBytes(epoch, 'epoch');
      const device = existing && await this.opts.pool.inspect(existing.deviceId).catch(() => undefined);
      if (device) {
        if (device.sizeBytes > sizeBytes) {
          throw new StorageError(Code.ALREADY_EXISTS, `replica ${id} already exists with ${device.sizeBytes} bytes, not ${sizeBytes}`, { details: { replica: id } });
        }
        if (device.sizeBytes < sizeBytes) await this.opts.pool.resize(device.id, sizeBytes); // an interrupted create
        return this.statusOf(id);
      }
      const copy = this.opts.store.getSnapshotCopy(snap);
      if (!copy) {
        throw new StorageError(Code.NOT_FOUND, `this node holds no copy of snapshot ${snap}: create the replica on a node that holds one, or stream the snapshot here first`,
          { details: { snapshot: snap, replica: id } });
      }
      if (sizeBytes < copy.sizeBytes) {
        throw new StorageError(Code.OUT_OF_RANGE, `replica ${id} of ${sizeBytes} bytes cannot hold snapshot ${snap} of ${copy.sizeBytes} bytes: ask for at least the snapshot's size`,
          { details: { snapshot: snap, replica: id, sizeBytes: copy.sizeBytes, requestedBytes: sizeBytes } });
      }
      const deviceId = asDeviceId(id);
      if (!existing) {
        this.opts.store.insertHostedReplica({
          id, volumeId: ref.volumeId as VolumeId, deviceId, state: 'in-sync', createdAt: new Date().toISOString(), epoch, rebuild: NO_PROGRESS,
        });
      }
      try {
        await this.opts.pool.snapshot(snap as string as DeviceId, deviceId);
        if (sizeBytes > copy.sizeBytes) await this.opts.pool.resize(deviceId, sizeBytes);
      } catch (err) {
        await this.opts.pool.delete(deviceId).catch(() => undefined);
        if (!existing) this.opts.store.deleteHostedReplica(id);
        throw err;
      }
      this.opts.log.info({ replica: id, volumeId: ref.volumeId, snapshot: snap, sizeBytes, epoch }, 'replica created from snapshot');
      return this.statusOf(id);
    }));
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

  private async copyView(c: SnapshotCopyRecord): Promise<SnapshotCopyView> {
    const info = await this.opts.pool.inspect(c.snapshotId as string as DeviceId);
    return { ...c, allocatedBytes: info.allocatedBytes };
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
