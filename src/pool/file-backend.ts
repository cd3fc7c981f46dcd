/**
 * The `file` pool backend: one sparse file per device in a directory.
 *
 * Layout: `<dir>/devices/<id>.img`, exactly `sizeBytes` long, holes where nothing was
 * written. A device being made (create, snapshot) lives under a temp name
 * `<dir>/devices/.<id>.<random>.tmp` until it is complete and synced; then it is renamed
 * into place and the directory is synced. So a crash (kill -9, power loss) leaves either
 * no device or a whole one, plus at most a temp file that `FileBackend.open` removes.
 *
 * Sizes are whole 512-byte sectors, as the dm backend needs, so both backends take the
 * same sizes. Snapshots are reflinks (FICLONE) where the filesystem can (xfs with
 * reflink=1, btrfs); elsewhere they are full sparse copies, with one warning per pool.
 * A snapshot asked for with `onCut` is taken while writes go on (file-cut-copy.ts): the
 * cut registers the copy, every device opened on the source then lets a change through
 * only once the chunks it touches are in the copy, and the copy is filled in the
 * background by FICLONERANGE runs (or copies).
 *
 * Layouts (file-layout.ts): `direct` keeps the devices in `<dir>/devices` as above;
 * `xfs-image` keeps them in `<dir>/xfs/devices`, on an xfs image the pool mounts
 * (xfs-image.ts), so snapshots are reflinks on any host filesystem. Used directly the
 * backend is `direct` unless told otherwise; cairnd asks for `auto`.
 *
 * Capacity: totalBytes and freeBytes come from statfs of the pool directory (blocks and
 * bavail times bsize); usedBytes is the sum of the devices' allocated bytes (st_blocks *
 * 512; blocks shared by reflink are counted once per file, so it can exceed the truth);
 * provisionedBytes is the sum of their sizes. With `capacityBytes`, totalBytes is capped
 * at it, freeBytes at what is left of it, and create/resize/snapshot refuse with
 * RESOURCE_EXHAUSTED when provisionedBytes would exceed capacityBytes * overcommitRatio
 * (default ratio 1: never promise more than the cap). Without it, provisioning is
 * unlimited and a full filesystem shows up as ENOSPC on write. In the xfs-image layout
 * totalBytes and freeBytes are what xfs reports, freeBytes never above the host
 * filesystem's free bytes (the image is sparse: it grows on the host as devices are written).
 */
import { mkdir, open, readdir, rename, stat, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import { asDeviceId, type DeviceId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { BlockDevice, PoolBackend, PoolCapacity, PoolDeviceInfo, SnapshotOptions } from './backend.js';
import { openFileDevice } from './file-device.js';
import { cloneOrCopy, type CopyMethod } from './file-copy.js';
import { CutCopy } from './file-cut-copy.js';
import { resolveLayout, type FileLayout, type FileLayoutChoice } from './file-layout.js';
import { releaseBlocks, spaceOf, XfsImage, type FsSpace } from './xfs-image.js';
import { syncDirectory } from '../common/fs-sync.js';

export interface FileBackendOptions {
  /** The pool directory; created if missing. */
  dir: string;
  log: Logger;
  /** Caps the pool's size and provisioning; unlimited (the filesystem's size) if absent. */
  capacityBytes?: number;
  /** How far provisioning may exceed capacityBytes; 1 by default. */
  overcommitRatio?: number;
  /** `direct` by default; `auto` follows the pool's record or probes reflink (file-layout.ts). */
  layout?: FileLayoutChoice;
  /** Size of a new xfs image (xfs-image layout); the host filesystem's size by default. */
  imageSizeBytes?: number | undefined;
}

const SECTOR_BYTES = 512;
const DEVICE_SUFFIX = '.img';
const TEMP_SUFFIX = '.tmp';
const NO_REFLINK_WARNING = 'pool filesystem cannot reflink; snapshots are full copies';
const NO_REFLINK_HINT = 'for instant snapshots move to a new, empty --pool-dir: cairnd then puts the devices on an xfs image of its own (--file-pool-layout auto or xfs-image)';

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === 'ENOENT';
}

function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, 'device size must be a positive multiple of 512 bytes', { details: { sizeBytes } });
  }
}

