/**
 * Rebuild of one replica (the target) from an in-sync one (the source): copy the regions
 * the target lacks, checkpoint what is durably copied, compare region checksums, and only
 * then mark the target in sync on its node. The engine sends live writes to the target
 * all along (write-only); `RegionLocks` keep a live write and the copy of its region from
 * interleaving, so the target never ends with the source's older bytes.
 *
 * Order of the steps and why:
 * 1. StartRebuild on the target (keeps its recorded progress: the map already says what
 *    an earlier attempt copied, so a resumed rebuild copies only what is still set).
 * 2. Copy every set region, `concurrency` runs at a time. A run is consecutive set
 *    regions, up to 64 MiB (less under a rate limit), each region under an exclusive
 *    region lock. Under those locks the source says which bytes of the run it holds data in
 *    (AllocatedRanges; rebuild-extents.ts): only those are read and written, in chunks of
 *    at most 4 MiB inside one region, so memory stays bounded (concurrency × 4 MiB); a
 *    chunk that reads as zeros goes as write-zeroes. Everything else goes as write-zeroes
 *    that may trim (discards on the target), one request per hole however many regions it
 *    spans (a run is at most 64 MiB, far below any request limit), so the target stays
 *    thin where the source is and loses any stale data there. A source
 *    that does not know the call (UNIMPLEMENTED) has every byte copied. Each region's lock
 *    is released as soon as the copy is past it, and it counts as copied from then on (a
 *    cancelled run keeps the regions it finished).
 *    The token bucket is charged after each run, outside the locks, with the bytes copied
 *    plus 1/64 of the bytes discarded (a discard moves no data, but is not free on the
 *    target); it may go into debt, which the worker waits out before its next run, so the
 *    long-run rate is the configured one and live I/O never waits on the rate limit.
 * 3. About once a second (and at the end): flush the target, then clear the bits of the
 *    regions written before that flush, persist the map, and record progress on the
 *    target. A bit is never cleared before the target made its region durable.
 * 4. Compare checksums of the regions copied in this round, source against target, in
 *    runs of at most 64 regions under exclusive locks (rebuild-verify.ts). Mismatches are
 *    set again and copied again, at most 3 rounds in all; then DATA_LOSS.
 * 5. FinishRebuild. The engine then marks the replica in sync in the cluster store.
 *
 * While this runs the engine must not set bits of `map` (a live write the target failed
 * faults the target and aborts the rebuild instead): a bit set again after its region was
 * copied could be cleared by the next checkpoint.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { MAX_CHECKPOINT_BYTES, type ReplicaRefInput } from '../replica/replica-manager.js';
import type { RebuildContext, RebuildProgress, RebuildResult } from './rebuild-context.js';
import { SourceExtents } from './rebuild-extents.js';
import { verifyRegions } from './rebuild-verify.js';
import { TokenBucket, systemClock } from './token-bucket.js';

export type { RebuildContext, RebuildProgress, RebuildResult } from './rebuild-context.js';
export { VERIFY_PARALLEL_RUNS, VERIFY_RUN_REGIONS, contiguousRuns } from './rebuild-verify.js';

export const REBUILD_ROUNDS = 3;
export const DEFAULT_REBUILD_CONCURRENCY = 4;
export const CHECKPOINT_INTERVAL_MS = 1000;
export const COPY_CHUNK_BYTES = 4 << 20;
/** The most bytes one copy run spans (one AllocatedRanges question, one lock acquisition pass). */
export const RUN_MAX_BYTES = 64 << 20;
/** A discard charges the rate limit this fraction of its bytes. */
export const DISCARD_COST_DIVISOR = 64;
const LOG_INTERVAL_MS = 10_000;

let zeros = Buffer.alloc(0);
/** Whether every byte of `data` is zero (such a region is copied as write-zeroes). */
export function isZero(data: Buffer): boolean {
  if (zeros.length < data.length) zeros = Buffer.alloc(Math.max(data.length, COPY_CHUNK_BYTES));
  return data.equals(zeros.subarray(0, data.length));
}

function cancelledError(ctx: RebuildContext): StorageError {
  return new StorageError(Code.CANCELLED, `rebuild of replica ${ctx.target.id} of volume ${ctx.volumeId} cancelled`,
    { details: { replica: ctx.target.id, volumeId: ctx.volumeId } });
}

export async function runRebuild(ctx: RebuildContext): Promise<RebuildResult> {
  return new RebuildRun(ctx).run();
}

