/**
 * The `dm` pool backend (production): the node's disks, concatenated with dm-linear, under
 * one dm-thin-pool; one thin device per replica and per snapshot. See dm-layout.ts for the
 * stack and the metadata sizing rule, dm-state.ts for what is persisted, and
 * docs/pool-dm.md for the low-space policy and restart.
 *
 * - Snapshots: the origin is suspended (flushing what was in flight, without freezing its
 *   filesystem: the caller's barrier or fsfreeze did that), `create_snap` is sent, and the
 *   origin is resumed whatever happened.
 * - Low space: the pool runs with error_if_no_space. New devices, snapshots and growth are
 *   refused with RESOURCE_EXHAUSTED while free data or metadata is below `reservePercent`,
 *   or when the devices' virtual sizes would exceed the pool's size times `overcommitRatio`.
 * - Locks: one per device id; changes of the pool's state (thin ids, the state file,
 *   messages to the pool) go through one short `pool` lock.
 */
import { Code, StorageError } from '../common/errors.js';
import type { DeviceId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { dmList, dmResume, dmSuspend, dmVersion } from '../native/index.js';
import type { AllocatedRanges, BlockDevice, PoolBackend, PoolCapacity, PoolDeviceInfo, SnapshotOptions } from './backend.js';
import { THIN_DUMP_MISSING, thinAllocatedRanges, thinDump } from './dm-extents.js';
import { openBlockDevice } from './block-device.js';
import { SECTOR_BYTES, parseThinStatus, thinName, thinTable, type ThinPoolStatus } from './dm-layout.js';
import { ensureDevice, findDevice, isErrno, nodePath, reloadDevice, removeDevice, syncDevice } from './dm-kernel.js';
import { ThinPool } from './dm-pool.js';
import { loadPoolState, savePoolState, type DmDeviceRecord } from './dm-state.js';
import { poolTag, recoverDevices } from './dm-recover.js';

export interface DmBackendOptions {
  /** Where dm-pool.json lives; created if missing. */
  dir: string;
  /** The pool's disks (block devices). A new pool is made on them; disks not yet in an existing pool are added. */
  disks: readonly string[];
  log: Logger;
  /** The dm name tag (cairn-<tag>-...); by default derived from `dir`. Fixed once the pool exists. */
  tag?: string;
  /** How far the devices' virtual sizes may exceed the pool's data size; 1 by default. */
  overcommitRatio?: number;
  /** New devices are refused while less than this share of data or metadata is free; 10 by default. */
  reservePercent?: number;
}

export interface DmPoolStatus extends ThinPoolStatus {
  blockBytes: number;
  dataUsedPercent: number;
  metadataUsedPercent: number;
}

function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, 'device size must be a positive multiple of 512 bytes', { details: { sizeBytes } });
  }
}

const POOL_LOCK = '\0pool';

export class DmBackend implements PoolBackend {
  readonly kind = 'dm' as const;
  private readonly locks = new KeyedLock();
  private closed = false;
  private thinDumpMissingLogged = false;
  private lastMode: string | undefined;

  private constructor(
    private readonly pool: ThinPool,
    private readonly log: Logger,
    private readonly overcommitRatio: number,
    private readonly reservePercent: number,
  ) {}

  /** Opens (or makes) the pool, stacks every recorded device again and finishes interrupted changes. */
  static async open(options: DmBackendOptions): Promise<DmBackend> {
    const { overcommitRatio = 1, reservePercent = 10 } = options;
    if (!Number.isFinite(overcommitRatio) || overcommitRatio < 1) {
      throw new StorageError(Code.INVALID_ARGUMENT, 'overcommitRatio must be a number of at least 1', { details: { overcommitRatio } });
    }
    if (!Number.isFinite(reservePercent) || reservePercent < 0 || reservePercent >= 100) {
      throw new StorageError(Code.INVALID_ARGUMENT, 'reservePercent must be in [0, 100)', { details: { reservePercent } });
    }
    await dmVersion(); // DeviceMapperUnavailableError (UNAVAILABLE, with a hint) on kernels without it
    const state = await loadPoolState(options.dir);
    const pool = state
      ? new ThinPool(options.dir, state, options.log)
      : await ThinPool.create(options.dir, options.tag ?? poolTag(options.dir), options.disks, options.log);
    const missing = pool.state.disks.filter((d) => options.disks.length > 0 && !options.disks.includes(d.path));
    if (missing.length > 0) {
      throw new StorageError(Code.FAILED_PRECONDITION, 'a disk of the pool is not in the configured pool devices', { details: { disks: missing.map((d) => d.path) } });
    }
    await pool.activate();
    const backend = new DmBackend(pool, options.log, overcommitRatio, reservePercent);
    await recoverDevices(pool, options.log);
    for (const path of options.disks) {
      if (!pool.state.disks.some((d) => d.path === path)) await backend.addDisk(path);
    }
    return backend;
  }