export class FileBackend implements PoolBackend {
  readonly kind = 'file' as const;
  /** A reflink or copy reads the page cache, and the copy is synced before it is renamed in. */
  readonly snapshotFlushes = true;
  readonly dir: string;
  private devicesDir: string;
  private readonly log: Logger;
  private readonly requestedLayout: FileLayoutChoice;
  private readonly imageSizeBytes: number | undefined;
  private layoutInUse: FileLayout = 'direct';
  private image: XfsImage | undefined;
  private readonly capacityBytes: number | undefined;
  private readonly overcommitRatio: number;
  private readonly locks = new KeyedLock();
  /** Sizes being provisioned by calls in flight, so concurrent calls see each other. */
  private readonly pending = new Map<DeviceId, number>();
  private warnedNoReflink = false;
  /** Copies being filled after their cut, by source device: its writes wait on them. */
  private readonly cuts = new Map<DeviceId, CutCopy>();
  private closed = false;

  private constructor(options: FileBackendOptions) {
    const { capacityBytes, overcommitRatio = 1 } = options;
    if (capacityBytes !== undefined && (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0)) {
      throw new StorageError(Code.INVALID_ARGUMENT, 'capacityBytes must be a positive integer', { details: { capacityBytes } });
    }
    if (!Number.isFinite(overcommitRatio) || overcommitRatio < 1) {
      throw new StorageError(Code.INVALID_ARGUMENT, 'overcommitRatio must be a number of at least 1', { details: { overcommitRatio } });
    }
    this.dir = options.dir;
    this.devicesDir = join(options.dir, 'devices');
    this.log = options.log;
    this.capacityBytes = capacityBytes;
    this.overcommitRatio = overcommitRatio;
    this.requestedLayout = options.layout ?? 'direct';
    this.imageSizeBytes = options.imageSizeBytes;
  }

  /** The layout the pool uses (decided at open). */
  get layout(): FileLayout {
    return this.layoutInUse;
  }

  /** Makes the pool directory if needed and removes temp files of interrupted calls. */
  static async open(options: FileBackendOptions): Promise<FileBackend> {
    const backend = new FileBackend(options);
    await backend.init();
    return backend;
  }

