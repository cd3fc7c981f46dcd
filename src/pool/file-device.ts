/**
 * The file backend's I/O path: one sparse file per device, served like nbdkit's file
 * plugin. Writes land in the page cache; FLUSH is fdatasync; FUA is write then fdatasync
 * (honest durability); trim punches a hole; writeZeroes uses ZERO_RANGE (or a hole when the
 * caller allows it).
 *
 * The strategy, chosen by measurement (fio over NBD, 2 cores shared with the client):
 * - Reads first try preadv2(RWF_NOWAIT) on the event loop: a page-cache hit costs about
 *   1 µs and no thread hop. Whatever is not cached goes to the thread pool, so a cold read
 *   never stalls the event loop.
 * - Writes up to 1 MiB go to the page cache with pwrite(v) on the event loop: 4k random
 *   writes reached ~1.7x the IOPS of thread-pool writes, which pay a thread hop and a
 *   wake-up per batch, and 1M sequential writes took ~10% less CPU per GiB (2 vCPUs
 *   shared with the client); a 1 MiB page-cache copy holds the loop for a fraction of a
 *   millisecond. Each such write is timed; three in a row slower than 2 ms (dirty
 *   throttling, journal waits; a single slow one is mostly the process being preempted on
 *   shared cores) move writes to the thread pool for the next second, so the event loop
 *   (and every other volume on it) never keeps waiting on the kernel.
 * - Larger writes, FUA writes and fdatasync are queued and, once per event-loop turn,
 *   handed to the thread pool in batches (io-batcher.ts: one hop for many small requests;
 *   a large write gets a job of its own, so that it is answered as soon as it is done).
 * - While a snapshot copy of the device is being filled (file-cut-copy.ts), every write goes
 *   to the thread pool: a clone call holds the file's lock, and a page-cache write on the
 *   event loop would hold every other volume's I/O behind it.
 * - writev() takes a payload in the pieces it arrived in and writes them with pwritev: a
 *   1 MiB NBD write is never copied into one buffer first. readInto() reads into buffers the
 *   caller reuses (preadv2 RWF_NOWAIT first, then preadv on the thread pool).
 * - Where preadv2(RWF_NOWAIT) is not supported (EOPNOTSUPP, ENOSYS: an old kernel, some
 *   network or FUSE filesystems), the device logs it once and reads on the thread pool
 *   from then on.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import type { DeviceId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { AllocatedRanges, BlockDevice } from './backend.js';
import { fileAllocatedRanges } from './file-extents.js';
import { ERRNO_NAMES, IoBatcher, byteLengthOf, errnoError } from './io-batcher.js';
import { Code, StorageError, SystemError, fromNodeError } from '../common/errors.js';
import { IO_FDATASYNC, IO_READ, IO_WRITE, IO_WRITE_FDATASYNC, nativeIo, type NativeIo } from '../native/io.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate } from '../native/index.js';

/** Reads up to this size are carved from a shared slab instead of their own allocation. */
const SLAB_MAX_READ_BYTES = 64 << 10;
const SLAB_BYTES = 1 << 20;
/** Writes up to this size go to the page cache on the event loop (larger ones: thread pool). */
const SYNC_WRITE_MAX_BYTES = 1 << 20;
/**
 * This many page-cache writes in a row slower than SLOW_SYNC_WRITE_MS send writes to the
 * thread pool for a while. One slow write proves nothing: on shared cores the process is
 * often preempted in the middle of a 2 µs pwrite (many times a second at 10k writes/s),
 * while dirty throttling or a journal wait makes every write slow.
 */
const SLOW_SYNC_WRITE_MS = 2;
const SLOW_SYNC_WRITES_IN_A_ROW = 3;
const SYNC_WRITE_BACKOFF_MS = 1000;
/** writeZeroes falls back to plain writes of zeros in chunks of this size. */
const ZERO_CHUNK_BYTES = 1 << 20;

/** preadv2(RWF_NOWAIT) answers these where the kernel or the filesystem cannot do it at all. */
const NOWAIT_UNSUPPORTED = new Set([osConstants.errno.EOPNOTSUPP, osConstants.errno.ENOTSUP, osConstants.errno.ENOSYS].map((e) => -e));

/**
 * Asked before every change of a device (write, trim, write-zeroes): a promise to wait for
 * before the change may go ahead, or undefined to go ahead now. A snapshot copy being filled
 * after its cut (file-cut-copy.ts) answers.
 */
export type ChangeGate = () => { before(offset: number, length: number): Promise<void> | undefined } | undefined;

