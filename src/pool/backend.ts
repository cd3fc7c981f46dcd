/**
 * The pool backend interface. A pool turns a node's local storage into thin-provisioned
 * devices: one per replica and one per snapshot. The `file` backend keeps one sparse file
 * per device; the `dm` backend one dm-thin device per device. Both report capacity
 * truthfully and both are idempotent by device id.
 */
import type { DeviceId } from '../common/ids.js';

export type PoolKind = 'file' | 'dm';

export interface PoolCapacity {
  /** Bytes the pool can hold in all (the filesystem's or the thin pool's data size). */
  totalBytes: number;
  /** Bytes actually allocated to devices of this pool. */
  usedBytes: number;
  /** Bytes still available for new data. */
  freeBytes: number;
  /** Sum of the devices' virtual sizes; may exceed totalBytes (thin provisioning). */
  provisionedBytes: number;
}

export interface PoolDeviceInfo {
  id: DeviceId;
  /** Virtual size as the client sees it. */
  sizeBytes: number;
  /** Bytes actually backed by storage (sparse files, thin blocks). */
  allocatedBytes: number;
  /** Where the device's bytes live: a file path or a /dev/mapper node. */
  path: string;
}

/** A byte range of a device that holds (or may hold) data. */
export interface Extent {
  offset: number;
  lengthBytes: number;
}

/**
 * The answer to BlockDevice.allocatedRanges: `extents` (sorted, disjoint, inside the range
 * asked for) are every allocated byte of [offset, endOffset); everything else there reads
 * as zeros. `endOffset` is the end of the range asked for unless the extent limit cut the
 * answer short: the caller then asks again from `endOffset`.
 */
export interface AllocatedRanges {
  extents: Extent[];
  endOffset: number;
}

/**
 * One open device, as the engine does I/O on it. Offsets and lengths are in bytes and must
 * lie inside [0, sizeBytes); the caller (the NBD server, a replica stream) checks bounds.
 */
export interface BlockDevice {
  readonly id: DeviceId;
  readonly sizeBytes: number;
  /** Reads `length` bytes at `offset`. Holes read as zeros. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Writes `data` at `offset`. With `fua`, the data is durable when the promise resolves. */
  write(offset: number, data: Uint8Array, fua?: boolean): Promise<void>;
  /**
   * Optional scatter-gather write: writes `parts` back to back at `offset`, exactly as
   * write() would write their concatenation (same durability, same `fua`), without joining
   * them into one buffer first. The NBD server passes a payload that arrived in several
   * socket chunks this way; for a device without it, it joins the parts and calls write().
   * The caller does not touch `parts` until the promise settles.
   */
  writev?(offset: number, parts: readonly Uint8Array[], fua?: boolean): Promise<void>;
  /**
   * Optional read into caller-owned buffers: fills `targets` back to back from `offset`
   * (one gather read), exactly as read(offset, their total length) would. Lets the NBD
   * server read into buffers it reuses; for a device without it, it calls read().
   */
  readInto?(offset: number, targets: readonly Uint8Array[]): Promise<void>;
  /** Makes every write that completed before this call durable (fdatasync). */
  flush(): Promise<void>;
  /** Drops the range; it reads back as zeros afterwards. */
  trim(offset: number, length: number): Promise<void>;
  /** Zeroes the range. With `mayTrim` the backend may deallocate it (NBD without NO_HOLE). */
  writeZeroes(offset: number, length: number, mayTrim: boolean): Promise<void>;
  /**
   * Optional: which bytes of [offset, offset + lengthBytes) are allocated, at most
   * `maxExtents` extents per answer (see AllocatedRanges). It may report more than is
   * allocated (never less): a byte outside every extent reads as zeros. The writes that
   * completed before the call are seen. A device without it counts every byte as allocated.
   */
  allocatedRanges?(offset: number, lengthBytes: number, maxExtents: number): Promise<AllocatedRanges>;
  /** Closes the device; flushes first. */
  close(): Promise<void>;
}

export interface SnapshotOptions {
  /**
   * The new device is a snapshot copy that nothing writes (not a restored volume's child):
   * a backend that limits provisioning (dm's overcommit ratio) does not count its virtual
   * size, as it only ever holds blocks it shares with its origin or that the origin left.
   */
  copy?: boolean;
  /**
   * Asks for a snapshot taken while writes go on. A backend that can calls `onCut` once the
   * copy's content is fixed (the cut): writes to the source from then on do not reach the
   * copy, so the caller may let them resume, and the promise resolves later, when the copy
   * is complete and durable. A backend that cannot never calls it: the copy is fixed when
   * the promise resolves, and the caller holds writes until then.
   */
  onCut?: () => void;
}

export interface PoolBackend {
  readonly kind: PoolKind;
  /**
   * True when snapshot() captures writes that completed without a flush and makes the copy
   * durable itself (a file pool: a reflink or copy sees the page cache, and the copy is
   * synced). Otherwise the caller flushes the source first (dm: thin blocks are mapped only
   * when writes reach the pool).
   */
  readonly snapshotFlushes?: boolean;
  capacity(): Promise<PoolCapacity>;
  /**
   * Creates a zero-filled device. Not an error when a device of that id and size already
   * exists (returns it); ALREADY_EXISTS when it exists with another size;
   * RESOURCE_EXHAUSTED when the pool cannot provision it.
   */
  create(id: DeviceId, sizeBytes: number): Promise<PoolDeviceInfo>;
  /** Deletes the device. Not an error when it does not exist. */
  delete(id: DeviceId): Promise<void>;
  /** Grows the device to `sizeBytes`. Shrinking is refused with INVALID_ARGUMENT. */
  resize(id: DeviceId, sizeBytes: number): Promise<PoolDeviceInfo>;
  /**
   * Makes `snapshotId` a point-in-time copy of `sourceId`. The caller quiesces writes to
   * the source first (the write barrier) and keeps them quiesced until the promise resolves,
   * or with `options.onCut` until the backend calls it.
   */
  snapshot(sourceId: DeviceId, snapshotId: DeviceId, options?: SnapshotOptions): Promise<PoolDeviceInfo>;
  /** NOT_FOUND when the device does not exist. */
  inspect(id: DeviceId): Promise<PoolDeviceInfo>;
  list(): Promise<PoolDeviceInfo[]>;
  /** Opens the device for I/O. NOT_FOUND when it does not exist. */
  open(id: DeviceId): Promise<BlockDevice>;
  close(): Promise<void>;
}
