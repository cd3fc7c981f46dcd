/**
 * Reconcile: make the in-sync replicas of a volume agree after its previous engine
 * stopped without a clean shutdown (a crash, a kill -9, a failover). Such an engine may
 * have had writes in flight that reached some replicas and not others; none of them was
 * acknowledged, so either content is allowed, but every replica must then return the same
 * bytes. The new engine serves reads from one replica (the source) and, in the
 * background, compares every region of the others with it and copies the ones that
 * differ from the source.
 *
 * Regions are compared in runs of at most 64 under exclusive region locks, so a live
 * write and the comparison or copy of its region never interleave. A replica that fails
 * is reported back (the engine faults it); the others go on.
 */
import { Code, StorageError } from '../common/errors.js';
import type { ReplicaId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ChecksumRangeResult } from '../replica/replica-manager.js';
import type { ReplicaControl, ReplicaIo } from './engine-types.js';
import { COPY_CHUNK_BYTES, VERIFY_RUN_REGIONS, isZero } from './rebuild.js';
import type { RegionLocks } from './region-map.js';

export interface ReconcilePeer {
  io: ReplicaIo;
  control: ReplicaControl;
}

export interface ReconcileContext {
  volumeId: VolumeId;
  epoch: number;
  sizeBytes: number;
  regionBytes: number;
  /** The replica reads are served from: the others are made equal to it. */
  source: ReconcilePeer;
  others: ReconcilePeer[];
  locks: RegionLocks;
  signal: AbortSignal;
  /** The engine's logger, with volume, volumeId and epoch bound; the reconcile adds source. */
  log: Logger;
}

export interface ReconcileResult {
  regionsCompared: number;
  regionsRepaired: number;
  bytesCopied: number;
  durationMs: number;
  /** Replicas that failed during the reconcile, with why: the engine faults them. */
  failed: Map<ReplicaId, StorageError>;
}

function asError(err: unknown, what: string): StorageError {
  return err instanceof StorageError ? err : new StorageError(Code.INTERNAL, `${what}: ${(err as Error).message}`, { cause: err });
}

export async function runReconcile(ctx: ReconcileContext): Promise<ReconcileResult> {
  const started = Date.now();
  const regions = Math.ceil(ctx.sizeBytes / ctx.regionBytes);
  const result: ReconcileResult = { regionsCompared: 0, regionsRepaired: 0, bytesCopied: 0, durationMs: 0, failed: new Map() };
  const log = ctx.log.child({ source: ctx.source.io.replicaId });
  let live = [...ctx.others];
  const drop = (peer: ReconcilePeer, err: unknown): void => {
    const e = asError(err, `reconcile of replica ${peer.io.replicaId}`);
    result.failed.set(peer.io.replicaId, e);
    live = live.filter((p) => p !== peer);
    log.warn({ replica: peer.io.replicaId, err: e.message }, 'replica failed during reconcile');
  };
  const sumOf = (peer: ReconcilePeer, offset: number, length: number): Promise<ChecksumRangeResult> =>
    peer.control.checksumRange({ replicaId: peer.io.replicaId, volumeId: ctx.volumeId }, ctx.epoch, offset, length, ctx.regionBytes);
  log.info({ replicas: ctx.others.map((p) => p.io.replicaId), regions }, 'reconciling in-sync replicas after an unclean engine stop');
  for (let first = 0; first < regions && live.length > 0; first += VERIFY_RUN_REGIONS) {
    if (ctx.signal.aborted) throw new StorageError(Code.CANCELLED, `reconcile of volume ${ctx.volumeId} cancelled`);
    const count = Math.min(VERIFY_RUN_REGIONS, regions - first);
    const offset = first * ctx.regionBytes;
    const length = Math.min(count * ctx.regionBytes, ctx.sizeBytes - offset);
    const release = await ctx.locks.exclusive(first, count);
    try {
      const source = await sumOf(ctx.source, offset, length);
      const peers = live;
      const sums = await Promise.allSettled(peers.map((p) => sumOf(p, offset, length)));
      for (let k = 0; k < peers.length; k++) {
        const s = sums[k]!;
        if (s.status === 'rejected') {
          drop(peers[k]!, s.reason);
          continue;
        }
        for (let i = 0; i < count; i++) {
          if (source.digests[i]!.equals(s.value.digests[i]!)) continue;
          const at = offset + i * ctx.regionBytes;
          try {
            result.bytesCopied += await copyRegion(ctx.source.io, peers[k]!.io, at, Math.min(ctx.regionBytes, ctx.sizeBytes - at));
            result.regionsRepaired++;
          } catch (err) {
            if (err instanceof SourceFailure) throw err.cause;
            drop(peers[k]!, err);
            break;
          }
        }
      }
    } finally {
      release();
    }
    result.regionsCompared += count;
  }
  await Promise.all(live.map((p) => p.io.flush().catch((err: unknown) => drop(p, err))));
  result.durationMs = Date.now() - started;
  log.info({ regionsCompared: result.regionsCompared, regionsRepaired: result.regionsRepaired, bytesCopied: result.bytesCopied, durationMs: result.durationMs, failed: [...result.failed.keys()] },
    'reconcile finished');
  return result;
}

/** A read of the source failed: the reconcile stops (the engine decides about the source). */
class SourceFailure extends Error {
  constructor(override readonly cause: unknown) {
    super('source read failed');
  }
}

/** Copies one region from `source` to `target` in chunks; returns the bytes copied. */
async function copyRegion(source: ReplicaIo, target: ReplicaIo, offset: number, length: number): Promise<number> {
  for (let at = 0; at < length; at += COPY_CHUNK_BYTES) {
    const chunk = Math.min(COPY_CHUNK_BYTES, length - at);
    const data = await source.read(offset + at, chunk).catch((err: unknown) => {
      throw new SourceFailure(err);
    });
    if (isZero(data)) await target.writeZeroes(offset + at, chunk, true);
    else await target.write(offset + at, data, false);
  }
  return length;
}