  private async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true }).catch((err: unknown) => {
      throw fromNodeError(err, 'open file pool', { pool: this.dir });
    });
    this.layoutInUse = await resolveLayout(this.dir, this.requestedLayout, this.log, this.imageSizeBytes);
    if (this.layoutInUse === 'xfs-image') {
      this.image = await XfsImage.mount({ poolDir: this.dir, log: this.log, sizeBytes: this.imageSizeBytes });
      this.devicesDir = join(this.image.mountPoint, 'devices');
    }
    try {
      await this.openDevicesDir();
    } catch (err) {
      await this.image?.unmount().catch(() => undefined);
      throw err;
    }
    this.log.info({ pool: this.dir, layout: this.layoutInUse, capacityBytes: this.capacityBytes }, 'file pool opened');
  }

  private async openDevicesDir(): Promise<void> {
    try {
      await mkdir(this.devicesDir, { recursive: true });
      let removed = 0;
      for (const name of await readdir(this.devicesDir)) {
        if (!name.startsWith('.') || !name.endsWith(TEMP_SUFFIX)) continue;
        await unlink(join(this.devicesDir, name)).catch((err: unknown) => {
          if (!isMissing(err)) throw err;
        });
        this.log.warn({ pool: this.dir, file: name }, 'stale temp file removed');
        removed++;
      }
      if (removed > 0) await syncDirectory(this.devicesDir);
    } catch (err) {
      throw fromNodeError(err, 'open file pool', { pool: this.dir });
    }
  }

  async capacity(): Promise<PoolCapacity> {
    this.checkOpen();
    const [fs, devices] = await Promise.all([this.statfs(), this.list()]);
    let usedBytes = 0;
    let provisionedBytes = 0;
    for (const d of devices) {
      usedBytes += d.allocatedBytes;
      provisionedBytes += d.sizeBytes;
    }
    const { totalBytes: fsTotal, freeBytes: fsFree } = fs;
    if (this.capacityBytes === undefined) return { totalBytes: fsTotal, usedBytes, freeBytes: fsFree, provisionedBytes };
    return {
      totalBytes: Math.min(fsTotal, this.capacityBytes),
      usedBytes,
      freeBytes: Math.min(fsFree, Math.max(0, this.capacityBytes - usedBytes)),
      provisionedBytes,
    };
  }

  async create(id: DeviceId, sizeBytes: number): Promise<PoolDeviceInfo> {
    this.checkOpen();
    checkSize(sizeBytes);
    return this.locks.run(id, async () => {
      const existing = await this.find(id);
      if (existing) {
        if (existing.sizeBytes === sizeBytes) return existing;
        throw new StorageError(Code.ALREADY_EXISTS, 'device exists with another size', {
          details: { device: id, sizeBytes: existing.sizeBytes, requestedBytes: sizeBytes },
        });
      }
      const info = await this.provisioning(id, sizeBytes, () => this.makeAtomically(id, (fh) => fh.truncate(sizeBytes)));
      this.log.info({ device: id, sizeBytes }, 'device created');
      return info;
    });
  }

  async delete(id: DeviceId): Promise<void> {
    this.checkOpen();
    await this.locks.run(id, async () => {
      try {
        if (this.image) await releaseBlocks(this.pathOf(id));
        await unlink(this.pathOf(id));
      } catch (err) {
        if (isMissing(err)) return;
        throw fromNodeError(err, 'delete device', { device: id });
      }
      await syncDirectory(this.devicesDir).catch((err: unknown) => {
        throw fromNodeError(err, 'sync pool directory', { device: id });
      });
      this.log.info({ device: id }, 'device deleted');
    });
  }

  async resize(id: DeviceId, sizeBytes: number): Promise<PoolDeviceInfo> {
    this.checkOpen();
    checkSize(sizeBytes);
    return this.locks.run(id, async () => {
      const current = await this.inspect(id);
      if (sizeBytes < current.sizeBytes) {
        throw new StorageError(Code.INVALID_ARGUMENT, 'devices can only grow', {
          details: { device: id, sizeBytes: current.sizeBytes, requestedBytes: sizeBytes },
        });
      }
      if (sizeBytes === current.sizeBytes) return current;
      return this.provisioning(id, sizeBytes, async () => {
        try {
          await truncate(current.path, sizeBytes);
          const fh = await open(current.path, 'r');
          await fh.sync().finally(() => fh.close());
        } catch (err) {
          throw fromNodeError(err, 'resize device', { device: id, sizeBytes });
        }
        this.log.info({ device: id, sizeBytes, previousBytes: current.sizeBytes }, 'device resized');
        return this.inspect(id);
      });
    });
  }

  /**
   * Not an error when `snapshotId` already exists with the source's size (a retried
   * call; which source it came from is the caller's record); ALREADY_EXISTS otherwise.
   */
  async snapshot(sourceId: DeviceId, snapshotId: DeviceId, options: SnapshotOptions = {}): Promise<PoolDeviceInfo> {
    this.checkOpen();
    if (sourceId === snapshotId) {
      throw new StorageError(Code.INVALID_ARGUMENT, 'a snapshot needs its own id', { details: { device: sourceId } });
    }
    const [first, second] = sourceId < snapshotId ? [sourceId, snapshotId] : [snapshotId, sourceId];
    return this.locks.run(first, () => this.locks.run(second, () => this.snapshotLocked(sourceId, snapshotId, options.onCut)));
  }

  private async snapshotLocked(sourceId: DeviceId, snapshotId: DeviceId, onCut: (() => void) | undefined): Promise<PoolDeviceInfo> {
    const source = await this.inspect(sourceId);
    const existing = await this.find(snapshotId);
    if (existing) {
      if (existing.sizeBytes === source.sizeBytes) return existing;
      throw new StorageError(Code.ALREADY_EXISTS, 'snapshot id is taken by a device of another size', {
        details: { device: snapshotId, source: sourceId },
      });
    }
    const info = await this.provisioning(snapshotId, source.sizeBytes, () =>
      this.makeAtomically(snapshotId, async (dest) => {
        const src = await open(source.path, 'r');
        try {
          const method = onCut ? await this.copyAfterCut(sourceId, snapshotId, src, dest, source.sizeBytes, onCut) : await cloneOrCopy(src, dest, source.sizeBytes);
          if (method === 'copy' && !this.warnedNoReflink) {
            this.warnedNoReflink = true;
            this.log.warn({ pool: this.dir, device: snapshotId, source: sourceId, hint: NO_REFLINK_HINT }, NO_REFLINK_WARNING);
          }
        } finally {
          await src.close();
        }
      }),
    );
    this.log.info({ device: snapshotId, source: sourceId, sizeBytes: source.sizeBytes }, 'snapshot created');
    return info;
  }

  /** The cut, then the copy filled while writes go on (file-cut-copy.ts). */
  private async copyAfterCut(sourceId: DeviceId, snapshotId: DeviceId, src: FileHandle, dest: FileHandle, sizeBytes: number, onCut: () => void): Promise<CopyMethod> {
    await dest.truncate(sizeBytes);
    const copy = new CutCopy(src, dest, sizeBytes);
    const since = performance.now();
    this.cuts.set(sourceId, copy);
    try {
      onCut();
      const stats = await copy.fill();
      this.log.info({ device: snapshotId, source: sourceId, fillMs: Math.round(performance.now() - since), ...stats }, 'snapshot copy filled after its cut');
      return stats.method;
    } finally {
      this.cuts.delete(sourceId);
    }
  }

  async inspect(id: DeviceId): Promise<PoolDeviceInfo> {
    this.checkOpen();
    const info = await this.find(id);
    if (!info) throw new StorageError(Code.NOT_FOUND, 'device not found', { details: { device: id, pool: this.dir } });
    return info;
  }

  async list(): Promise<PoolDeviceInfo[]> {
    this.checkOpen();
    let names: string[];
    try {
      names = await readdir(this.devicesDir);
    } catch (err) {
      throw fromNodeError(err, 'list devices', { pool: this.dir });
    }
    const ids: DeviceId[] = [];
    for (const name of names) {
      if (name.startsWith('.') || !name.endsWith(DEVICE_SUFFIX)) continue;
      try {
        ids.push(asDeviceId(name.slice(0, -DEVICE_SUFFIX.length)));
      } catch {
        this.log.warn({ pool: this.dir, file: name }, 'foreign file in pool directory ignored');
      }
    }
    const infos = await Promise.all(ids.sort().map((id) => this.find(id)));
    return infos.filter((info): info is PoolDeviceInfo => info !== undefined);
  }

  async open(id: DeviceId): Promise<BlockDevice> {
    const info = await this.inspect(id);
    return openFileDevice(info.path, id, info.sizeBytes, this.log, undefined, () => this.cuts.get(id));
  }

  /** Marks the pool closed; in the xfs-image layout also unmounts the image (open devices must be closed first). */
  async close(): Promise<void> {
    this.closed = true;
    await this.image?.unmount();
  }

  private pathOf(id: DeviceId): string {
    return join(this.devicesDir, `${id}${DEVICE_SUFFIX}`);
  }

  /** The device's info, or undefined when it does not exist. */
  private async find(id: DeviceId): Promise<PoolDeviceInfo | undefined> {
    const path = this.pathOf(id);
    try {
      const st = await stat(path);
      return { id, sizeBytes: st.size, allocatedBytes: st.blocks * 512, path };
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw fromNodeError(err, 'inspect device', { device: id });
    }
  }

  /** The space of the filesystem the devices live on; in the xfs-image layout free never above the host's. */
  private async statfs(): Promise<FsSpace> {
    if (!this.image) return spaceOf(this.dir, 'pool directory');
    const [inner, host] = await Promise.all([this.image.imageSpace(), this.image.hostSpace()]);
    return { totalBytes: inner.totalBytes, freeBytes: Math.min(inner.freeBytes, host.freeBytes) };
  }

  /**
   * Runs `make` with `sizeBytes` reserved for `id`, after checking that the pool's
   * provisioning limit allows it. The reservation replaces the device's current size.
   */
  private async provisioning<T>(id: DeviceId, sizeBytes: number, make: () => Promise<T>): Promise<T> {
    if (this.capacityBytes !== undefined) {
      const devices = await this.list();
      let provisionedBytes = sizeBytes;
      for (const d of devices) if (!this.pending.has(d.id) && d.id !== id) provisionedBytes += d.sizeBytes;
      for (const [other, bytes] of this.pending) if (other !== id) provisionedBytes += bytes;
      const limitBytes = Math.floor(this.capacityBytes * this.overcommitRatio);
      if (provisionedBytes > limitBytes) {
        throw new StorageError(Code.RESOURCE_EXHAUSTED, 'pool cannot provision the device', {
          details: { device: id, sizeBytes, provisionedBytes, limitBytes, pool: this.dir },
        });
      }
    }
    this.pending.set(id, sizeBytes);
    try {
      return await make();
    } finally {
      this.pending.delete(id);
    }
  }

  /** Fills a temp file with `fill`, syncs it, renames it to the device's name, syncs the dir. */
  private async makeAtomically(id: DeviceId, fill: (fh: FileHandle) => Promise<void>): Promise<PoolDeviceInfo> {
    const temp = join(this.devicesDir, `.${id}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
    try {
      const fh = await open(temp, 'wx', 0o600);
      try {
        await fill(fh);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(temp, this.pathOf(id));
      await syncDirectory(this.devicesDir);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw fromNodeError(err, 'make device file', { device: id });
    }
    return this.inspect(id);
  }

  private checkOpen(): void {
    if (this.closed) throw new StorageError(Code.FAILED_PRECONDITION, 'pool is closed', { details: { pool: this.dir } });
  }
}
