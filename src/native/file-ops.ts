/**
 * File calls node lacks: fallocate (punch hole, zero range), FICLONE, FICLONERANGE, SEEK_DATA and
 * SEEK_HOLE, and FIFREEZE/FITHAW. All run off the event loop; failures are SystemError.
 */
import { callNative } from './native-errors.js';
import { checkFd, checkPositive, checkUint } from './native-args.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, nativeAddon } from './native-addon.js';

export { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE };

/** fallocate(2). `mode` is 0 or an OR of FALLOC_FL_* values. */
export async function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  checkFd(fd);
  checkUint(mode, 'mode');
  checkUint(offset, 'offset');
  checkPositive(length, 'length');
  await callNative(() => nativeAddon().fallocate(fd, mode, offset, length), { fd, mode, offset, length });
}

/** Deallocates the range (it reads back as zeros); the file size is unchanged. */
export function punchHole(fd: number, offset: number, length: number): Promise<void> {
  return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

/** Zeroes the range, keeping it allocated (so later writes there cannot hit ENOSPC). */
export function zeroRange(fd: number, offset: number, length: number): Promise<void> {
  return fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
}

/**
 * ioctl(FICLONE): makes `destFd`'s file share all of `srcFd`'s blocks (a reflink).
 * Where the filesystem cannot (ext4, tmpfs, across filesystems) it fails with a
 * SystemError whose errnoName is EOPNOTSUPP, EXDEV or EINVAL.
 */
export async function ficlone(destFd: number, srcFd: number): Promise<void> {
  checkFd(destFd, 'destFd');
  checkFd(srcFd, 'srcFd');
  await callNative(() => nativeAddon().ficlone(destFd, srcFd), { destFd, srcFd });
}

/**
 * ioctl(FICLONERANGE): `destFd`'s bytes [destOffset, destOffset + length) share `srcFd`'s
 * blocks of [srcOffset, srcOffset + length). Offsets and length are multiples of the
 * filesystem's block size, except that a range may end at the source's end of file. Fails
 * like ficlone() where the filesystem cannot share blocks. A zero length is refused here
 * (the kernel would read it as "to the end of the file").
 */
export async function ficloneRange(destFd: number, srcFd: number, srcOffset: number, length: number, destOffset: number): Promise<void> {
  checkFd(destFd, 'destFd');
  checkFd(srcFd, 'srcFd');
  checkUint(srcOffset, 'srcOffset');
  checkPositive(length, 'length');
  checkUint(destOffset, 'destOffset');
  await callNative(() => nativeAddon().ficloneRange(destFd, srcFd, srcOffset, length, destOffset), { destFd, srcFd, srcOffset, length, destOffset });
}

/** The first data offset at or after `offset`, or null when only holes follow. */
export async function seekData(fd: number, offset: number): Promise<number | null> {
  checkFd(fd);
  checkUint(offset, 'offset');
  return callNative(() => nativeAddon().seekData(fd, offset), { fd, offset });
}

/** The first hole at or after `offset` (the end of the file counts as one), null past it. */
export async function seekHole(fd: number, offset: number): Promise<number | null> {
  checkFd(fd);
  checkUint(offset, 'offset');
  return callNative(() => nativeAddon().seekHole(fd, offset), { fd, offset });
}

/**
 * Freezes the filesystem mounted at the directory `dirFd` was opened on (FIFREEZE):
 * writers block until fsThaw. Callers must thaw in a `finally`.
 */
export async function fsFreeze(dirFd: number): Promise<void> {
  checkFd(dirFd, 'dirFd');
  await callNative(() => nativeAddon().fsFreeze(dirFd), { dirFd });
}

/** Thaws a filesystem frozen by fsFreeze (FITHAW). */
export async function fsThaw(dirFd: number): Promise<void> {
  checkFd(dirFd, 'dirFd');
  await callNative(() => nativeAddon().fsThaw(dirFd), { dirFd });
}
