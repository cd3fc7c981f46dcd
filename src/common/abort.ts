/**
 * Cancellation for long calls: a caller's AbortSignal (a cancelled CSI call, a client that
 * went away) turns into CANCELLED at the next step, or as soon as it fires while a step
 * that cannot be cancelled itself is awaited.
 */
import { Code, StorageError } from './errors.js';

/** The CANCELLED error for `what`, carrying the signal's reason as its cause. */
export function cancelledError(what: string, signal: AbortSignal): StorageError {
  return new StorageError(Code.CANCELLED, `${what}: cancelled`, { cause: signal.reason });
}

/** Throws CANCELLED when `signal` has fired; a no-op without a signal. */
export function throwIfCancelled(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw cancelledError(what, signal);
}

/**
 * Settles like `promise`, or rejects with CANCELLED as soon as `signal` fires. The promise
 * itself goes on (its rejection is then swallowed): callers that must not leave its work
 * behind wait for it separately.
 */
export async function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (!signal) return promise;
  throwIfCancelled(signal, what);
  promise.catch(() => undefined);
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(cancelledError(what, signal));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}