  get tag(): string {
    return this.pool.state.tag;
  }

  /** The pool's kernel status with usage in percent; logs when the pool's mode changes. */
  async poolStatus(): Promise<DmPoolStatus> {
    const s = await this.pool.status();
    if (s.mode !== this.lastMode) {
      if (s.mode === 'out_of_data_space') this.log.error({ pool: this.pool.dir }, 'dm pool is out of data space: writes that need new blocks fail with ENOSPC');
      else if (s.mode !== 'rw') this.log.error({ pool: this.pool.dir, mode: s.mode }, 'dm pool is not writable');
      else if (this.lastMode !== undefined) this.log.info({ pool: this.pool.dir }, 'dm pool is writable again');
      this.lastMode = s.mode;
    }
    const pct = (used: number, total: number): number => (total === 0 ? 100 : (used * 100) / total);
    return { ...s, blockBytes: this.pool.blockBytes, dataUsedPercent: pct(s.usedDataBlocks, s.totalDataBlocks), metadataUsedPercent: pct(s.usedMetadataBlocks, s.totalMetadataBlocks) };
  }

  async capacity(): Promise<PoolCapacity> {
    this.checkOpen();
    const s = await this.poolStatus();
    const totalBytes = s.totalDataBlocks * s.blockBytes;
    const usedBytes = s.usedDataBlocks * s.blockBytes;
    return { totalBytes, usedBytes, freeBytes: totalBytes - usedBytes, provisionedBytes: this.provisionedBytes() };
  }

  async create(id: DeviceId, sizeBytes: number): Promise<PoolDeviceInfo> {
    this.checkOpen();
    checkSize(sizeBytes);
    return this.locks.run(id, async () => {
      const existing = this.record(id);
      if (existing) {
        if (existing.sizeBytes === sizeBytes) return this.inspect(id);
        throw new StorageError(Code.ALREADY_EXISTS, 'device exists with another size', { details: { device: id, sizeBytes: existing.sizeBytes, requestedBytes: sizeBytes } });
      }
      await this.makeThin(id, sizeBytes, undefined);
      this.log.info({ device: id, sizeBytes }, 'device created');
      return this.inspect(id);
    });
  }

  async delete(id: DeviceId): Promise<void> {
    this.checkOpen();
    await this.locks.run(id, async () => {
      const rec = this.record(id);
      if (!rec) return;
      await removeDevice(thinName(this.pool.names, id), this.log);
      await this.withPool(async () => {
        rec.state = 'deleting';
        await this.save();
        await this.pool.message(`delete ${rec.thinId}`).catch((err: unknown) => {
          if (!isErrno(err, 'ENODATA')) throw err;
        });
        delete this.pool.state.devices[id];
        await this.save();
      });
      this.log.info({ device: id, thinId: rec.thinId }, 'device deleted');
    });
  }

  async resize(id: DeviceId, sizeBytes: number): Promise<PoolDeviceInfo> {
    this.checkOpen();
    checkSize(sizeBytes);
    return this.locks.run(id, async () => {
      const rec = this.requireRecord(id);
      if (sizeBytes < rec.sizeBytes) {
        throw new StorageError(Code.INVALID_ARGUMENT, 'devices can only grow', { details: { device: id, sizeBytes: rec.sizeBytes, requestedBytes: sizeBytes } });
      }
      if (sizeBytes === rec.sizeBytes) return this.inspect(id);
      const previousBytes = rec.sizeBytes;
      await this.withPool(async () => {
        await this.checkRoom(id, sizeBytes - rec.sizeBytes);
        await reloadDevice(thinName(this.pool.names, id), thinTable(this.pool.device, rec.thinId, sizeBytes), { noLockfs: true });
        rec.sizeBytes = sizeBytes;
        await this.save();
      });
      this.log.info({ device: id, sizeBytes, previousBytes }, 'device resized');
      return this.inspect(id);
    });
  }

  /** Not an error when `snapshotId` exists with the source's size (a retried call). */
  async snapshot(sourceId: DeviceId, snapshotId: DeviceId, options: SnapshotOptions = {}): Promise<PoolDeviceInfo> {
    this.checkOpen();
    if (sourceId === snapshotId) throw new StorageError(Code.INVALID_ARGUMENT, 'a snapshot needs its own id', { details: { device: sourceId } });
    const [first, second] = sourceId < snapshotId ? [sourceId, snapshotId] : [snapshotId, sourceId];
    return this.locks.run(first, () => this.locks.run(second, async () => {
      const source = this.requireRecord(sourceId);
      const existing = this.record(snapshotId);
      if (existing) {
        if (existing.sizeBytes === source.sizeBytes) return this.inspect(snapshotId);
        throw new StorageError(Code.ALREADY_EXISTS, 'snapshot id is taken by a device of another size', { details: { device: snapshotId, source: sourceId } });
      }
      await this.makeThin(snapshotId, source.sizeBytes, sourceId, options.copy === true);
      this.log.info({ device: snapshotId, source: sourceId, sizeBytes: source.sizeBytes, copy: options.copy === true }, 'snapshot created');
      return this.inspect(snapshotId);
    }));
  }

