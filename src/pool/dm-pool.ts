/**
 * The thin pool itself, under the dm backend: stacking the metadata, data and pool devices
 * from the recorded state (a new pool, a cairnd restart that finds them live, or a reboot
 * that finds none), growing it by a disk, reading its status, and sending it messages.
 */
import { open } from 'node:fs/promises';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { dmMessage, type DmStatus } from '../native/index.js';
import {
  DEFAULT_BLOCK_SECTORS, SECTOR_BYTES, dataTable, lowWaterBlocks, metadataTable, parsePoolStatus, planMetadataSectors, poolNames, poolTable,
  tableSectors, type DiskExtent, type PoolNames, type ThinPoolStatus,
} from './dm-layout.js';
import { devNumber, ensureDevice, findDevice, inspectDisk, reloadDevice } from './dm-kernel.js';
import { newPoolState, savePoolState, type DmPoolState } from './dm-state.js';

/** dm-thin's superblock magic (27022010), little-endian at byte 32 of the metadata device. */
const THIN_SUPERBLOCK_MAGIC = 27022010n;
const SUPERBLOCK_BYTES = 4096;

/** The kernel calls growing a pool makes; tests pass a fake. */
export interface ThinPoolKernel {
  inspectDisk: typeof inspectDisk;
  findDevice: typeof findDevice;
  reloadDevice: typeof reloadDevice;
}

const KERNEL: ThinPoolKernel = { inspectDisk, findDevice, reloadDevice };

export class ThinPool {
  readonly names: PoolNames;
  private poolDev = '';

  constructor(readonly dir: string, readonly state: DmPoolState, private readonly log: Logger, private readonly kernel: ThinPoolKernel = KERNEL) {
    this.names = poolNames(state.tag);
  }

  get blockBytes(): number {
    return this.state.blockSectors * SECTOR_BYTES;
  }

  /** "major:minor" of the pool device, as thin tables name it. */
  get device(): string {
    return this.poolDev;
  }