class RebuildRun {
  private readonly ref: ReplicaRefInput;
  private readonly sourceRef: ReplicaRefInput;
  private readonly bucket: TokenBucket;
  private readonly concurrency: number;
  private readonly log: Logger;
  private readonly startedAt = systemClock.now();
  private readonly extents: SourceExtents;
  /** A run spans at most this many bytes (at least one region). */
  private readonly runMaxBytes: number;
  private verifyMs = 0;
  /**
   * Copy buffers (COPY_CHUNK_BYTES each), reused from chunk to chunk and worker to worker:
   * a fresh buffer per chunk cost page faults and GC on every byte copied. One goes back
   * only after its chunk was written; after a failure it is dropped, since a cancelled
   * request may still be filling or sending it.
   */
  private readonly buffers: Buffer[] = [];
  private totalBytes = 0;
  /** Bytes of regions copied or discarded in this run (progress). */
  private doneBytes = 0;
  private copiedBytes = 0;
  private zeroedBytes = 0;
  private discardedBytes = 0;
  /** Bytes of regions whose bits were cleared after a flush. */
  private durableBytes = 0;
  private regionsVerified = 0;
  /** Regions written to the target since the last flush was asked for. */
  private unflushed: number[] = [];
  private checkpointTail: Promise<void> = Promise.resolve();
  private checkpointRunning = false;
  private lastCheckpointAt = this.startedAt;
  private lastLogAt = this.startedAt;
  private lastLoggedBytes = 0;
  /** The first error of a copy worker or a background checkpoint. */
  private failure: unknown;
  private failed = false;

  constructor(private readonly ctx: RebuildContext) {
    this.ref = { replicaId: ctx.target.id, volumeId: ctx.volumeId };
    this.sourceRef = { replicaId: ctx.source.replicaId, volumeId: ctx.volumeId };
    this.concurrency = Math.max(1, Math.floor(ctx.concurrency ?? DEFAULT_REBUILD_CONCURRENCY));
    this.bucket = new TokenBucket(ctx.rateBytesPerSec, ctx.regionBytes);
    this.log = ctx.log.child({ replica: ctx.target.id, source: ctx.source.replicaId });
    this.extents = new SourceExtents(ctx.sourceControl, this.sourceRef, ctx.epoch,
      (err) => this.log.warn({ err }, 'replica rebuild source cannot list its allocated ranges (an older node); copying every byte'));
    // Under a rate limit, a run is about a quarter second of the workers' share of it, so
    // the first runs do not burst far past the rate before the bucket is charged.
    const most = ctx.runMaxBytes ?? RUN_MAX_BYTES;
    const limited = ctx.rateBytesPerSec > 0 ? Math.floor(ctx.rateBytesPerSec / this.concurrency / 4) : most;
    this.runMaxBytes = Math.max(ctx.regionBytes, Math.min(most, limited));
    if (ctx.map.regionBytes !== ctx.regionBytes || ctx.map.sizeBytes !== ctx.sizeBytes) {
      throw new StorageError(Code.INVALID_ARGUMENT,
        `the region map (${ctx.map.sizeBytes} bytes in regions of ${ctx.map.regionBytes}) does not match the volume (${ctx.sizeBytes} bytes in regions of ${ctx.regionBytes})`);
    }
  }

  async run(): Promise<RebuildResult> {
    const { ctx } = this;
    if (ctx.signal.aborted) throw cancelledError(ctx);
    this.totalBytes = ctx.map.dirtyBytes();
    await ctx.targetControl.startRebuild(this.ref, ctx.epoch, this.totalBytes, false);
    this.log.info({ totalBytes: this.totalBytes, regions: ctx.map.count(), rateBytesPerSec: ctx.rateBytesPerSec, concurrency: this.concurrency }, 'replica rebuild copying');
    for (let round = 1; ; round++) {
      const copied = await this.copyRound();
      const verifyStart = systemClock.now();
      const { mismatched, verified } = await verifyRegions({
        ...ctx, sourceRef: this.sourceRef, targetRef: this.ref, cancelled: () => cancelledError(ctx),
      }, copied);
      this.regionsVerified += verified;
      this.verifyMs += systemClock.now() - verifyStart;
      if (mismatched.length === 0) break;
      for (const r of mismatched) ctx.map.set(r);
      ctx.persistMap();
      this.log.warn({ round, regions: mismatched.length, firstRegion: mismatched[0] }, 'replica rebuild found regions that differ from the source');
      if (round >= REBUILD_ROUNDS) {
        throw new StorageError(Code.DATA_LOSS,
          `replica ${ctx.target.id} still differs from its source in ${mismatched.length} regions after ${REBUILD_ROUNDS} rebuild rounds; it stays faulted: check its disk`,
          { details: { replica: ctx.target.id, volumeId: ctx.volumeId, regions: mismatched.length } });
      }
      for (const r of mismatched) this.totalBytes += ctx.map.regionLength(r);
    }
    await ctx.targetControl.finishRebuild(this.ref, ctx.epoch);
    const result: RebuildResult = {
      doneBytes: this.doneBytes, copiedBytes: this.copiedBytes, zeroedBytes: this.zeroedBytes, discardedBytes: this.discardedBytes,
      regionsVerified: this.regionsVerified, durationMs: Math.round(systemClock.now() - this.startedAt), verifyMs: Math.round(this.verifyMs),
    };
    this.log.info({ ...result, totalBytes: this.totalBytes }, 'replica rebuild finished');
    return result;
  }

