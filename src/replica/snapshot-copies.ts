/**
 * This node's snapshot copies, the half of the replica manager (replica-manager.ts) that copies
 * devices: a replica's device copied at a barrier's cut (and filled after it on a file pool),
 * a streamed copy adopted, copies listed and deleted, and replicas made from a copy. Each
 * change runs under the replica's lock and the copy's, both the manager's, and is fenced by
 * epoch as every change to a replica is.
 */
import { Code, StorageError } from '../common/errors.js';
import { asDeviceId, type DeviceId, type ReplicaId, type SnapshotId, type VolumeId } from '../common/ids.js';
import type { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { PoolBackend } from '../pool/backend.js';
import type { HostedReplicaRecord, NodeStore } from '../store/node-store.js';
import type { SnapshotCopyRecord } from '../store/snapshot-copy-record.js';
import type { Replica } from './replica.js';
import { NO_PROGRESS, checkReplicaSize, copyKey, parseSnapshotId, wholeBytes, type ReplicaRefInput, type ReplicaStatusView } from './replica-refs.js';

/** One snapshot copy this node holds (the engine calls it SnapshotCopyStatus). */
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
/** What the copies need of the replica manager. */
export interface CopyHost {
  readonly pool: PoolBackend;
  readonly store: NodeStore;
  readonly log: Logger;
  /** The manager's locks: a replica's id, and `copyKey` of a snapshot. */
  readonly locks: KeyedLock;
  parseRef(ref: ReplicaRefInput): ReplicaId;
  notFound(ref: ReplicaRefInput): StorageError;
  /** Refuses a stale epoch and adopts a newer one. */
  fence(record: HostedReplicaRecord, epoch: number): Promise<void>;
  /** The replica's open object, when it is open. */
  openReplica(id: ReplicaId): Promise<Replica | undefined>;
  statusOf(id: ReplicaId): Promise<ReplicaStatusView>;
  delete(ref: ReplicaRefInput, epoch: number): Promise<void>;
}

export class SnapshotCopies {
  /** Copies answered at their cut and still being filled, by snapshot id. */
  private readonly filling = new Map<SnapshotId, { replicaId: ReplicaId; done: Promise<SnapshotCopyView> }>();

  constructor(private readonly host: CopyHost) {}

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
    const id = this.host.parseRef(ref);
    const snap = parseSnapshotId(snapshotId);
    const filling = this.filling.get(snap);
    if (filling && filling.replicaId === id) return filling.done;
    let cutAt: { sizeBytes: number; volumeId: VolumeId } | undefined;
    let onCut: (() => void) | undefined;
    const cut = new Promise<void>((resolve) => (onCut = resolve));
    const done = this.host.locks.run(id, () => this.host.locks.run(copyKey(snap), async () => {
      const record = this.host.store.getHostedReplica(id);
      if (!record || record.volumeId !== ref.volumeId) throw this.host.notFound(ref);
      await this.host.fence(record, epoch);
      const existing = this.host.store.getSnapshotCopy(snap);
      if (existing) {
        if (existing.replicaId === id && existing.volumeId === record.volumeId) return this.copyView(existing);
        throw new StorageError(Code.ALREADY_EXISTS, `snapshot ${snap} already has a copy on this node, taken from replica ${existing.replicaId} of volume ${existing.volumeId}: use another snapshot id`,
          { details: { snapshot: snap, replica: existing.replicaId } });
      }
      if (opts.cutOnly) cutAt = { sizeBytes: (await this.host.pool.inspect(record.deviceId)).sizeBytes, volumeId: record.volumeId };
      const copy = await this.copyDevice(record, snap, record.volumeId, opts.cutOnly ? onCut : undefined);
      this.host.log.info({ snapshot: snap, replica: id, volumeId: record.volumeId, sizeBytes: copy.sizeBytes, epoch }, 'snapshot copy taken');
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
    const c = this.host.store.getSnapshotCopy(parseSnapshotId(snapshotId));
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
    const id = this.host.parseRef(ref);
    const snap = parseSnapshotId(snapshotId);
    const copy = await this.host.locks.run(id, () => this.host.locks.run(copyKey(snap), async () => {
      const record = this.host.store.getHostedReplica(id);
      if (!record || record.volumeId !== ref.volumeId) throw this.host.notFound(ref);
      await this.host.fence(record, epoch);
      const existing = this.host.store.getSnapshotCopy(snap);
      if (existing) {
        throw new StorageError(Code.ALREADY_EXISTS, `snapshot ${snap} already has a copy on this node, taken from replica ${existing.replicaId} of volume ${existing.volumeId}`,
          { details: { snapshot: snap, replica: existing.replicaId } });
      }
      return this.copyDevice(record, snap, volumeId);
    }));
    await this.host.delete(ref, epoch);
    this.host.log.info({ snapshot: snap, replica: id, volumeId, sizeBytes: copy.sizeBytes }, 'snapshot copy received');
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
    if (this.host.store.knownDeviceIds().has(snap as string as DeviceId)) {
      throw new StorageError(Code.ALREADY_EXISTS, `snapshot id ${snap} names another device of this node's pool: use another snapshot id`, { details: { snapshot: snap } });
    }
    const replica = await this.host.openReplica(record.id);
    if (replica && !replica.isClosed) {
      await replica.writesSettled();
      if (!this.host.pool.snapshotFlushes) await (await replica.openedDevice()).flush();
    }
    // A device of this id without a record is left from an attempt that crashed: it is of
    // another moment, so it goes rather than being adopted.
    await this.host.pool.delete(snap as string as DeviceId);
    const info = await this.host.pool.snapshot(record.deviceId, snap as string as DeviceId, { copy: true, ...(onCut ? { onCut } : {}) });
    const copy: SnapshotCopyRecord = { snapshotId: snap, volumeId, replicaId: record.id, sizeBytes: info.sizeBytes, createdAt: new Date().toISOString() };
    try {
      this.host.store.insertSnapshotCopy(copy);
    } catch (err) {
      await this.host.pool.delete(snap as string as DeviceId).catch((e: unknown) =>
        this.host.log.warn({ snapshot: snap, err: (e as Error).message }, 'cannot delete an unrecorded snapshot copy; a repeated snapshot or delete call removes it'));
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
    await this.host.locks.run(copyKey(snap), async () => {
      const existing = this.host.store.getSnapshotCopy(snap);
      if (!existing && this.host.store.knownDeviceIds().has(snap as string as DeviceId)) return; // another device's name: not a copy
      await this.host.pool.delete(snap as string as DeviceId);
      if (!existing) return;
      this.host.store.deleteSnapshotCopy(snap);
      this.host.log.info({ snapshot: snap, volumeId: existing.volumeId, replica: existing.replicaId }, 'snapshot copy deleted');
    });
  }

  /** Every snapshot copy this node holds. A recorded copy whose device is gone is left out (and logged). */
  async listSnapshotCopies(): Promise<SnapshotCopyView[]> {
    const out: SnapshotCopyView[] = [];
    for (const c of this.host.store.listSnapshotCopies()) {
      try {
        out.push(await this.copyView(c));
      } catch (err) {
        this.host.log.warn({ snapshot: c.snapshotId, err: (err as Error).message }, 'a recorded snapshot copy has no device; left out of the list');
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
    const id = this.host.parseRef(ref);
    checkReplicaSize(id, sizeBytes);
    const snap = parseSnapshotId(snapshotId);
    return this.host.locks.run(id, () => this.host.locks.run(copyKey(snap), async () => {
      const existing = this.host.store.getHostedReplica(id);
      if (existing && existing.volumeId !== ref.volumeId) {
        throw new StorageError(Code.ALREADY_EXISTS, `replica ${id} already exists for volume ${existing.volumeId}, not ${ref.volumeId}`, { details: { replica: id } });
      }
      if (existing) await this.host.fence(existing, epoch);
      else wholeBytes(epoch, 'epoch');
      const device = existing && await this.host.pool.inspect(existing.deviceId).catch(() => undefined);
      if (device) {
        if (device.sizeBytes > sizeBytes) {
          throw new StorageError(Code.ALREADY_EXISTS, `replica ${id} already exists with ${device.sizeBytes} bytes, not ${sizeBytes}`, { details: { replica: id } });
        }
        if (device.sizeBytes < sizeBytes) await this.host.pool.resize(device.id, sizeBytes); // an interrupted create
        return this.host.statusOf(id);
      }
      const copy = this.host.store.getSnapshotCopy(snap);
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
        this.host.store.insertHostedReplica({
          id, volumeId: ref.volumeId as VolumeId, deviceId, state: 'in-sync', createdAt: new Date().toISOString(), epoch, rebuild: NO_PROGRESS,
        });
      }
      try {
        await this.host.pool.snapshot(snap as string as DeviceId, deviceId);
        if (sizeBytes > copy.sizeBytes) await this.host.pool.resize(deviceId, sizeBytes);
      } catch (err) {
        await this.host.pool.delete(deviceId).catch(() => undefined);
        if (!existing) this.host.store.deleteHostedReplica(id);
        throw err;
      }
      this.host.log.info({ replica: id, volumeId: ref.volumeId, snapshot: snap, sizeBytes, epoch }, 'replica created from snapshot');
      return this.host.statusOf(id);
    }));
  }

  private async copyView(c: SnapshotCopyRecord): Promise<SnapshotCopyView> {
    const info = await this.host.pool.inspect(c.snapshotId as string as DeviceId);
    return { ...c, allocatedBytes: info.allocatedBytes };
  }
}
