/**
 * Block-device ioctls: size, discard, flush, and a loop device's size limit. `blockFlush` is fdatasync, which on a block
 * device writes back its page cache and sends a cache flush to the device; BLKFLSBUF is
 * not used (it drops the clean cache as well and adds no durability).
 */
import { callNative } from './native-errors.js';
import { checkFd, checkPositive, checkUint } from './native-args.js';
import { nativeAddon } from './native-addon.js';

/** The device's size in bytes (BLKGETSIZE64). */
export async function blockDeviceSize(fd: number): Promise<number> {
  checkFd(fd);
  return callNative(() => nativeAddon().blockDeviceSize(fd), { fd });
}

/** Discards the byte range (BLKDISCARD); offset and length must be sector-aligned. */
export async function blockDiscard(fd: number, offset: number, length: number): Promise<void> {
  checkFd(fd);
  checkUint(offset, 'offset');
  checkPositive(length, 'length');
  await callNative(() => nativeAddon().blockDiscard(fd, offset, length), { fd, offset, length });
}

/** Makes every completed write durable (fdatasync). */
export async function blockFlush(fd: number): Promise<void> {
  checkFd(fd);
  await callNative(() => nativeAddon().blockFlush(fd), { fd });
}

/**
 * Sets the size limit of the loop device open on `fd` (LOOP_SET_STATUS64's lo_sizelimit),
 * which becomes its size at once, a mounted filesystem on it included; the device must be
 * bound and its backing file at least that large. 0 removes the limit (the file's size).
 */
export async function loopSetSizeLimit(fd: number, sizeLimitBytes: number): Promise<void> {
  checkFd(fd);
  checkUint(sizeLimitBytes, 'sizeLimitBytes');
  await callNative(() => nativeAddon().loopSetSizeLimit(fd, sizeLimitBytes), { fd, sizeLimitBytes });
}
