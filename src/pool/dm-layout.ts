/**
 * The dm pool's layout, as pure functions: how the disks are cut into a metadata slice and
 * a data area, the device-mapper tables that stack them, the names of the devices, and
 * how the kernel's status lines read. No I/O here, so all of it is unit-tested on hosts
 * without device-mapper.
 *
 *   disk0: [ metadata slice | data ...... ]   disk1: [ data ...... ]   disk2 ...
 *            cairn-<tag>-meta   \__________ cairn-<tag>-data (dm-linear) __________/
 *                     \______________________ cairn-<tag>-pool (dm-thin-pool) ______/
 *                                      cairn-<tag>-<device id> (dm-thin), one per device
 */
import { createHash } from 'node:crypto';
import { Code, StorageError } from '../common/errors.js';
import type { DeviceId } from '../common/ids.js';
import type { DmTarget } from '../native/index.js';

export const SECTOR_BYTES = 512;
/** dm-thin-pool's data block: 64 KiB, the smallest it takes and the best for snapshots. */
export const DEFAULT_BLOCK_SECTORS = 128;
/** thin-pool metadata blocks are always 4 KiB. */
export const METADATA_BLOCK_BYTES = 4096;
/**
 * The metadata sizing rule (lvm2's): 64 bytes of metadata per data block, for GROWTH_FACTOR
 * times the pool's first data size, so that adding disks later needs no metadata resize,
 * rounded up to 1 MiB and held between 4 MiB and the kernel's limit (16 GiB, of which it
 * uses 15.81 GiB).
 */
export const METADATA_BYTES_PER_BLOCK = 64;
export const METADATA_GROWTH_FACTOR = 4;
export const METADATA_MIN_BYTES = 4 << 20;
export const METADATA_MAX_BYTES = 16 * 1024 ** 3;
const MIB = 1 << 20;
/** DM_NAME_LEN minus the NUL. */
const DM_NAME_MAX_BYTES = 127;

export interface DiskExtent {
  path: string;
  /** The disk's whole size in sectors (as it was when it joined the pool). */
  sizeSectors: number;
}

/** How many bytes the metadata slice of a pool whose first data area is `dataBytes` gets. */
export function metadataBytesFor(dataBytes: number, blockSectors = DEFAULT_BLOCK_SECTORS): number {
  const blocks = Math.ceil((dataBytes * METADATA_GROWTH_FACTOR) / (blockSectors * SECTOR_BYTES));
  const raw = Math.ceil((blocks * METADATA_BYTES_PER_BLOCK) / MIB) * MIB;
  return Math.min(METADATA_MAX_BYTES, Math.max(METADATA_MIN_BYTES, raw));
}

/**
 * The metadata slice for a new pool on `disks`: sized by metadataBytesFor from the data the
 * disks hold, taken from the start of the first disk. INVALID_ARGUMENT when the first disk
 * cannot hold it plus at least one data block.
 */
export function planMetadataSectors(disks: readonly DiskExtent[], blockSectors = DEFAULT_BLOCK_SECTORS): number {
  const first = disks[0];
  if (!first) throw new StorageError(Code.INVALID_ARGUMENT, 'a dm pool needs at least one disk');
  const totalSectors = disks.reduce((sum, d) => sum + d.sizeSectors, 0);
  const metaSectors = metadataBytesFor(totalSectors * SECTOR_BYTES, blockSectors) / SECTOR_BYTES;
  if (first.sizeSectors < metaSectors + blockSectors) {
    throw new StorageError(Code.INVALID_ARGUMENT, 'the first pool disk is too small for the metadata slice and one data block', {
      details: { disk: first.path, sizeBytes: first.sizeSectors * SECTOR_BYTES, metadataBytes: metaSectors * SECTOR_BYTES },
    });
  }
  return metaSectors;
}

/** The metadata device's table: the first `metaSectors` of the first disk. */
export function metadataTable(disks: readonly DiskExtent[], metaSectors: number): DmTarget[] {
  return [{ startSector: 0, lengthSectors: metaSectors, type: 'linear', params: `${disks[0]!.path} 0` }];
}

/**
 * The data device's table: the first disk after the metadata slice, then every other disk
 * whole, concatenated with dm-linear and cut to a whole number of data blocks.
 */
export function dataTable(disks: readonly DiskExtent[], metaSectors: number, blockSectors = DEFAULT_BLOCK_SECTORS): DmTarget[] {
  const pieces = disks.map((d, i) => ({ path: d.path, offset: i === 0 ? metaSectors : 0, length: i === 0 ? d.sizeSectors - metaSectors : d.sizeSectors }));
  const total = pieces.reduce((sum, p) => sum + p.length, 0);
  let room = Math.floor(total / blockSectors) * blockSectors;
  const targets: DmTarget[] = [];
  let start = 0;
  for (const p of pieces) {
    const length = Math.min(p.length, room);
    if (length <= 0) break;
    targets.push({ startSector: start, lengthSectors: length, type: 'linear', params: `${p.path} ${p.offset}` });
    start += length;
    room -= length;
  }
  return targets;
}

