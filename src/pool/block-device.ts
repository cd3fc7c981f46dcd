/**
 * A BlockDevice on a kernel block device (a dm-thin device of the dm pool). Reads, writes
 * and flush take the file device's path (file-device.ts: buffered pread/pwrite batched on
 * the thread pool, fdatasync), which works on a block device node as it does on a file.
 * Trim and write-zeroes differ: on a block device fallocate(PUNCH_HOLE) needs
 * REQ_OP_WRITE_ZEROES, which dm-thin lacks, so
 * - trim (and write-zeroes that may trim) discards the whole data blocks inside the range
 *   (BLKDISCARD: dm-thin unmaps them, and unmapped blocks read as zeros) and zeroes the
 *   unaligned edges (fallocate ZERO_RANGE, which the kernel turns into zero writes; bytes
 *   outside whole sectors are written as zeros);
 * - write-zeroes without trim is ZERO_RANGE over the whole range (blocks stay allocated).
 * Both ioctls drop the range from the page cache, so later buffered reads see zeros.
 *
 * allocatedRanges comes from the dm backend (dm-backend.ts, dm-extents.ts: the thin pool's
 * mapping from a metadata snapshot, after a flush of this device's page cache); SEEK_DATA
 * on a block device node would call every byte data.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import type { DeviceId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE, blockDiscard, fallocate } from '../native/index.js';
import type { BlockDevice } from './backend.js';
import { openFileDevice } from './file-device.js';

/** Block devices take ZERO_RANGE and discards in whole logical sectors. */
const SECTOR_BYTES = 512;

class KernelBlockDevice implements BlockDevice {
  private closed = false;
  readonly writev?: BlockDevice['writev'];
  readonly readInto?: BlockDevice['readInto'];

  constructor(
    private readonly inner: BlockDevice,
    private readonly ctl: FileHandle,
    /** Discards are whole multiples of this (the pool's data block). */
    private readonly discardBytes: number,
  ) {
    const { writev, readInto } = inner;
    if (writev) this.writev = (offset, parts, fua) => writev.call(inner, offset, parts, fua);
    if (readInto) this.readInto = (offset, target) => readInto.call(inner, offset, target);
  }

  get id(): DeviceId {
    return this.inner.id;
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }

  write(offset: number, data: Uint8Array, fua?: boolean): Promise<void> {
    return this.inner.write(offset, data, fua);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  async trim(offset: number, length: number): Promise<void> {
    this.checkOpen();
    const start = Math.ceil(offset / this.discardBytes) * this.discardBytes;
    const end = Math.floor((offset + length) / this.discardBytes) * this.discardBytes;
    if (end <= start) return this.zero(offset, length);
    if (start > offset) await this.zero(offset, start - offset);
    await this.call('discard', () => blockDiscard(this.ctl.fd, start, end - start), start, end - start);
    if (offset + length > end) await this.zero(end, offset + length - end);
  }

  async writeZeroes(offset: number, length: number, mayTrim: boolean): Promise<void> {
    this.checkOpen();
    if (mayTrim) return this.trim(offset, length);
    return this.zero(offset, length);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.inner.close();
    } finally {
      await this.ctl.close();
    }
  }

  /** ZERO_RANGE over the whole sectors of the range; the partial sectors at its ends are written with zeros. */
  private async zero(offset: number, length: number): Promise<void> {
    const end = offset + length;
    const start = Math.ceil(offset / SECTOR_BYTES) * SECTOR_BYTES;
    const stop = Math.floor(end / SECTOR_BYTES) * SECTOR_BYTES;
    if (stop <= start) return this.inner.write(offset, Buffer.alloc(length));
    if (start > offset) await this.inner.write(offset, Buffer.alloc(start - offset));
    await this.call('zero range', () => fallocate(this.ctl.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, start, stop - start), start, stop - start);
    if (end > stop) await this.inner.write(stop, Buffer.alloc(end - stop));
  }

  private async call(what: string, fn: () => Promise<void>, offset: number, length: number): Promise<void> {
    try {
      await fn();
    } catch (err) {
      throw fromNodeError(err, what, { device: this.inner.id, offset, length });
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new StorageError(Code.FAILED_PRECONDITION, 'device is closed', { details: { device: this.inner.id } });
  }
}

/**
 * Opens the block device at `path` as device `id` of `sizeBytes`. `discardBytes` is the
 * granularity at which a discard really unmaps (the thin pool's block size).
 */
export async function openBlockDevice(path: string, id: DeviceId, sizeBytes: number, discardBytes: number, log: Logger): Promise<BlockDevice> {
  let ctl: FileHandle;
  try {
    ctl = await open(path, 'r+');
  } catch (err) {
    throw fromNodeError(err, 'open block device', { device: id, path });
  }
  try {
    const inner = await openFileDevice(path, id, sizeBytes, log);
    return new KernelBlockDevice(inner, ctl, discardBytes);
  } catch (err) {
    await ctl.close();
    throw err;
  }
}
