/**
 * What a running engine changes when its volume grows (online expansion). The lifecycle
 * grows every replica first and only then raises the document's size, so by the time the
 * engine hears of it every replica the document lists has the new area, and that area reads
 * as zeros on all of them (the pool grows devices sparse: a longer file, a longer thin
 * device). The engine then grows its region locks and every member's region maps in one
 * synchronous step, and only after that accepts requests past the old end.
 *
 * The new regions are set in the map of every replica that is out of sync, although they
 * hold zeros like everywhere else: that replica may be one that was never grown (created
 * at the old size by a call racing with the expansion) or may be grown only when its
 * rebuild starts (`ensureTargetSize`), and copying zeros costs little (the rebuild sends
 * them as write-zeroes). A replica being copied right now (its rebuild owns its map) gets
 * them in `deferred`, which is merged into its map only if that rebuild fails: a rebuild
 * that succeeds sent it every live write since it began, the new area included.
 */
import { Code, isStorageError } from '../common/errors.js';
import type { ReplicaControl } from './engine-types.js';
import type { EngineContext, Member } from './engine-member.js';
import { RegionMap } from './region-map.js';

/** Grows `m`'s maps from `previousBytes` to `sizeBytes`; returns whether its dirty map changed (it needs saving). */
export function growMember(m: Member, previousBytes: number, sizeBytes: number, regionBytes: number): boolean {
  const outOfSync = m.role !== 'in-sync';
  for (const map of [m.unflushed, m.spareUnflushed, ...m.flushing]) map?.grow(sizeBytes, false);
  if (!outOfSync) {
    m.map?.grow(sizeBytes, false);
    m.deferred?.grow(sizeBytes, false);
    return false;
  }
  if (m.rebuild?.copying) {
    m.map?.grow(sizeBytes, false);
    if (m.deferred) m.deferred.grow(sizeBytes, true);
    else m.deferred = markedBeyond(previousBytes, sizeBytes, regionBytes);
    return false;
  }
  m.deferred?.grow(sizeBytes, false);
  if (m.map) m.map.grow(sizeBytes, true);
  else m.map = RegionMap.full(sizeBytes, regionBytes);
  return true;
}

/** A map of `sizeBytes` with the regions past `previousBytes` set (the old last one too, when it was shorter). */
function markedBeyond(previousBytes: number, sizeBytes: number, regionBytes: number): RegionMap {
  const map = new RegionMap(previousBytes, regionBytes);
  map.grow(sizeBytes, true);
  return map;
}

/**
 * Before a rebuild writes to a replica: grow it to the volume's size, in case it was made
 * or left at an older size (idempotent; a replica already that size is not touched). A
 * replica larger than the volume is fine (an expansion that grew the replicas and stopped
 * before the document said so: OUT_OF_RANGE, since replicas never shrink). A peer too old
 * to know the call answers UNIMPLEMENTED: the copy then finds out.
 */
export async function ensureTargetSize(ctx: EngineContext, m: Member, control: ReplicaControl): Promise<void> {
  try {
    await control.resizeReplica({ replicaId: m.id, volumeId: ctx.volumeId }, ctx.sizeBytes, ctx.epoch);
  } catch (err) {
    if (!isStorageError(err, Code.UNIMPLEMENTED) && !isStorageError(err, Code.OUT_OF_RANGE)) throw err;
  }
}