  /**
   * Plans a new pool on `paths` and writes its state. Refuses a first disk that already
   * holds thin-pool metadata (a pool whose state file was lost): formatting would destroy it.
   */
  static async create(dir: string, tag: string, paths: readonly string[], log: Logger, blockSectors = DEFAULT_BLOCK_SECTORS): Promise<ThinPool> {
    if (paths.length === 0) throw new StorageError(Code.INVALID_ARGUMENT, 'a dm pool needs at least one disk (--pool-devices)');
    if (!Number.isSafeInteger(blockSectors) || blockSectors < 128 || blockSectors % 128 !== 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, 'the thin pool block size must be a multiple of 64 KiB', { details: { blockSectors } });
    }
    const disks: DiskExtent[] = [];
    const seen = new Set<string>();
    for (const path of paths) {
      const { sizeSectors, dev } = await inspectDisk(path);
      if (seen.has(dev)) throw new StorageError(Code.INVALID_ARGUMENT, 'the same disk is listed twice', { details: { disk: path } });
      seen.add(dev);
      disks.push({ path, sizeSectors });
    }
    const metadataSectors = planMetadataSectors(disks, blockSectors);
    await wipeSuperblock(disks[0]!.path);
    const state = newPoolState(tag, blockSectors, metadataSectors, disks);
    await savePoolState(dir, state);
    log.info({ pool: dir, tag, disks: paths, metadataBytes: metadataSectors * SECTOR_BYTES, blockBytes: blockSectors * SECTOR_BYTES }, 'dm pool formatted');
    return new ThinPool(dir, state, log);
  }

  /** Makes the metadata, data and pool devices live (creating or reloading them as needed). */
  async activate(): Promise<void> {
    for (const disk of this.state.disks) {
      const { sizeSectors } = await inspectDisk(disk.path);
      if (sizeSectors < disk.sizeSectors) {
        throw new StorageError(Code.FAILED_PRECONDITION, 'a pool disk is smaller than when it joined the pool: is it the right disk?', {
          details: { disk: disk.path, sizeBytes: sizeSectors * SECTOR_BYTES, recordedBytes: disk.sizeSectors * SECTOR_BYTES },
        });
      }
    }
    const meta = await ensureDevice(this.names.meta, metadataTable(this.state.disks, this.state.metadataSectors), this.log);
    const data = await ensureDevice(this.names.data, this.dataTargets(), this.log);
    const pool = await ensureDevice(this.names.pool, this.poolTargets(devNumber(meta), devNumber(data)), this.log);
    this.poolDev = devNumber(pool);
    const status = await this.status();
    if (status.mode !== 'rw') this.log.error({ pool: this.dir, mode: status.mode, needsCheck: status.needsCheck }, 'dm pool is not writable');
    this.log.info({ pool: this.dir, dm: this.names.pool, dataBlocks: status.totalDataBlocks, usedDataBlocks: status.usedDataBlocks }, 'dm pool active');
  }

  async status(): Promise<ThinPoolStatus> {
    const s = await findDevice(this.names.pool);
    const line = s?.targets[0]?.params;
    if (line === undefined) throw new StorageError(Code.UNAVAILABLE, 'the thin pool device is not active', { details: { dm: this.names.pool } });
    return parsePoolStatus(line);
  }

  /** Sends a message to the pool target (create_thin, create_snap, delete). */
  message(text: string): Promise<string | null> {
    return dmMessage(this.names.pool, text);
  }

  /**
   * Adds a disk to the live pool: the state is written first (so a crash mid-way finishes
   * the growth on the next start), then the data device's linear table is reloaded longer,
   * then the pool's table with the new length; thin devices stay online throughout.
   */
  async addDisk(path: string): Promise<void> {
    const { sizeSectors, dev } = await this.kernel.inspectDisk(path);
    for (const d of this.state.disks) {
      if (d.path === path || (await this.kernel.inspectDisk(d.path)).dev === dev) {
        throw new StorageError(Code.ALREADY_EXISTS, 'the disk is already in the pool', { details: { disk: path } });
      }
    }
    const before = this.state.disks.slice();
    this.state.disks.push({ path, sizeSectors });
    await savePoolState(this.dir, this.state);
    try {
      await this.reloadStack();
    } catch (err) {
      this.state.disks = before;
      await this.rollBackGrowth(path, err);
      throw err;
    }
    this.log.info({ pool: this.dir, disk: path, sizeBytes: sizeSectors * SECTOR_BYTES, dataBytes: tableSectors(this.dataTargets()) * SECTOR_BYTES }, 'dm pool grown');
  }

  /**
   * Puts the state file and the data device back as they were before a failed growth.
   * A step that fails is logged with the growth's error (which the caller gets): the pool
   * may then need the growth finished or undone by hand, or by the next start.
   */
  private async rollBackGrowth(disk: string, cause: unknown): Promise<void> {
    const steps: [string, () => Promise<void>][] = [
      ['state file', () => savePoolState(this.dir, this.state)],
      ['data device', () => this.kernel.reloadDevice(this.names.data, this.dataTargets(), { noLockfs: true })],
    ];
    for (const [step, run] of steps) {
      try {
        await run();
      } catch (err) {
        this.log.error({ pool: this.dir, disk, step, err: (err as Error).message, code: (err as StorageError).code, growthErr: (cause as Error).message },
          'dm pool growth failed and its rollback failed too; check the pool state file and the data device');
      }
    }
  }

  private async reloadStack(): Promise<void> {
    await this.kernel.reloadDevice(this.names.data, this.dataTargets(), { noLockfs: true });
    const [meta, data] = await Promise.all([this.kernel.findDevice(this.names.meta), this.kernel.findDevice(this.names.data)]);
    await this.kernel.reloadDevice(this.names.pool, this.poolTargets(devNumber(required(meta)), devNumber(required(data))), { noLockfs: true });
  }

  private dataTargets() {
    return dataTable(this.state.disks, this.state.metadataSectors, this.state.blockSectors);
  }

  private poolTargets(metaDev: string, dataDev: string) {
    const sectors = tableSectors(this.dataTargets());
    return poolTable(metaDev, dataDev, sectors, this.state.blockSectors, lowWaterBlocks(sectors, this.state.blockSectors));
  }
}

function required(s: DmStatus | undefined): DmStatus {
  if (!s) throw new StorageError(Code.UNAVAILABLE, 'a device of the pool stack vanished');
  return s;
}

/** Zeroes the first 4 KiB of the metadata slice so the kernel formats it, unless it holds a pool. */
async function wipeSuperblock(path: string): Promise<void> {
  try {
    const fh = await open(path, 'r+');
    try {
      const buf = Buffer.alloc(SUPERBLOCK_BYTES);
      await fh.read(buf, 0, SUPERBLOCK_BYTES, 0);
      if (buf.readBigUInt64LE(32) === THIN_SUPERBLOCK_MAGIC) {
        throw new StorageError(Code.FAILED_PRECONDITION,
          'the first pool disk holds thin-pool metadata but the pool directory has no dm-pool.json: refusing to format it (restore the file, or wipe the disk to start over)',
          { details: { disk: path } });
      }
      await fh.write(Buffer.alloc(SUPERBLOCK_BYTES), 0, SUPERBLOCK_BYTES, 0);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw fromNodeError(err, 'prepare pool metadata', { disk: path });
  }
}