/** `bufs` without their first `n` bytes. */
function skipBytes(bufs: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = n;
  for (const b of bufs) {
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

class FileBlockDevice implements BlockDevice {
  private slab: Buffer = Buffer.allocUnsafe(0);
  private slabPos = 0;
  private closed = false;
  /** While set (a performance.now() time), writes go to the thread pool. */
  private asyncWritesUntilMs = 0;
  /** Page-cache writes in a row slower than SLOW_SYNC_WRITE_MS. */
  private slowSyncWrites = 0;
  private readonly fallocating = new Set<Promise<void>>();
  private readonly batcher: IoBatcher;
  /** False once preadv2(RWF_NOWAIT) said it is not supported here: reads go to the thread pool. */
  private nowait = true;

  constructor(
    readonly id: DeviceId,
    readonly sizeBytes: number,
    private readonly handle: FileHandle,
    private readonly io: NativeIo,
    private readonly log: Logger,
    private readonly gate: ChangeGate | undefined,
  ) {
    this.batcher = new IoBatcher(io, handle.fd, id);
  }

  /** A wait before changing [offset, offset + length), or undefined (see ChangeGate). */
  private waitToChange(offset: number, length: number): Promise<void> | undefined {
    return this.gate?.()?.before(offset, length);
  }

  read(offset: number, length: number): Promise<Buffer> {
    const buf = this.allocRead(length);
    return this.readOne(offset, buf).then(() => buf);
  }

  readInto(offset: number, targets: readonly Uint8Array[]): Promise<void> {
    if (targets.length === 1) return this.readOne(offset, targets[0]!);
    if (this.closed) return Promise.reject(this.closedError());
    if (!this.nowait) return this.batcher.enqueue(IO_READ, offset, targets);
    const got = this.io.ioPreadNowait(this.handle.fd, targets, offset);
    const length = byteLengthOf(targets);
    if (got === length) return Promise.resolve();
    const failed = this.nowaitFailure(got, offset);
    if (failed) return failed;
    return this.batcher.enqueue(IO_READ, offset + Math.max(got, 0), skipBytes(targets, Math.max(got, 0)));
  }

  /**
   * What a short preadv2(RWF_NOWAIT) means: undefined when the rest goes to the thread pool
   * (EAGAIN: not cached; not supported here: from now on every read does), else the
   * rejected read.
   */
  private nowaitFailure(got: number, offset: number): Promise<void> | undefined {
    if (got >= 0 || got === -osConstants.errno.EAGAIN) return undefined;
    if (!NOWAIT_UNSUPPORTED.has(got)) return Promise.reject(errnoError(got, 'preadv2', { device: this.id, offset }));
    this.nowait = false;
    this.log.warn({ device: this.id, errno: ERRNO_NAMES.get(-got) }, 'preadv2(RWF_NOWAIT) is not supported here; reads use the thread pool');
    return undefined;
  }

  /** Fills `target` from the page cache on the event loop if it can, else on the thread pool. */
  private readOne(offset: number, target: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    if (!this.nowait) return this.batcher.enqueue(IO_READ, offset, target);
    const got = this.io.ioPreadNowait(this.handle.fd, target, offset);
    if (got === target.byteLength) return Promise.resolve();
    const failed = this.nowaitFailure(got, offset);
    if (failed) return failed;
    const done = Math.max(got, 0);
    return this.batcher.enqueue(IO_READ, offset + done, target.subarray(done));
  }

  write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    const wait = this.waitToChange(offset, data.byteLength);
    return wait ? wait.then(() => this.writeNow(offset, data, fua)) : this.writeNow(offset, data, fua);
  }

  private writeNow(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    if (!fua && data.byteLength <= SYNC_WRITE_MAX_BYTES && this.syncWrites() && !this.gate?.()) {
      const t0 = performance.now();
      const r = this.io.ioPwrite(this.handle.fd, data, offset);
      return this.syncWriteDone(r, t0, offset);
    }
    return this.batcher.enqueue(fua ? IO_WRITE_FDATASYNC : IO_WRITE, offset, data);
  }

  /** Like write(), from several buffers at once: pwritev, never a copy into one buffer. */
  writev(offset: number, parts: readonly Uint8Array[], fua = false): Promise<void> {
    if (parts.length === 1) return this.write(offset, parts[0]!, fua);
    if (this.closed) return Promise.reject(this.closedError());
    const wait = this.waitToChange(offset, byteLengthOf(parts));
    return wait ? wait.then(() => this.writevNow(offset, parts, fua)) : this.writevNow(offset, parts, fua);
  }

  private writevNow(offset: number, parts: readonly Uint8Array[], fua: boolean): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    if (!fua && byteLengthOf(parts) <= SYNC_WRITE_MAX_BYTES && this.syncWrites() && !this.gate?.()) {
      const t0 = performance.now();
      const r = this.io.ioPwritev(this.handle.fd, parts, offset);
      return this.syncWriteDone(r, t0, offset);
    }
    return this.batcher.enqueue(fua ? IO_WRITE_FDATASYNC : IO_WRITE, offset, parts);
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.batcher.enqueue(IO_FDATASYNC, 0, null);
  }

  trim(offset: number, length: number): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    const punch = (): Promise<void> => this.track(this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length));
    const wait = this.waitToChange(offset, length);
    return wait ? this.track(wait.then(punch)) : punch();
  }

  writeZeroes(offset: number, length: number, mayTrim: boolean): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    const wait = this.waitToChange(offset, length);
    return this.track(wait ? wait.then(() => this.zeroRange(offset, length, mayTrim)) : this.zeroRange(offset, length, mayTrim));
  }

  private async zeroRange(offset: number, length: number, mayTrim: boolean): Promise<void> {
    if (mayTrim) {
      await this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      return;
    }
    try {
      await this.fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
    } catch (err) {
      if (!(err instanceof SystemError) || err.code !== Code.UNIMPLEMENTED) throw err;
      await this.writeZeroBuffers(offset, length);
    }
  }

  /** SEEK_DATA / SEEK_HOLE (file-extents.ts); on the thread pool. */
  allocatedRanges(offset: number, lengthBytes: number, maxExtents: number): Promise<AllocatedRanges> {
    if (this.closed) return Promise.reject(this.closedError());
    return fileAllocatedRanges(this.handle.fd, this.id, offset, lengthBytes, maxExtents);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await Promise.allSettled([...this.fallocating]);
      await this.batcher.idle();
      await this.handle.datasync();
    } finally {
      await this.handle.close();
      this.log.debug({ device: this.id }, 'file device closed');
    }
  }

  /** Keeps fallocate calls in view so that close() waits for them before closing the fd. */
  private track(op: Promise<void>): Promise<void> {
    this.fallocating.add(op);
    const forget = (): void => void this.fallocating.delete(op);
    op.then(forget, forget);
    return op;
  }

  /** The outcome of a write done on the event loop, which backs off when it was slow. */
  private syncWriteDone(r: number, t0: number, offset: number): Promise<void> {
    if (performance.now() - t0 <= SLOW_SYNC_WRITE_MS) this.slowSyncWrites = 0;
    else if (++this.slowSyncWrites >= SLOW_SYNC_WRITES_IN_A_ROW) this.backOffSyncWrites();
    return r < 0 ? Promise.reject(errnoError(r, 'pwrite', { device: this.id, offset })) : Promise.resolve();
  }

  /** Whether writes may go to the page cache on the event loop right now. */
  private syncWrites(): boolean {
    return this.asyncWritesUntilMs === 0 || (performance.now() >= this.asyncWritesUntilMs && this.resumeSyncWrites());
  }

  private resumeSyncWrites(): boolean {
    this.asyncWritesUntilMs = 0;
    return true;
  }

  /**
   * A page-cache write blocked (dirty throttling, journal): the event loop must not wait on
   * the next ones, so writes take the thread pool for a while.
   */
  private backOffSyncWrites(): void {
    this.slowSyncWrites = 0;
    if (this.asyncWritesUntilMs === 0) this.log.debug({ device: this.id }, 'slow page-cache write: writes move to the thread pool');
    this.asyncWritesUntilMs = performance.now() + SYNC_WRITE_BACKOFF_MS;
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    const zeros = Buffer.alloc(Math.min(length, ZERO_CHUNK_BYTES));
    const writes: Promise<void>[] = [];
    for (let at = 0; at < length; at += zeros.length) {
      writes.push(this.batcher.enqueue(IO_WRITE, offset + at, zeros.subarray(0, Math.min(zeros.length, length - at))));
    }
    await Promise.all(writes);
  }

  private async fallocate(mode: number, offset: number, length: number): Promise<void> {
    try {
      await fallocate(this.handle.fd, mode, offset, length);
    } catch (err) {
      throw fromNodeError(err, 'fallocate', { device: this.id, offset, length });
    }
  }

  /** Small reads share a slab: one allocation serves many requests. */
  private allocRead(length: number): Buffer {
    if (length > SLAB_MAX_READ_BYTES) return Buffer.allocUnsafe(length);
    if (this.slabPos + length > this.slab.length) {
      this.slab = Buffer.allocUnsafe(SLAB_BYTES);
      this.slabPos = 0;
    }
    const buf = this.slab.subarray(this.slabPos, this.slabPos + length);
    this.slabPos += (length + 7) & ~7;
    return buf;
  }

  private closedError(): StorageError {
    return new StorageError(Code.FAILED_PRECONDITION, 'device is closed', { details: { device: this.id } });
  }
}

/**
 * Opens the file at `path` as a block device of `sizeBytes`. NOT_FOUND when it does not
 * exist. Bytes past the end of a shorter file read as zeros. `io` is the native addon's I/O
 * (tests may pass a wrapper that injects errors); `gate` is asked before every change.
 */
export async function openFileDevice(path: string, id: DeviceId, sizeBytes: number, log: Logger, io: NativeIo = nativeIo(), gate?: ChangeGate): Promise<BlockDevice> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r+');
  } catch (err) {
    throw fromNodeError(err, 'open device file', { device: id, path });
  }
  log.debug({ device: id, path, sizeBytes }, 'file device opened');
  return new FileBlockDevice(id, sizeBytes, handle, io, log, gate);
}
