/**
 * The bytes of request data a daemon holds in memory at once, shared by every connection
 * of every export: a read holds its length from the moment it is admitted until its reply
 * has left for the socket, a write from its header until the device has its payload. A
 * connection that cannot take what its next request needs stops reading its socket and
 * waits its turn (first come, first served), so a client with more in flight than the
 * budget gets back-pressure instead of the daemon growing.
 *
 * Progress is guaranteed: the limit is never below the largest request (32 MiB), and a
 * request is admitted whenever nothing else holds any budget.
 */
import { BLOCK_SIZE_MAX } from './protocol.js';

/** The default limit of the shared budget. */
export const DEFAULT_BUDGET_BYTES = 48 << 20;

interface Waiter {
  bytes: number;
  granted: () => void;
}

export class ByteBudget {
  private used = 0;
  private readonly waiters: Waiter[] = [];

  constructor(readonly limitBytes = DEFAULT_BUDGET_BYTES) {
    if (!(limitBytes >= BLOCK_SIZE_MAX)) throw new RangeError(`an NBD byte budget must be at least ${BLOCK_SIZE_MAX} bytes`);
  }

  get usedBytes(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Takes `bytes` if they fit now and nobody is waiting ahead. */
  tryTake(bytes: number): boolean {
    if (this.waiters.length > 0 || !this.fits(bytes)) return false;
    this.used += bytes;
    return true;
  }

  /**
   * Queues for `bytes`; `granted` runs (from a microtask) once they are taken on the
   * waiter's behalf. Returns a function that withdraws the request if not yet granted.
   */
  wait(bytes: number, granted: () => void): () => void {
    const w: Waiter = { bytes, granted };
    this.waiters.push(w);
    this.grant();
    return () => {
      const i = this.waiters.indexOf(w);
      if (i >= 0) {
        this.waiters.splice(i, 1);
        this.grant();
      }
    };
  }

  give(bytes: number): void {
    if (bytes === 0) return;
    this.used -= bytes;
    if (this.used < 0) throw new Error(`NBD byte budget released more than it lent (${this.used})`);
    this.grant();
  }

  private fits(bytes: number): boolean {
    return this.used === 0 || this.used + bytes <= this.limitBytes;
  }

  private grant(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.bytes)) {
      const w = this.waiters.shift()!;
      this.used += w.bytes;
      queueMicrotask(w.granted);
    }
  }
}

let shared: ByteBudget | undefined;

/** The budget that export servers share unless given their own. */
export function sharedByteBudget(): ByteBudget {
  shared ??= new ByteBudget();
  return shared;
}