  async inspect(id: DeviceId): Promise<PoolDeviceInfo> {
    this.checkOpen();
    const rec = this.requireRecord(id);
    const name = thinName(this.pool.names, id);
    const s = await findDevice(name);
    const line = s?.targets[0]?.params;
    if (!s || line === undefined) throw new StorageError(Code.UNAVAILABLE, 'thin device is not active', { details: { device: id, dm: name } });
    const { mappedSectors } = parseThinStatus(line);
    return { id, sizeBytes: rec.sizeBytes, allocatedBytes: mappedSectors * SECTOR_BYTES, path: nodePath(name, s) };
  }

  async list(): Promise<PoolDeviceInfo[]> {
    this.checkOpen();
    const ids = Object.keys(this.pool.state.devices).sort() as DeviceId[];
    const infos = await Promise.all(ids.map((id) => (this.record(id) ? this.inspect(id).catch(() => undefined) : undefined)));
    return infos.filter((i): i is PoolDeviceInfo => i !== undefined);
  }

  async open(id: DeviceId): Promise<BlockDevice> {
    const info = await this.inspect(id);
    const device = await openBlockDevice(info.path, id, info.sizeBytes, this.pool.blockBytes, this.log);
    // Writes sit in the device's page cache until written back; dm-thin maps a block only
    // when a write reaches it. Flushing first makes every completed write part of the answer.
    device.allocatedRanges = async (offset, lengthBytes, maxExtents) => {
      await device.flush();
      return this.allocatedRanges(id, offset, lengthBytes, maxExtents);
    };
    return device;
  }

  /** The pool's mapping of the device (dm-extents.ts): one metadata snapshot at a time, under the pool lock. */
  private async allocatedRanges(id: DeviceId, offset: number, lengthBytes: number, maxExtents: number): Promise<AllocatedRanges> {
    this.checkOpen();
    const { thinId } = this.requireRecord(id);
    return this.withPool(async () => {
      const meta = await findDevice(this.pool.names.meta);
      if (!meta) throw new StorageError(Code.UNAVAILABLE, 'the pool\'s metadata device is gone', { details: { device: id } });
      const metadataDevice = nodePath(this.pool.names.meta, meta);
      const mapping = { dump: (thin: number, onLine: (l: string) => void) => thinDump(metadataDevice, thin, onLine), message: (text: string) => this.pool.message(text) };
      try {
        return await thinAllocatedRanges(mapping, thinId, this.pool.blockBytes, offset, lengthBytes, maxExtents);
      } catch (err) {
        if (!(err instanceof StorageError) || err.details.reason !== THIN_DUMP_MISSING) throw err;
        // Without thin_dump every byte counts as data: rebuilds stay correct, only not thin.
        if (!this.thinDumpMissingLogged) this.log.warn({ pool: this.pool.dir }, 'thin_dump is not installed: rebuilds from this pool copy every byte; install thin-provisioning-tools');
        this.thinDumpMissingLogged = true;
        return { extents: [{ offset, lengthBytes }], endOffset: offset + lengthBytes };
      }
    });
  }

  /** Grows the pool by a disk while every device stays online. */
  async addDisk(path: string): Promise<PoolCapacity> {
    this.checkOpen();
    await this.withPool(() => this.pool.addDisk(path));
    return this.capacity();
  }

  /** Leaves the dm devices live (exports and mounts may still use them); only stops this object. */
  async close(): Promise<void> {
    this.closed = true;
  }

  /** The dm devices of this pool that the kernel has, by name (for tests and diagnostics). */
  async dmDevices(): Promise<string[]> {
    return (await dmList()).map((d) => d.name).filter((n) => n.startsWith(`${this.pool.names.prefix}-`)).sort();
  }

