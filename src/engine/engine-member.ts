/**
 * One replica as the volume engine sees it (`Member`), and what the engine's parts share:
 * the volume and its settings (`EngineContext`), the engine's life as they may see it
 * (`EngineLife`), the node-local dirty-region maps (`MemberMaps`) and the ring that counts
 * each replica's requests in flight by the sweep interval they started in.
 */
import { Code, StorageError, fromNodeError, isStorageError } from '../common/errors.js';
import type { ReplicaId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import type { DirtyMapStore, ReplicaConnector, ReplicaIo, VolumeReplicaEntry } from './engine-types.js';
import type { RebuildProgress } from './rebuild.js';
import { RegionMap } from './region-map.js';

/** What every part of one engine shares: its volume, its epoch and its settings. */
export interface EngineContext {
  readonly volumeId: VolumeId;
  readonly name: string;
  readonly epoch: number;
  /** The volume's size now: it grows while the engine runs (VolumeEngine.resize), so read it at use. */
  readonly sizeBytes: number;
  readonly regionBytes: number;
  /** A replica that has not answered a request for this long is dropped. */
  readonly timeoutMs: number;
  /** How often out-of-sync replicas are tried again (and an unreachable store is retried). */
  readonly reconnectMs: number;
  /** The engine's logger, with its volume and epoch bound. */
  readonly log: Logger;
}

/** The engine's life as its parts see it; only the engine itself changes it. */
export interface EngineLife {
  /** Once a newer engine fenced this one: the error every request gets from then on. */
  fencedError(): StorageError | undefined;
  /** The engine is closing (or its start failed): nothing new starts. */
  closing(): boolean;
  /** Stops acknowledging anything; returns the error every request gets from now on. */
  fence(newerEpoch: number | undefined, cause?: unknown): StorageError;
}

/** Where a replica's I/O goes: all of it, writes only (rebuilding), or nowhere. */
export type Role = 'in-sync' | 'write-only' | 'out';

/** Requests in flight are counted per sweep interval in a ring of this many. */
export const RING = 8;
export const MASK = RING - 1;
/** Intervals (of replicaTimeoutMs / 4) after which a request still in flight is overdue. */
const OVERDUE_INTERVALS = 5;

export interface RebuildRun {
  abort: AbortController;
  settled: Promise<void>;
  /** While runRebuild runs, it owns `map`: marks go to `deferred` and are merged after. */
  copying: boolean;
  sourceId: ReplicaId | undefined;
  sourceLost: boolean;
  progress: RebuildProgress | undefined;
}

export class Member {
  role: Role = 'out';
  /** What views show while the replica is out: faulted, or rebuilding as the document said at start. */
  outState: 'faulted' | 'rebuilding' = 'faulted';
  io: ReplicaIo | undefined;
  /** Requests in flight on `io`, by the sweep interval they started in. */
  inflight = new Int32Array(RING);
  timedOut = false;
  /** Regions the replica may lack; undefined while in sync. */
  map: RegionMap | undefined;
  /**
   * The volume document says `fullRebuild` (durably): an engine started later copies every
   * region, so the writes the replica misses need not wait for its map to be saved here.
   */
  fullRebuild: boolean;
  /** False: `map` holds only what this engine saw the replica miss, on top of an unknown base; never saved. */
  mapKnown = true;
  /** The base may come from the target's rebuild checkpoint (the document said it was rebuilding). */
  checkpointOk = false;
  deferred: RegionMap | undefined;
  /** Regions written on `io` since the last flush was sent: lost if its node crashes before a flush. */
  unflushed: RegionMap | undefined;
  /** The `unflushed` maps of flushes still in flight. */
  readonly flushing = new Set<RegionMap>();
  /** A cleared map from the last successful flush, reused as the next `unflushed` (no allocation per flush). */
  spareUnflushed: RegionMap | undefined;
  rebuild: RebuildRun | undefined;
  /** The commit that makes its fault durable, while pending: writes it misses wait for it. */
  faultPending: Promise<void> | undefined;
  /** The commit that saves its map, while pending: every write it misses waits for it, whoever set the bits. */
  savePending: Promise<void> | undefined;
  connecting = false;
  /** Rebuilds that failed in a row, and when the next reconnect may be tried (back-off). */
  failures = 0;
  retryAt = 0;
  /** The document calls it rebuilding (after its checkpoint was refreshed). */
  announced = false;
  removed = false;
  constructor(readonly entry: VolumeReplicaEntry) {
    this.fullRebuild = entry.fullRebuild === true;
  }
  get id(): ReplicaId {
    return this.entry.id;
  }
}

/** The node-local dirty-region maps of the engine's replicas; `save` is durable when it returns. */
export class MemberMaps {
  constructor(private readonly store: DirtyMapStore, private readonly ctx: EngineContext) {}

  load(m: Member): RegionMap | undefined {
    const saved = this.store.load(this.ctx.volumeId, m.id);
    if (!saved || saved.regionBytes !== this.ctx.regionBytes) return undefined;
    try {
      // A shorter map was saved before the volume grew: the new area counts as missed.
      if (saved.bits.length < Math.ceil(Math.ceil(this.ctx.sizeBytes / this.ctx.regionBytes) / 8)) {
        return RegionMap.grownFrom(this.ctx.sizeBytes, this.ctx.regionBytes, saved.bits);
      }
      return new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes, saved.bits);
    } catch {
      return undefined;
    }
  }

  /**
   * At engine start, the map of an out-of-sync replica: the saved one, unless the document
   * says `fullRebuild` (the saved map may lack writes acknowledged since): then every region.
   * Without either, only what this engine sees it miss, on an unknown base (`mapKnown` false).
   */
  restore(m: Member): void {
    if (m.fullRebuild) {
      m.map = RegionMap.full(this.ctx.sizeBytes, this.ctx.regionBytes);
      this.ctx.log.info({ replica: m.id, replicaNode: m.entry.nodeId }, 'the volume document says to rebuild this replica in full; its node-local dirty-region map is ignored');
      return;
    }
    m.map = this.load(m);
    if (!m.map) {
      m.map = new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes);
      m.mapKnown = false;
      m.checkpointOk = m.entry.state === 'rebuilding';
    }
  }

  /** Throws a StorageError (the node store's code, else INTERNAL) when the map could not be saved. */
  save(m: Member): void {
    if (m.removed || !m.mapKnown || !m.map) return;
    try {
      this.store.save(this.ctx.volumeId, m.id, this.ctx.regionBytes, m.map.toBuffer());
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new StorageError(Code.INTERNAL, `cannot save the dirty-region map of replica ${m.id}: ${(err as Error).message}`,
        { cause: err, details: { replica: m.id } });
    }
  }

  /**
   * Never throws: a map left behind (a full disk) is harmless, since it belongs to a replica
   * that is in sync again or no longer in the volume, and a later fault overwrites it.
   */
  delete(m: Member): void {
    try {
      this.store.delete(this.ctx.volumeId, m.id);
    } catch (err) {
      this.ctx.log.warn({ replica: m.id, err: (err as Error).message }, 'cannot delete a dirty-region map; left behind');
    }
  }
}

