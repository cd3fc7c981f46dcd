/**
 * Volumes on a single node: the embedded control plane. A volume is recorded in the node
 * store before its device is made, so a crash at any moment is finished or undone by
 * `recover()` at the next start. Every call takes the volume's own lock; calls on
 * different volumes run concurrently.
 */
import { Code, StorageError } from '../common/errors.js';
import { asDeviceId, newReplicaId, newVolumeId, validateName } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { alignUp, formatBytes } from '../common/units.js';
import type { ExportInfo, ExportManager } from '../engine/export-manager.js';
import type { PoolBackend, PoolCapacity } from '../pool/backend.js';
import type { NodeStore, ReplicaRecord, VolumeRecord } from '../store/node-store.js';

/** Volume sizes are rounded up to this, the preferred block size we advertise. */
export const VOLUME_ALIGNMENT_BYTES = 4096;
/** NBD carries 64-bit sizes, but JavaScript numbers are exact only below 2^53. */
export const MAX_VOLUME_BYTES = 2 ** 50; // 1 PiB

export type VolumeHealth = 'healthy' | 'degraded' | 'faulted';

export interface ReplicaView extends ReplicaRecord {
  nodeName: string;
  allocatedBytes: number;
}

export interface VolumeView extends VolumeRecord {
  health: VolumeHealth;
  allocatedBytes: number;
  replicas: ReplicaView[];
  export: ExportInfo | undefined;
}

export interface VolumeServiceOptions {
  nodeName: string;
  store: NodeStore;
  pool: PoolBackend;
  exports: ExportManager;
  log: Logger;
}

export class VolumeService {
  private readonly locks = new KeyedLock();
  private readonly opts: VolumeServiceOptions;

  constructor(opts: VolumeServiceOptions) {
    this.opts = opts;
  }

  private get store(): NodeStore {
    return this.opts.store;
  }

