/**
 * The rebuild's checksum comparison (rebuild.ts, step 4): the regions copied in a round are
 * compared, source against target, in runs of at most VERIFY_RUN_REGIONS consecutive regions,
 * each under the run's exclusive region locks so that no live write lands between the two
 * checksums. The rebuild copies the regions that differ again.
 */
import { Code, StorageError } from '../common/errors.js';
import type { ReplicaRefInput } from '../replica/replica-manager.js';
import type { RebuildContext } from './rebuild-context.js';

export const VERIFY_RUN_REGIONS = 64;
/** Checksum runs compared at once. */
export const VERIFY_PARALLEL_RUNS = 2;

/** What the comparison needs of a rebuild: its context, both replicas' refs, and the error a cancelled comparison throws. */
export type VerifyContext = Pick<RebuildContext, 'map' | 'locks' | 'sourceControl' | 'targetControl' | 'epoch' | 'regionBytes' | 'signal'> & {
  sourceRef: ReplicaRefInput;
  targetRef: ReplicaRefInput;
  cancelled(): StorageError;
};

/**
 * Compares checksums of `regions` (sorted) between source and target, VERIFY_PARALLEL_RUNS
 * runs at a time (each side reads and hashes while the other run's answer travels);
 * returns the regions that differ, sorted, and how many agreed.
 */
export async function verifyRegions(ctx: VerifyContext, regions: readonly number[]): Promise<{ mismatched: number[]; verified: number }> {
  let verified = 0;
  const mismatched: number[] = [];
  const runs = [...contiguousRuns(regions, VERIFY_RUN_REGIONS)];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < runs.length) {
      if (ctx.signal.aborted) throw ctx.cancelled();
      const [first, count] = runs[next++]!;
      const differ = await verifyRun(ctx, first, count);
      verified += count - differ.length;
      mismatched.push(...differ);
    }
  };
  await Promise.all(Array.from({ length: Math.min(VERIFY_PARALLEL_RUNS, runs.length) }, worker));
  return { mismatched: mismatched.sort((a, b) => a - b), verified };
}

/** Compares one run of consecutive regions under their exclusive locks; returns those that differ. */
async function verifyRun(ctx: VerifyContext, first: number, count: number): Promise<number[]> {
  const { map, locks, sourceControl, targetControl, sourceRef, targetRef, epoch, regionBytes } = ctx;
  const offset = map.regionOffset(first);
  const end = map.regionOffset(first + count - 1) + map.regionLength(first + count - 1);
  const release = await locks.exclusive(first, count);
  let sums;
  try {
    sums = await Promise.all([
      sourceControl.checksumRange(sourceRef, epoch, offset, end - offset, regionBytes),
      targetControl.checksumRange(targetRef, epoch, offset, end - offset, regionBytes),
    ]);
  } finally {
    release();
  }
  const [s, t] = sums;
  if (s.algorithm !== t.algorithm || s.digests.length !== count || t.digests.length !== count) {
    throw new StorageError(Code.INTERNAL,
      `checksums of regions ${first}..${first + count - 1} do not compare: source gave ${s.digests.length} ${s.algorithm} digests, target ${t.digests.length} ${t.algorithm} digests`);
  }
  const differ: number[] = [];
  for (let i = 0; i < count; i++) {
    if (!s.digests[i]!.equals(t.digests[i]!)) differ.push(first + i);
  }
  return differ;
}

/** Sorted regions as [first, count] runs of consecutive regions, each at most `max` long. */
export function contiguousRuns(regions: readonly number[], max: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (const r of regions) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === r && last[1] < max) last[1]++;
    else runs.push([r, 1]);
  }
  return runs;
}