  private async makeThin(id: DeviceId, sizeBytes: number, origin: DeviceId | undefined, copy = false): Promise<void> {
    const rec: DmDeviceRecord = await this.withPool(async () => {
      await this.checkRoom(id, copy ? 0 : sizeBytes);
      const r: DmDeviceRecord = {
        thinId: this.pool.state.nextThinId++, sizeBytes, state: 'creating', createdAt: new Date().toISOString(), ...(origin ? { origin } : {}), ...(copy ? { copy: true } : {}),
      };
      this.pool.state.devices[id] = r;
      await this.save();
      return r;
    });
    const name = thinName(this.pool.names, id);
    try {
      await this.withPool(() => (origin ? this.snapInKernel(origin, rec.thinId) : this.pool.message(`create_thin ${rec.thinId}`).then(() => undefined)));
      await ensureDevice(name, thinTable(this.pool.device, rec.thinId, sizeBytes), this.log);
      await this.withPool(async () => {
        rec.state = 'ready';
        await this.save();
      });
    } catch (err) {
      await this.undoThin(id, rec, name).catch((e: unknown) => this.log.error({ device: id, err: e }, 'failed device could not be cleaned up'));
      throw err;
    }
  }

  /**
   * Writes the origin's page cache back (BlockDevice writes are buffered: an acknowledged
   * write may still be there), suspends it (flushing in-flight bios, no filesystem freeze:
   * the caller's barrier or fsfreeze did that), sends create_snap, and resumes it.
   */
  private async snapInKernel(origin: DeviceId, thinId: number): Promise<void> {
    const originName = thinName(this.pool.names, origin);
    await syncDevice((await this.inspect(origin)).path);
    await dmSuspend(originName, { noLockfs: true });
    try {
      await this.pool.message(`create_snap ${thinId} ${this.requireRecord(origin).thinId}`);
    } finally {
      await dmResume(originName);
    }
  }

  private async undoThin(id: DeviceId, rec: DmDeviceRecord, name: string): Promise<void> {
    await removeDevice(name, this.log);
    await this.withPool(async () => {
      await this.pool.message(`delete ${rec.thinId}`).catch((err: unknown) => {
        if (!isErrno(err, 'ENODATA')) throw err;
      });
      delete this.pool.state.devices[id];
      await this.save();
    });
  }

  /** RESOURCE_EXHAUSTED when the pool must not take `addBytes` more of virtual size. */
  private async checkRoom(id: DeviceId, addBytes: number): Promise<void> {
    const s = await this.poolStatus();
    const details = { device: id, dataUsedPercent: Math.round(s.dataUsedPercent), metadataUsedPercent: Math.round(s.metadataUsedPercent), reservePercent: this.reservePercent };
    if (s.mode === 'out_of_data_space') throw new StorageError(Code.RESOURCE_EXHAUSTED, 'the dm pool is out of data space: add a disk or delete volumes or snapshots', { details });
    if (s.mode !== 'rw') throw new StorageError(Code.FAILED_PRECONDITION, `the dm pool is not writable (mode ${s.mode}): it needs an operator's check`, { details });
    const limit = 100 - this.reservePercent;
    if (s.dataUsedPercent >= limit || s.metadataUsedPercent >= limit) {
      throw new StorageError(Code.RESOURCE_EXHAUSTED,
        `the dm pool is nearly full (data ${details.dataUsedPercent}% and metadata ${details.metadataUsedPercent}% used; new devices stop at ${limit}%): add a disk or delete volumes or snapshots`, { details });
    }
    const totalBytes = s.totalDataBlocks * s.blockBytes;
    const limitBytes = Math.floor(totalBytes * this.overcommitRatio);
    const provisionedBytes = this.provisionedBytes() + addBytes;
    if (provisionedBytes > limitBytes) {
      throw new StorageError(Code.RESOURCE_EXHAUSTED, 'the dm pool cannot provision the device: its virtual size would exceed the pool size times the overcommit ratio', {
        details: { ...details, sizeBytes: addBytes, provisionedBytes, limitBytes, overcommitRatio: this.overcommitRatio },
      });
    }
  }

  private provisionedBytes(): number {
    return Object.values(this.pool.state.devices).reduce((sum, d) => sum + (d.state === 'deleting' || d.copy === true ? 0 : d.sizeBytes), 0);
  }

  private record(id: DeviceId): DmDeviceRecord | undefined {
    const rec = this.pool.state.devices[id];
    return rec && rec.state === 'ready' ? rec : undefined;
  }

  private requireRecord(id: DeviceId): DmDeviceRecord {
    const rec = this.record(id);
    if (!rec) throw new StorageError(Code.NOT_FOUND, 'device not found', { details: { device: id, pool: this.pool.dir } });
    return rec;
  }

  private withPool<T>(fn: () => Promise<T>): Promise<T> {
    return this.locks.run(POOL_LOCK, fn);
  }

  private save(): Promise<void> {
    return savePoolState(this.pool.dir, this.pool.state);
  }

  private checkOpen(): void {
    if (this.closed) throw new StorageError(Code.FAILED_PRECONDITION, 'pool is closed', { details: { pool: this.pool.dir } });
  }
}