  /** Creates a volume, or returns the existing one of that name and size. */
  async create(name: string, requestedBytes: number): Promise<VolumeView> {
    validateName('volume', name);
    if (!Number.isSafeInteger(requestedBytes) || requestedBytes <= 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, `volume size must be a positive number of bytes, got ${requestedBytes}`);
    }
    if (requestedBytes > MAX_VOLUME_BYTES) {
      throw new StorageError(Code.OUT_OF_RANGE, `volume size ${formatBytes(requestedBytes)} is over the limit of ${formatBytes(MAX_VOLUME_BYTES)}`);
    }
    const sizeBytes = alignUp(requestedBytes, VOLUME_ALIGNMENT_BYTES);
    return this.locks.run(name, async () => {
      const existing = this.store.getVolumeByName(name);
      if (existing) {
        if (existing.sizeBytes !== sizeBytes) {
          throw new StorageError(Code.ALREADY_EXISTS,
            `volume "${name}" already exists with size ${formatBytes(existing.sizeBytes)}, not ${formatBytes(sizeBytes)}`, { details: { volume: name } });
        }
        if (existing.state === 'ready') return this.view(existing);
      }
      const volume = existing ?? this.record(name, sizeBytes);
      await this.provision(volume);
      return this.view(this.store.updateVolume(volume.id, { state: 'ready' }));
    });
  }

  private record(name: string, sizeBytes: number): VolumeRecord {
    const now = new Date().toISOString();
    const volume: VolumeRecord = { id: newVolumeId(), name, sizeBytes, state: 'creating', epoch: 0, exported: false, createdAt: now };
    const replicaId = newReplicaId();
    const replica: ReplicaRecord = { id: replicaId, volumeId: volume.id, deviceId: asDeviceId(replicaId), state: 'in-sync', createdAt: now };
    this.store.insertVolume(volume, [replica]);
    return volume;
  }

  /** Makes the volume's devices. On failure the volume's records are removed again. */
  private async provision(volume: VolumeRecord): Promise<void> {
    const replicas = this.store.listReplicas(volume.id);
    try {
      for (const r of replicas) await this.opts.pool.create(r.deviceId, volume.sizeBytes);
    } catch (err) {
      this.opts.log.warn({ volume: volume.name, err }, 'volume creation failed; rolling back');
      for (const r of replicas) await this.opts.pool.delete(r.deviceId).catch(() => undefined);
      this.store.deleteVolume(volume.id);
      throw err;
    }
    this.opts.log.info({ volume: volume.name, sizeBytes: volume.sizeBytes }, 'volume created');
  }

  /**
   * Deletes a volume with its snapshots. Not an error when it does not exist. Refused with
   * FAILED_PRECONDITION while NBD clients are connected, unless `force`.
   */
  async delete(name: string, force = false): Promise<void> {
    await this.locks.run(name, async () => {
      const volume = this.store.getVolumeByName(name);
      if (!volume) return;
      const exported = this.opts.exports.get(name);
      if (exported && exported.connectionCount > 0 && !force) {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${name}" has ${exported.connectionCount} NBD client(s) connected: disconnect them first, or delete with --force`, { details: { volume: name } });
      }
      await this.opts.exports.stop(name);
      this.store.updateVolume(volume.id, { state: 'deleting', exported: false });
      await this.destroy(volume);
    });
  }

  private async destroy(volume: VolumeRecord): Promise<void> {
    for (const s of this.store.listSnapshots(volume.id)) await this.opts.pool.delete(s.deviceId);
    for (const r of this.store.listReplicas(volume.id)) await this.opts.pool.delete(r.deviceId);
    this.store.deleteVolume(volume.id);
    this.opts.log.info({ volume: volume.name }, 'volume deleted');
  }

  /** Serves the volume over NBD; idempotent. The choice survives a restart. */
  async export(name: string): Promise<ExportInfo> {
    return this.locks.run(name, async () => {
      const volume = this.require(name);
      const info = await this.startExport(volume);
      if (!volume.exported) this.store.updateVolume(volume.id, { exported: true });
      return info;
    });
  }

  private async startExport(volume: VolumeRecord): Promise<ExportInfo> {
    const current = this.opts.exports.get(volume.name);
    if (current) return current;
    const replica = this.localReplica(volume);
    const device = await this.opts.pool.open(replica.deviceId);
    return this.opts.exports.start(volume.name, device);
  }

  /** Stops serving; in-flight requests finish and the device is flushed. Idempotent. */
  async unexport(name: string): Promise<void> {
    await this.locks.run(name, async () => {
      const volume = this.require(name);
      await this.opts.exports.stop(name);
      if (volume.exported) this.store.updateVolume(volume.id, { exported: false });
    });
  }

  async get(name: string): Promise<VolumeView> {
    return this.view(this.require(name));
  }

  async list(): Promise<VolumeView[]> {
    return Promise.all(this.store.listVolumes().map((v) => this.view(v)));
  }

  capacity(): Promise<PoolCapacity> {
    return this.opts.pool.capacity();
  }

  /**
   * Finishes what a crash interrupted: volumes half created are completed, volumes half
   * deleted are deleted, and exported volumes are served again.
   */
  async recover(): Promise<void> {
    for (const volume of this.store.listVolumes()) {
      await this.locks.run(volume.name, async () => {
        if (volume.state === 'deleting') {
          this.opts.log.info({ volume: volume.name }, 'finishing interrupted volume deletion');
          await this.destroy(volume);
        } else if (volume.state === 'creating') {
          this.opts.log.info({ volume: volume.name }, 'finishing interrupted volume creation');
          await this.provision(volume);
          this.store.updateVolume(volume.id, { state: 'ready' });
        }
      }).catch((err: unknown) => this.opts.log.error({ volume: volume.name, err }, 'volume recovery failed'));
    }
    for (const volume of this.store.listVolumes().filter((v) => v.exported && v.state === 'ready')) {
      await this.locks.run(volume.name, () => this.startExport(volume))
        .catch((err: unknown) => this.opts.log.error({ volume: volume.name, err }, 'volume could not be exported again after restart'));
    }
  }

  /** Stops every export: in-flight requests finish and each device is flushed. */
  async shutdown(): Promise<void> {
    await this.opts.exports.stopAll();
  }

  private require(name: string): VolumeRecord {
    const volume = this.store.getVolumeByName(name);
    if (!volume || volume.state === 'deleting') {
      throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`, { details: { volume: name } });
    }
    if (volume.state !== 'ready') {
      throw new StorageError(Code.UNAVAILABLE, `volume "${name}" is still being created; try again`, { details: { volume: name } });
    }
    return volume;
  }

  private localReplica(volume: VolumeRecord): ReplicaRecord {
    const replica = this.store.listReplicas(volume.id).find((r) => r.state === 'in-sync');
    if (!replica) throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume.name}" has no in-sync replica on this node`, { details: { volume: volume.name } });
    return replica;
  }

  private async view(volume: VolumeRecord): Promise<VolumeView> {
    const replicas: ReplicaView[] = [];
    for (const r of this.store.listReplicas(volume.id)) {
      const info = await this.opts.pool.inspect(r.deviceId).catch(() => undefined);
      replicas.push({ ...r, state: info ? r.state : 'faulted', nodeName: this.opts.nodeName, allocatedBytes: info?.allocatedBytes ?? 0 });
    }
    const inSync = replicas.filter((r) => r.state === 'in-sync').length;
    const health: VolumeHealth = inSync === 0 ? 'faulted' : inSync < replicas.length ? 'degraded' : 'healthy';
    return {
      ...volume,
      health,
      allocatedBytes: replicas.reduce((sum, r) => sum + r.allocatedBytes, 0),
      replicas,
      export: this.opts.exports.get(volume.name),
    };
  }
}
