/**
 * Types for the block I/O half of the native addon (native/src/io.cc). Every function
 * returns a byte count or a negative errno instead of throwing, so the hot path never
 * builds exception objects.
 */
import { Code, StorageError } from '../common/errors.js';
import { nativeAddon } from './native-addon.js';

/** Op codes for `ioSubmit`. */
export const IO_READ = 1;
export const IO_WRITE = 2;
export const IO_FDATASYNC = 3;
/** A write followed by fdatasync on the same thread (FUA). */
export const IO_WRITE_FDATASYNC = 4;

export interface NativeIo {
  /**
   * preadv2(RWF_NOWAIT) on the calling thread, into one buffer or several back to back:
   * reads only what the page cache holds.
   * Returns the bytes read before the first uncached byte (possibly 0; bytes past EOF read
   * as zeros), or -errno.
   */
  ioPreadNowait(fd: number, buf: Uint8Array | readonly Uint8Array[], position: number): number;
  /** A full pwrite on the calling thread: the byte count or -errno. */
  ioPwrite(fd: number, buf: Uint8Array, position: number): number;
  /** A full pwritev of `bufs`, back to back, on the calling thread: the byte count or -errno. */
  ioPwritev(fd: number, bufs: readonly Uint8Array[], position: number): number;
  /** A close-on-exec duplicate of `fd` (fcntl F_DUPFD_CLOEXEC): the new fd, or -errno. */
  ioDupFd(fd: number): number;
  /**
   * Runs `ops[i]` at `positions[i]` with `bufs[i]` (null for IO_FDATASYNC), in order, in one
   * libuv threadpool job; writes 0 or -errno into `results[i]`, then calls `callback()`.
   * Reads fill the whole buffer (zeros past EOF). A read's or write's entry may be an array
   * of buffers, filled or written back to back (preadv/pwritev, no copy into one buffer).
   */
  ioSubmit(
    fd: number,
    ops: Int32Array,
    positions: Float64Array,
    bufs: (Uint8Array | readonly Uint8Array[] | null)[],
    results: Int32Array,
    callback: () => void,
  ): void;
}

let loaded: NativeIo | undefined;

/** The addon's I/O functions; FAILED_PRECONDITION when the addon is not built (`npm install`). */
export function nativeIo(): NativeIo {
  if (loaded) return loaded;
  const addon = nativeAddon() as unknown as Partial<NativeIo>;
  if (typeof addon.ioSubmit !== 'function' || typeof addon.ioPreadNowait !== 'function' || typeof addon.ioPwrite !== 'function' || typeof addon.ioPwritev !== 'function' || typeof addon.ioDupFd !== 'function') {
    throw new StorageError(Code.FAILED_PRECONDITION, 'native addon lacks the block I/O functions (native/src/io.cc): rebuild it with npm install');
  }
  loaded = addon as NativeIo;
  return loaded;
}
