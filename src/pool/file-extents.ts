/**
 * Allocated extents of a sparse file by SEEK_DATA / SEEK_HOLE, for rebuilds that copy only
 * data. The kernel answers from the filesystem's extent map and the page cache (ext4, xfs,
 * btrfs and tmpfs count dirty cached pages as data), so a write that completed before the
 * call is seen even before it reaches the disk. A filesystem without the two whence values
 * answers with the generic version (the whole file is data): correct, only not sparse.
 */
import { fromNodeError } from '../common/errors.js';
import type { DeviceId } from '../common/ids.js';
import { seekData, seekHole } from '../native/index.js';
import type { AllocatedRanges, Extent } from './backend.js';

/**
 * The allocated extents of [offset, offset + lengthBytes) of the file open on `fd`, at most
 * `maxExtents` of them (then `endOffset` says where to ask again). Two thread-pool calls
 * per extent. Bytes past the end of the file are holes.
 */
export async function fileAllocatedRanges(fd: number, id: DeviceId, offset: number, lengthBytes: number, maxExtents: number): Promise<AllocatedRanges> {
  const end = offset + lengthBytes;
  const extents: Extent[] = [];
  let at = offset;
  try {
    while (at < end && extents.length < maxExtents) {
      const data = await seekData(fd, at);
      if (data === null || data >= end) {
        at = end;
        break;
      }
      const stop = Math.min((await seekHole(fd, data)) ?? end, end);
      extents.push({ offset: data, lengthBytes: stop - data });
      at = stop;
    }
  } catch (err) {
    throw fromNodeError(err, 'seek data', { device: id, offset: at });
  }
  return { extents, endOffset: at };
}