export function tableSectors(targets: readonly DmTarget[]): number {
  return targets.reduce((sum, t) => sum + t.lengthSectors, 0);
}

/**
 * The thin-pool table. `error_if_no_space`: when the data area is full, writes that need a
 * new block fail at once (ENOSPC) instead of being queued for 60 s and then failed; see
 * docs/pool-dm.md "Low space".
 */
export function poolTable(metaDev: string, dataDev: string, dataSectors: number, blockSectors: number, lowWaterBlocks: number): DmTarget[] {
  return [{
    startSector: 0, lengthSectors: dataSectors, type: 'thin-pool',
    params: `${metaDev} ${dataDev} ${blockSectors} ${lowWaterBlocks} 1 error_if_no_space`,
  }];
}

export function thinTable(poolDev: string, thinId: number, sizeBytes: number): DmTarget[] {
  return [{ startSector: 0, lengthSectors: sizeBytes / SECTOR_BYTES, type: 'thin', params: `${poolDev} ${thinId}` }];
}

/** dm's low-water mark: an event when free data blocks drop below 10 % (we poll instead). */
export function lowWaterBlocks(dataSectors: number, blockSectors: number): number {
  return Math.max(1, Math.floor(dataSectors / blockSectors / 10));
}

export interface PoolNames {
  meta: string;
  data: string;
  pool: string;
  /** Every device of this pool starts with it; the thin devices follow it with their id. */
  prefix: string;
}

/** A pool tag: 1-16 of [a-z0-9], the same on every start (stored with the pool). */
export function poolNames(tag: string): PoolNames {
  if (!/^[a-z0-9]{1,16}$/.test(tag)) throw new StorageError(Code.INVALID_ARGUMENT, 'a dm pool tag is 1-16 lower-case letters or digits', { details: { tag } });
  const prefix = `cairn-${tag}`;
  return { meta: `${prefix}-meta`, data: `${prefix}-data`, pool: `${prefix}-pool`, prefix };
}

/** The dm name of a thin device: `<prefix>-<id>`, or `<prefix>-h<hash>` where that is too long. */
export function thinName(names: PoolNames, id: DeviceId): string {
  const plain = `${names.prefix}-${id}`;
  if (Buffer.byteLength(plain) <= DM_NAME_MAX_BYTES && !['meta', 'data', 'pool'].includes(id)) return plain;
  return `${names.prefix}-h${createHash('sha256').update(id).digest('hex').slice(0, 32)}`;
}

export type PoolMode = 'rw' | 'ro' | 'out_of_data_space' | 'fail';

export interface ThinPoolStatus {
  mode: PoolMode;
  transactionId: number;
  usedMetadataBlocks: number;
  totalMetadataBlocks: number;
  usedDataBlocks: number;
  totalDataBlocks: number;
  /** error_if_no_space (true) or queue_if_no_space. */
  errorIfNoSpace: boolean;
  needsCheck: boolean;
}

function statusError(line: string, what: string): StorageError {
  return new StorageError(Code.INTERNAL, `cannot read the ${what} status line`, { details: { status: line } });
}

/**
 * Reads a thin-pool status line (Documentation/admin-guide/device-mapper/thin-provisioning):
 * `<transaction id> <used meta>/<total meta> <used data>/<total data> <held root> ro|rw|out_of_data_space
 *  [no_]discard_passdown error|queue_if_no_space needs_check|- [metadata low watermark]`, or `Fail`.
 */
export function parsePoolStatus(line: string): ThinPoolStatus {
  const f = line.trim().split(/\s+/);
  if (f[0] === 'Fail') {
    return { mode: 'fail', transactionId: 0, usedMetadataBlocks: 0, totalMetadataBlocks: 0, usedDataBlocks: 0, totalDataBlocks: 0, errorIfNoSpace: true, needsCheck: true };
  }
  const ratio = (text: string | undefined): [number, number] => {
    const m = /^(\d+)\/(\d+)$/.exec(text ?? '');
    if (!m) throw statusError(line, 'thin-pool');
    return [Number(m[1]), Number(m[2])];
  };
  const [usedMeta, totalMeta] = ratio(f[1]);
  const [usedData, totalData] = ratio(f[2]);
  const mode = f[4];
  if (mode !== 'rw' && mode !== 'ro' && mode !== 'out_of_data_space') throw statusError(line, 'thin-pool');
  return {
    mode,
    transactionId: Number(f[0]),
    usedMetadataBlocks: usedMeta,
    totalMetadataBlocks: totalMeta,
    usedDataBlocks: usedData,
    totalDataBlocks: totalData,
    errorIfNoSpace: f[6] === 'error_if_no_space',
    needsCheck: f[7] === 'needs_check',
  };
}

/** Reads a thin status line: `<mapped sectors> <highest mapped sector>`, or `Fail`. */
export function parseThinStatus(line: string): { mappedSectors: number; failed: boolean } {
  const f = line.trim().split(/\s+/);
  if (f[0] === 'Fail') return { mappedSectors: 0, failed: true };
  const mapped = Number(f[0]);
  if (!Number.isSafeInteger(mapped)) throw statusError(line, 'thin');
  return { mappedSectors: mapped, failed: false };
}