  /** Copies every set region; returns them once all are flushed and cleared. */
  private async copyRound(): Promise<number[]> {
    const { map, signal } = this.ctx;
    const copied: number[] = [];
    let cursor = 0;
    const next = (): [number, number] | undefined => {
      if (this.failed || signal.aborted) return undefined;
      const first = map.nextSet(cursor);
      if (first < 0) return undefined;
      let count = 1;
      let bytes = map.regionLength(first);
      while (first + count < map.regionCount && map.has(first + count) && bytes + map.regionLength(first + count) <= this.runMaxBytes) {
        bytes += map.regionLength(first + count);
        count++;
      }
      cursor = first + count;
      return [first, count];
    };
    const regionDone = (r: number): void => {
      copied.push(r);
      this.unflushed.push(r);
      this.doneBytes += map.regionLength(r);
    };
    const worker = async (): Promise<void> => {
      for (let run = next(); run; run = next()) {
        let charge: number;
        try {
          charge = await this.copyRun(run[0], run[1], regionDone);
        } catch (err) {
          if (!(signal.aborted && isStorageError(err, Code.CANCELLED))) this.fail(err);
          return;
        }
        this.afterRegion();
        try {
          await this.bucket.take(charge, signal);
        } catch (err) {
          if (!(signal.aborted && isStorageError(err, Code.CANCELLED))) this.fail(err);
          return;
        }
      }
    };
    await Promise.all(Array.from({ length: this.concurrency }, worker));
    await this.checkpointTail;
    if (this.failed) throw this.failure;
    if (signal.aborted) {
      // Keep what is already copied: flush it and clear its bits, then give up.
      await this.checkpoint().catch((err: unknown) => this.log.warn({ err }, 'replica rebuild could not save its progress when cancelled'));
      throw cancelledError(this.ctx);
    }
    await this.checkpoint();
    this.report(true);
    return copied.sort((a, b) => a - b);
  }

  /**
   * Copies regions [first, first + count): takes their locks, asks the source where its
   * data is, copies that and discards the rest. Each region, once completely written, goes
   * to `regionDone` and its lock is released, so a cancelled run keeps what it finished.
   * Returns what to charge the rate limit.
   */
  private async copyRun(first: number, count: number, regionDone: (r: number) => void): Promise<number> {
    const { map, locks } = this.ctx;
    const start = map.regionOffset(first);
    const end = map.regionOffset(first + count - 1) + map.regionLength(first + count - 1);
    const releases: Array<() => void> = [];
    let released = 0;
    /** The run's regions that end at or before `byte` are written: release and report them. */
    const doneBefore = (byte: number): void => {
      while (released < releases.length && map.regionOffset(first + released) + map.regionLength(first + released) <= byte) {
        releases[released]!();
        regionDone(first + released++);
      }
    };
    try {
      for (let r = first; r < first + count; r++) releases.push(await locks.exclusive(r, 1));
      let charge = 0;
      let at = start;
      for (const e of await this.extents.of(start, end - start)) {
        if (e.offset > at) charge += await this.discard(at, e.offset - at);
        doneBefore(e.offset);
        charge += await this.copyData(e.offset, e.offset + e.lengthBytes, doneBefore);
        at = e.offset + e.lengthBytes;
      }
      if (end > at) charge += await this.discard(at, end - at);
      doneBefore(end);
      return charge;
    } finally {
      while (released < releases.length) releases[released++]!();
    }
  }

