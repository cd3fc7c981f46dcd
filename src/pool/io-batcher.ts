/**
 * The file device's thread-pool path (file-device.ts): I/O ops queued during one event-loop
 * turn are handed to the native addon's batched pread/pwrite/fdatasync (native/io.ts) in
 * jobs of at most MAX_OPS_PER_JOB ops or MAX_BYTES_PER_JOB bytes (a larger op gets a job of
 * its own), so many small requests pay one thread hop. Each op's negative errno becomes a
 * SystemError naming the syscall.
 */
import { constants as osConstants } from 'node:os';
import { SystemError, codeForErrno } from '../common/errors.js';
import type { DeviceId } from '../common/ids.js';
import { IO_FDATASYNC, IO_READ, type NativeIo } from '../native/io.js';

/** At most this many ops, or this many bytes, go to one thread-pool job. */
const MAX_OPS_PER_JOB = 16;
const MAX_BYTES_PER_JOB = 256 << 10;

/** Errno names by number, for messages and logs. */
export const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, num]) => [num, name]));

/** The SystemError for a negative errno that `syscall` returned. */
export function errnoError(negErrno: number, syscall: string, details: Record<string, unknown>): SystemError {
  const errno = -negErrno;
  const errnoName = ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
  return new SystemError(codeForErrno(errnoName), `${syscall} failed: ${errnoName}`, { errno, errnoName, syscall }, { details });
}

/** What one batched op reads into or writes from: a buffer, several (pwritev), or none (fdatasync). */
export type IoBuffers = Uint8Array | readonly Uint8Array[] | null;

export function byteLengthOf(bufs: IoBuffers): number {
  if (bufs === null) return 0;
  if (bufs instanceof Uint8Array) return bufs.byteLength;
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n;
}

interface Pending {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Queues I/O ops during one event-loop turn and submits them to the thread pool in jobs. */
export class IoBatcher {
  private ops: number[] = [];
  private positions: number[] = [];
  private bufs: IoBuffers[] = [];
  private waiters: Pending[] = [];
  private scheduled = false;
  private inFlightJobs = 0;
  private idleWaiters: (() => void)[] = [];
  private readonly submitBound = (): void => this.submit();

  constructor(
    private readonly io: NativeIo,
    private readonly fd: number,
    private readonly id: DeviceId,
  ) {}

  enqueue(op: number, position: number, buf: IoBuffers): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.ops.push(op);
      this.positions.push(position);
      this.bufs.push(buf);
      this.waiters.push({ resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(this.submitBound);
      }
    });
  }

  /** Resolves once every submitted job has completed. */
  idle(): Promise<void> {
    if (this.inFlightJobs === 0 && this.ops.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private submit(): void {
    this.scheduled = false;
    const count = this.ops.length;
    let start = 0;
    while (start < count) {
      let end = start;
      let bytes = 0;
      while (end < count && end - start < MAX_OPS_PER_JOB && (end === start || bytes + byteLengthOf(this.bufs[end]!) <= MAX_BYTES_PER_JOB)) {
        bytes += byteLengthOf(this.bufs[end]!);
        end++;
      }
      this.submitJob(start, end);
      start = end;
    }
    this.ops = [];
    this.positions = [];
    this.bufs = [];
    this.waiters = [];
  }

  private submitJob(start: number, end: number): void {
    const n = end - start;
    const ops = Int32Array.from(this.ops.slice(start, end));
    const positions = Float64Array.from(this.positions.slice(start, end));
    const bufs = this.bufs.slice(start, end);
    const waiters = this.waiters.slice(start, end);
    const results = new Int32Array(n);
    this.inFlightJobs++;
    this.io.ioSubmit(this.fd, ops, positions, bufs, results, () => {
      this.inFlightJobs--;
      for (let i = 0; i < n; i++) {
        const r = results[i]!;
        const w = waiters[i]!;
        if (r >= 0) w.resolve();
        else w.reject(errnoError(r, ops[i] === IO_READ ? 'pread' : ops[i] === IO_FDATASYNC ? 'fdatasync' : 'pwrite', { device: this.id, offset: positions[i] }));
      }
      if (this.inFlightJobs === 0 && this.ops.length === 0) {
        const waiting = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiting) w();
      }
    });
  }
}