export const noop = (): void => undefined;
export const newestEpochOf = (e: StorageError): number | undefined => (typeof e.details.newestEpoch === 'number' ? e.details.newestEpoch : undefined);
export const join = (a: Promise<void> | undefined, b: Promise<void> | undefined): Promise<void> | undefined => (!a ? b : !b ? a : Promise.all([a, b]).then(noop));

/** Opens I/O to the replica at the engine's epoch, bounded by the replica timeout. */
export function openReplicaIo(ctx: EngineContext, connector: ReplicaConnector, m: Member): Promise<ReplicaIo> {
  const opening = connector.openIo(ctx.volumeId, m.entry, ctx.epoch);
  const bounded = withTimeout(opening, ctx.timeoutMs, `opening replica ${m.id} on node ${m.entry.nodeId}`);
  bounded.catch(() => opening.then((io) => io.cancel(), noop));
  return bounded;
}

/** A replica's failure as a StorageError: a request the sweep cancelled is DEADLINE_EXCEEDED. */
export function replicaError(m: Member, err: unknown, timeoutMs: number): StorageError {
  if (m.timedOut && isStorageError(err, Code.CANCELLED)) {
    return new StorageError(Code.DEADLINE_EXCEEDED, `replica ${m.id} on node ${m.entry.nodeId} did not answer within ${timeoutMs} ms`,
      { cause: err, details: { replica: m.id } });
  }
  return fromNodeError(err, `replica ${m.id} I/O`);
}

export function noInSyncError(ctx: EngineContext): StorageError {
  return new StorageError(Code.UNAVAILABLE, `volume ${ctx.name} has no in-sync replica this engine can use`, { details: { volumeId: ctx.volumeId } });
}

export function markOn(map: RegionMap, offset: number, lengthBytes: number, whole: boolean): boolean {
  if (!whole) return map.markRange(offset, lengthBytes);
  if (map.count() === map.regionCount) return false;
  map.setAll();
  return true;
}

/** Whether requests that started OVERDUE_INTERVALS or more sweeps ago are still in flight. */
export function overdue(counts: Int32Array, tick: number): boolean {
  for (let age = OVERDUE_INTERVALS; age < RING; age++) {
    if (counts[(tick - age) & MASK]! > 0) return true;
  }
  return false;
}