  /**
   * Reads [offset, end) from the source and writes it to the target in chunks that never
   * cross a region boundary (so each region is done as soon as its last chunk is); returns
   * the bytes moved.
   */
  private async copyData(offset: number, end: number, doneBefore: (byte: number) => void): Promise<number> {
    const { source, targetIo, signal, regionBytes } = this.ctx;
    const buffer = this.buffers.pop() ?? Buffer.allocUnsafeSlow(COPY_CHUNK_BYTES);
    for (let at = offset, chunk = 0; at < end; at += chunk) {
      if (signal.aborted) throw cancelledError(this.ctx);
      chunk = Math.min(COPY_CHUNK_BYTES, end - at, (Math.floor(at / regionBytes) + 1) * regionBytes - at);
      let data = buffer.subarray(0, chunk);
      if (source.readInto) await source.readInto(at, [data]);
      else data = await source.read(at, chunk);
      if (data.length !== chunk) {
        throw new StorageError(Code.INTERNAL, `source replica ${source.replicaId} returned ${data.length} bytes for a read of ${chunk} at ${at}`);
      }
      if (isZero(data)) {
        await targetIo.writeZeroes(at, chunk, true);
        this.zeroedBytes += chunk;
      } else {
        await targetIo.write(at, data, false);
      }
      this.copiedBytes += chunk;
      doneBefore(at + chunk);
    }
    this.buffers.push(buffer);
    return end - offset;
  }

  /** Discards [offset, offset + lengthBytes) on the target (the source holds no data there); returns its rate-limit charge. */
  private async discard(offset: number, lengthBytes: number): Promise<number> {
    await this.ctx.targetIo.writeZeroes(offset, lengthBytes, true);
    this.discardedBytes += lengthBytes;
    return Math.ceil(lengthBytes / DISCARD_COST_DIVISOR);
  }

  /** After each copied region: a checkpoint about once a second, progress now and then. */
  private afterRegion(): void {
    if (!this.checkpointRunning && systemClock.now() - this.lastCheckpointAt >= CHECKPOINT_INTERVAL_MS) {
      this.checkpoint().catch((err: unknown) => this.fail(err));
    }
    this.report(false);
  }

  /** Flushes the target, then clears the bits of the regions written before the flush and records progress. Serialised. */
  private checkpoint(): Promise<void> {
    this.checkpointRunning = true;
    const done = this.checkpointTail.then(() => this.saveCheckpoint());
    this.checkpointTail = done.then(() => { this.checkpointRunning = false; }, () => { this.checkpointRunning = false; });
    return done;
  }

  private async saveCheckpoint(): Promise<void> {
    const { map, targetIo, targetControl, epoch } = this.ctx;
    const regions = this.unflushed;
    this.unflushed = [];
    if (regions.length > 0) {
      await targetIo.flush();
      for (const r of regions) {
        map.clear(r);
        this.durableBytes += map.regionLength(r);
      }
      this.ctx.persistMap();
    }
    const bits = map.toBuffer();
    const checkpoint = bits.length <= MAX_CHECKPOINT_BYTES ? bits : Buffer.alloc(0);
    await targetControl.updateRebuildProgress(this.ref, epoch, { doneBytes: Math.min(this.durableBytes, this.totalBytes), totalBytes: this.totalBytes, checkpoint });
    this.lastCheckpointAt = systemClock.now();
    this.ctx.onProgress?.(this.progress());
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.failure = err;
  }

  private progress(): RebuildProgress {
    const seconds = (systemClock.now() - this.startedAt) / 1000;
    return { doneBytes: Math.min(this.doneBytes, this.totalBytes), totalBytes: this.totalBytes, bytesPerSecond: seconds > 0 ? Math.round(this.doneBytes / seconds) : 0 };
  }

  /** Logs (and reports) progress every 10 % of the total or 10 s, and at the end of a round. */
  private report(force: boolean): void {
    const now = systemClock.now();
    const step = this.totalBytes / 10;
    if (!force && this.doneBytes - this.lastLoggedBytes < step && now - this.lastLogAt < LOG_INTERVAL_MS) return;
    this.lastLogAt = now;
    this.lastLoggedBytes = this.doneBytes;
    const p = this.progress();
    const etaSeconds = p.bytesPerSecond > 0 ? Math.round((p.totalBytes - p.doneBytes) / p.bytesPerSecond) : null;
    this.ctx.onProgress?.(p);
    this.log.info({ ...p, etaSeconds, copiedBytes: this.copiedBytes, discardedBytes: this.discardedBytes }, 'replica rebuild progress');
  }
}
