/**
 * Where a thin device holds data, from the thin pool's own mapping, for rebuilds that copy
 * only data. The live metadata cannot be read while the pool runs, so each call asks the
 * pool for a metadata snapshot (`reserve_metadata_snap`, which first commits the current
 * transaction: every write that completed is mapped in it), streams `thin_dump
 * --metadata-snap --dev-id <id>` of the metadata device, keeps the mappings inside the
 * range, and releases the snapshot. Mapped blocks are whole pool blocks (64 KiB by
 * default), so the answer may be up to a block wider than what was written: more, never
 * less, as BlockDevice.allocatedRanges allows.
 *
 * Calls on one pool are serialized by the caller (one metadata snapshot at a time). A
 * snapshot left reserved by a crash is released and taken again.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Code, StorageError } from '../common/errors.js';
import type { AllocatedRanges, Extent } from './backend.js';

export interface ThinMapping {
  /** Reads the mapping of thin device `thinId` from the pool's metadata snapshot, line by line. */
  dump(thinId: number, onLine: (line: string) => void): Promise<void>;
  message(text: string): Promise<unknown>;
}

/** `details.reason` when thin_dump is not installed. */
export const THIN_DUMP_MISSING = 'THIN_DUMP_MISSING';

const SINGLE = /<single_mapping\s+origin_block="(\d+)"/;
const RANGE = /<range_mapping\s+origin_begin="(\d+)"\s+data_begin="\d+"\s+length="(\d+)"/;

/** The pool's mapping of `thinId` inside [offset, offset + lengthBytes), as byte extents. */
export async function thinAllocatedRanges(
  mapping: ThinMapping, thinId: number, blockBytes: number, offset: number, lengthBytes: number, maxExtents: number,
): Promise<AllocatedRanges> {
  await reserveSnapshot(mapping);
  const end = offset + lengthBytes;
  const blocks: [number, number][] = [];
  try {
    await mapping.dump(thinId, (line) => {
      let m = SINGLE.exec(line);
      if (m) return void keep(Number(m[1]), 1);
      m = RANGE.exec(line);
      if (m) keep(Number(m[1]), Number(m[2]));
    });
  } finally {
    await mapping.message('release_metadata_snap');
  }
  function keep(first: number, count: number): void {
    const from = first * blockBytes;
    const to = (first + count) * blockBytes;
    if (to > offset && from < end) blocks.push([Math.max(from, offset), Math.min(to, end)]);
  }
  return toExtents(blocks, offset, end, maxExtents);
}

/** Sorted, merged extents, at most `maxExtents`; endOffset is where the next call starts. */
export function toExtents(ranges: [number, number][], offset: number, end: number, maxExtents: number): AllocatedRanges {
  ranges.sort((a, b) => a[0] - b[0]);
  const extents: Extent[] = [];
  for (const [from, to] of ranges) {
    const last = extents[extents.length - 1];
    if (last && from <= last.offset + last.lengthBytes) {
      last.lengthBytes = Math.max(last.lengthBytes, to - last.offset);
      continue;
    }
    if (extents.length === maxExtents) return { extents, endOffset: from };
    extents.push({ offset: from, lengthBytes: to - from });
  }
  return { extents, endOffset: end };
}

async function reserveSnapshot(mapping: ThinMapping): Promise<void> {
  try {
    await mapping.message('reserve_metadata_snap');
  } catch {
    // One left reserved by a crashed call: release it and take a fresh one.
    await mapping.message('release_metadata_snap').catch(() => undefined);
    await mapping.message('reserve_metadata_snap');
  }
}

/** Runs `thin_dump --metadata-snap --dev-id <id> <metadataDevice>` and hands its lines over as they come. */
export function thinDump(metadataDevice: string, thinId: number, onLine: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('thin_dump', ['--metadata-snap', '--dev-id', String(thinId), metadataDevice], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      if (stderr.length < 4096) stderr += c.toString();
    });
    createInterface({ input: child.stdout }).on('line', onLine);
    child.on('error', (err: NodeJS.ErrnoException) => reject(err.code === 'ENOENT'
      ? new StorageError(Code.FAILED_PRECONDITION, 'thin_dump is not installed on this node: install thin-provisioning-tools (dm pools need it to rebuild only allocated data)',
        { cause: err, details: { reason: THIN_DUMP_MISSING } })
      : new StorageError(Code.INTERNAL, `thin_dump failed to start: ${err.message}`, { cause: err })));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new StorageError(Code.INTERNAL, `thin_dump of thin device ${thinId} exited with ${code}: ${stderr.trim()}`,
      { details: { thinId, metadataDevice } }))));
  });
}
