/**
 * A token bucket that limits bytes per second (the rebuild's copy rate), with an
 * injectable clock so tests never depend on wall-clock time.
 *
 * Takers may go into debt: `take(n)` always deducts n and then waits until the bucket has
 * refilled to zero. Concurrent takers queue behind each other's debt, so the long-run
 * rate is the configured one whatever the sizes asked for (even sizes above the burst).
 */
import { Code, StorageError } from '../common/errors.js';

export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Resolves after `ms`; rejects with CANCELLED as soon as `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

function cancelled(signal: AbortSignal): StorageError {
  const reason: unknown = signal.reason;
  return reason instanceof StorageError && reason.code === Code.CANCELLED ? reason : new StorageError(Code.CANCELLED, 'wait for the rate limit cancelled', { cause: reason });
}

export const systemClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) => new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(cancelled(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener('abort', onAbort, { once: true });
  }),
};

export class TokenBucket {
  private rate: number;
  private tokens: number;
  private last: number;

  /** `rateBytesPerSec` 0 means unlimited. `burstBytes`: what may pass at once after an idle spell. */
  constructor(rateBytesPerSec: number, private readonly burstBytes: number, private readonly clock: Clock = systemClock) {
    this.rate = TokenBucket.checkRate(rateBytesPerSec);
    if (!(burstBytes >= 0)) throw new StorageError(Code.INVALID_ARGUMENT, `burst must be zero or more bytes, got ${burstBytes}`);
    this.tokens = burstBytes;
    this.last = clock.now();
  }

  get rateBytesPerSec(): number {
    return this.rate;
  }

  /** Changes the rate from now on (0 = unlimited). */
  setRate(rateBytesPerSec: number): void {
    this.refill();
    this.rate = TokenBucket.checkRate(rateBytesPerSec);
    if (this.rate === 0) this.tokens = this.burstBytes;
  }

  /** Waits until `bytes` may pass. Rejects with CANCELLED (and gives the bytes back) when `signal` aborts. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw cancelled(signal);
    if (this.rate === 0 || bytes <= 0) return;
    this.refill();
    this.tokens -= bytes;
    if (this.tokens >= 0) return;
    const waitMs = (-this.tokens * 1000) / this.rate;
    try {
      await this.clock.sleep(waitMs, signal);
    } catch (err) {
      this.tokens += bytes;
      throw err;
    }
  }

  private refill(): void {
    const now = this.clock.now();
    if (this.rate > 0) this.tokens = Math.min(this.burstBytes, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = now;
  }

  private static checkRate(rate: number): number {
    if (!Number.isFinite(rate) || rate < 0) throw new StorageError(Code.INVALID_ARGUMENT, `rate must be zero (unlimited) or more bytes per second, got ${rate}`);
    return rate;
  }
}
