/**
 * A snapshot copy of a file device taken while writes go on (FileBackend.snapshot with
 * `onCut`). Its content is fixed at the cut, the moment the copy is registered: from then
 * on every write, trim and write-zeroes to the source waits in `before()` until the chunks
 * it touches are in the copy. So the copy holds the source exactly as it was at the cut,
 * although it is filled afterwards.
 *
 * A background loop fills the chunks in order; a write to a chunk not filled yet has that
 * chunk filled first (copy before write). A chunk is filled by FICLONERANGE (blocks shared
 * with the source) where the filesystem can, else by copying its data.
 *
 * Why chunks and not one FICLONE: the kernel holds the source file's locks for the whole
 * remap, and a remap costs time in proportion to the extents it covers. On a file that
 * random 4k writes have fragmented, one FICLONE of 1 GiB holds every writer for hundreds
 * of ms to seconds. Here one call covers a run of chunks sized to take about
 * TARGET_CALL_MS, so a writer waits for one run at most (plus the chunks it needs itself).
 */
import type { FileHandle } from 'node:fs/promises';
import { SystemError } from '../common/errors.js';
import { ficloneRange } from '../native/index.js';
import { copyRange, NO_REFLINK_ERRNOS, type CopyMethod } from './file-copy.js';

/** The grid the copy tracks: a write waits for the 1 MiB chunks it touches. */
export const CUT_CHUNK_BYTES = 1 << 20;
/** The loop's calls are sized to take about this long (the source is locked meanwhile). */
const TARGET_CALL_MS = 2;
const FIRST_RUN_CHUNKS = 8;
const MAX_RUN_CHUNKS = 1024;

/** What the fill cost, for the log and the bench. */
export interface CutCopyStats {
  method: CopyMethod;
  /** Calls that filled chunks (FICLONERANGE or copies). */
  calls: number;
  /** Of them, fills a write asked for (copy before write). */
  onDemandCalls: number;
  /** The slowest call, in ms: the longest the source was locked by one. */
  maxCallMs: number;
  /** Writes that waited for a chunk, and the longest wait in ms. */
  waits: number;
  maxWaitMs: number;
}

export class CutCopy {
  private readonly filled: Uint8Array;
  private readonly inflight = new Map<number, Promise<void>>();
  private failure: Error | undefined;
  private finished = false;
  private runChunks = FIRST_RUN_CHUNKS;
  private readonly stats: CutCopyStats = { method: 'reflink', calls: 0, onDemandCalls: 0, maxCallMs: 0, waits: 0, maxWaitMs: 0 };

  /** `dest` is empty and open for writing; `sizeBytes` is the source's size at the cut. */
  constructor(private readonly src: FileHandle, private readonly dest: FileHandle, private readonly sizeBytes: number) {
    this.filled = new Uint8Array(Math.ceil(sizeBytes / CUT_CHUNK_BYTES));
  }

  /**
   * Called before a change of [offset, offset + length) of the source: undefined when the
   * change may go ahead now, else a promise that resolves once it may. Never rejects: when
   * filling fails, writes go ahead and `fill()` rejects (the copy is then discarded).
   */
  before(offset: number, length: number): Promise<void> | undefined {
    if (this.finished || this.failure) return undefined;
    const end = Math.min(offset + length, this.sizeBytes);
    if (offset >= end) return undefined;
    let waits: Promise<void>[] | undefined;
    for (let c = Math.floor(offset / CUT_CHUNK_BYTES), last = Math.floor((end - 1) / CUT_CHUNK_BYTES); c <= last; c++) {
      if (this.filled[c]) continue;
      (waits ??= []).push(this.inflight.get(c) ?? this.fillRun(c, c + 1, true));
    }
    if (!waits) return undefined;
    const since = performance.now();
    return Promise.all(waits).then(() => {
      const ms = performance.now() - since;
      this.stats.waits++;
      if (ms > this.stats.maxWaitMs) this.stats.maxWaitMs = ms;
    });
  }

  /**
   * Fills every chunk not filled yet, in order; resolves when the copy is whole (not synced:
   * the caller syncs `dest`). Rejects with the first failure.
   */
  async fill(): Promise<CutCopyStats> {
    const chunks = this.filled.length;
    for (let c = 0; c < chunks && !this.failure; ) {
      const busy = this.inflight.get(c);
      if (this.filled[c] || busy) {
        if (busy) await busy;
        c++;
        continue;
      }
      let to = c + 1;
      while (to < chunks && to - c < this.runChunks && !this.filled[to] && !this.inflight.has(to)) to++;
      const since = performance.now();
      await this.fillRun(c, to, false);
      this.adapt(to - c, performance.now() - since);
      c = to;
    }
    await Promise.all(this.inflight.values());
    if (this.failure) throw this.failure;
    this.finished = true;
    return { ...this.stats, maxCallMs: Math.round(this.stats.maxCallMs * 1000) / 1000, maxWaitMs: Math.round(this.stats.maxWaitMs * 1000) / 1000 };
  }

  /** Fills chunks [from, to) in one call; never rejects (a failure is kept for fill()). */
  private fillRun(from: number, to: number, onDemand: boolean): Promise<void> {
    const run = this.copyBytes(from * CUT_CHUNK_BYTES, Math.min(to * CUT_CHUNK_BYTES, this.sizeBytes), onDemand).then(
      () => {
        for (let c = from; c < to; c++) this.filled[c] = 1;
      },
      (err: unknown) => {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
      },
    ).finally(() => {
      for (let c = from; c < to; c++) this.inflight.delete(c);
    });
    for (let c = from; c < to; c++) this.inflight.set(c, run);
    return run;
  }

  private async copyBytes(start: number, end: number, onDemand: boolean): Promise<void> {
    const since = performance.now();
    this.stats.calls++;
    if (onDemand) this.stats.onDemandCalls++;
    try {
      if (this.stats.method === 'reflink') {
        try {
          await ficloneRange(this.dest.fd, this.src.fd, start, end - start, start);
          return;
        } catch (err) {
          if (!(err instanceof SystemError) || !NO_REFLINK_ERRNOS.has(err.errnoName)) throw err;
          this.stats.method = 'copy';
        }
      }
      await copyRange(this.src, this.dest, start, end, Buffer.allocUnsafe(Math.min(end - start, CUT_CHUNK_BYTES)));
    } finally {
      const ms = performance.now() - since;
      if (ms > this.stats.maxCallMs) this.stats.maxCallMs = ms;
    }
  }

  /** Sizes the next run so that one call takes about TARGET_CALL_MS. */
  private adapt(chunks: number, ms: number): void {
    if (ms > 2 * TARGET_CALL_MS) this.runChunks = Math.max(1, Math.floor(this.runChunks / 2));
    else if (ms < TARGET_CALL_MS / 2 && chunks === this.runChunks) this.runChunks = Math.min(MAX_RUN_CHUNKS, this.runChunks * 2);
  }
}
