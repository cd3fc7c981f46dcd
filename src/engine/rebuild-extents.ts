/**
 * Where a rebuild source holds data: its allocated extents over a run of regions, asked
 * from the source's replica service (AllocatedRanges), so that the rebuild reads and sends
 * only data and discards the rest on the target. A source that predates the call
 * (UNIMPLEMENTED) has everything counted as data, and is not asked again (only the
 * copy workers that asked at the same time as the first get that answer too).
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { Extent } from '../pool/backend.js';
import type { ReplicaRefInput } from '../replica/replica-manager.js';
import type { ReplicaControl } from './engine-types.js';

/**
 * Holes shorter than this between two extents are copied as data: one read of a few zero
 * bytes costs less than two more requests, and a fragmented file cannot turn the copy into
 * thousands of tiny ones. Regions that read as zeros still go as write-zeroes.
 */
export const MIN_HOLE_BYTES = 64 << 10;

export class SourceExtents {
  /** False once the source answered UNIMPLEMENTED. */
  private supported = true;

  constructor(
    private readonly control: ReplicaControl,
    private readonly ref: ReplicaRefInput,
    private readonly epoch: number,
    /** Called once, when the source turns out not to know the call. */
    private readonly onUnsupported: (err: StorageError) => void,
  ) {}

  /**
   * The data extents of [offset, offset + lengthBytes), sorted, inside the range, with
   * holes under MIN_HOLE_BYTES merged away. Asks as many times as the source's extent
   * limit needs. The caller holds the range's region locks, so no live write lands there
   * between this answer and the copy.
   */
  async of(offset: number, lengthBytes: number): Promise<Extent[]> {
    const end = offset + lengthBytes;
    const found: Extent[] = [];
    let at = offset;
    while (at < end && this.supported) {
      let answer;
      try {
        answer = await this.control.allocatedRanges(this.ref, this.epoch, at, end - at);
      } catch (err) {
        if (!isStorageError(err, Code.UNIMPLEMENTED)) throw err;
        // Workers that asked at the same time all get here; say it once.
        if (this.supported) this.onUnsupported(err);
        this.supported = false;
        break;
      }
      if (!(answer.endOffset > at && answer.endOffset <= end)) {
        throw new StorageError(Code.INTERNAL,
          `replica ${this.ref.replicaId} answered allocated ranges of [${at}, ${end}) up to ${answer.endOffset}, outside the range asked for`);
      }
      for (const e of answer.extents) {
        const from = Math.max(e.offset, at);
        const to = Math.min(e.offset + e.lengthBytes, answer.endOffset);
        const last = found[found.length - 1];
        if (to <= from) continue;
        if (last && from < last.offset + last.lengthBytes) {
          throw new StorageError(Code.INTERNAL, `replica ${this.ref.replicaId} answered allocated ranges out of order at ${from}`);
        }
        found.push({ offset: from, lengthBytes: to - from });
      }
      at = answer.endOffset;
    }
    if (at < end) found.push({ offset: at, lengthBytes: end - at });
    return mergeSmallHoles(found, MIN_HOLE_BYTES);
  }
}

/** Sorted disjoint extents with every gap shorter than `minHoleBytes` filled in. */
export function mergeSmallHoles(extents: readonly Extent[], minHoleBytes: number): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && e.offset - (last.offset + last.lengthBytes) < minHoleBytes) {
      last.lengthBytes = e.offset + e.lengthBytes - last.offset;
    } else {
      out.push({ ...e });
    }
  }
  return out;
}
