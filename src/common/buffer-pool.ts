/**
 * Reusable memory for request data (read replies, write payloads), of the NBD server and
 * of the replica data server. Data up to 128 KiB gets one buffer of its power-of-two size class (4 KiB to 128 KiB); larger data gets a list of
 * 256 KiB blocks, which the device reads and writes with preadv/pwritev and the socket
 * sends with one writev. Since every large request, whatever its size, is made of the same
 * blocks, the blocks that one workload leaves behind serve the next: the memory a daemon
 * holds for data stays near the byte budget it admits (engine/nbd/byte-budget.ts) instead of growing
 * with each new request size, and freed memory is reused rather than left to the garbage
 * collector and malloc (which keep resident pages long after).
 *
 * Free memory is kept up to `retainBytes` (blocks) and 4 MiB per small class; past that a
 * returned buffer is left to the garbage collector. So is a buffer that native I/O may
 * still use (a cancelled request's, see common/memory-holds.ts): it is never handed out
 * again, and the native addon keeps its own reference until the call completes. One pool is shared by every export
 * of a daemon (sharedBufferPool()).
 */
import { isMemoryHeld } from './memory-holds.js';

export const BLOCK_BYTES = 256 << 10;
const MIN_CLASS_SHIFT = 12;
const MAX_SMALL_SHIFT = 17;
const SMALL_RETAIN_BYTES = 4 << 20;
/** Free blocks kept by default: as much as the default byte budget admits. */
export const DEFAULT_RETAIN_BYTES = 48 << 20;

export class BufferPool {
  private readonly small: Buffer[][] = Array.from({ length: MAX_SMALL_SHIFT + 1 }, () => []);
  private readonly blocks: Buffer[] = [];

  constructor(readonly retainBytes = DEFAULT_RETAIN_BYTES) {}

  /** The memory take(bytes) uses: its size class, or whole blocks. */
  static footprint(bytes: number): number {
    if (bytes > 1 << MAX_SMALL_SHIFT) return Math.ceil(bytes / BLOCK_BYTES) * BLOCK_BYTES;
    return 1 << smallShift(bytes);
  }

  /**
   * Memory for `bytes` of data: pushes onto `views` buffers of exactly `bytes` in all (in
   * order), and onto `owned` what to give back afterwards. Not zeroed.
   */
  take(bytes: number, views: Buffer[], owned: Buffer[]): void {
    if (bytes <= 1 << MAX_SMALL_SHIFT) {
      const shift = smallShift(bytes);
      const buf = this.small[shift]!.pop() ?? Buffer.allocUnsafeSlow(1 << shift);
      owned.push(buf);
      views.push(buf.length === bytes ? buf : buf.subarray(0, bytes));
      return;
    }
    for (let left = bytes; left > 0; left -= BLOCK_BYTES) {
      const block = this.blocks.pop() ?? Buffer.allocUnsafeSlow(BLOCK_BYTES);
      owned.push(block);
      views.push(left >= BLOCK_BYTES ? block : block.subarray(0, left));
    }
  }

  /** Gives back every buffer in `owned` (from take()) and empties the list. */
  give(owned: Buffer[]): void {
    for (const buf of owned) {
      if (isMemoryHeld(buf)) continue;
      if (buf.length === BLOCK_BYTES) {
        if ((this.blocks.length + 1) * BLOCK_BYTES <= this.retainBytes) this.blocks.push(buf);
        continue;
      }
      const shift = smallShift(buf.length);
      const list = this.small[shift]!;
      if (buf.length === 1 << shift && (list.length + 1) << shift <= SMALL_RETAIN_BYTES) list.push(buf);
    }
    owned.length = 0;
  }

  /** Bytes held in free buffers now. */
  get freeBytes(): number {
    let n = this.blocks.length * BLOCK_BYTES;
    for (let shift = MIN_CLASS_SHIFT; shift <= MAX_SMALL_SHIFT; shift++) n += this.small[shift]!.length << shift;
    return n;
  }
}

function smallShift(bytes: number): number {
  if (bytes <= 1 << MIN_CLASS_SHIFT) return MIN_CLASS_SHIFT;
  return 32 - Math.clz32(bytes - 1);
}

let shared: BufferPool | undefined;

/** The pool that export servers use unless given their own. */
export function sharedBufferPool(): BufferPool {
  shared ??= new BufferPool();
  return shared;
}
