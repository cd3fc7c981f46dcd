/**
 * Bounds one cluster store call: rejects with UNAVAILABLE when it has not settled by the
 * deadline and with CANCELLED when the caller's signal aborts, whatever the backend does.
 */
import { Code, STORE_UNAVAILABLE, StorageError } from '../../common/errors.js';

export interface Deadline {
  /** Absolute time (ms since the epoch), for gRPC's `deadline` call option. */
  atMs: number;
  timeoutMs: number;
}

/**
 * Runs `fn` with a deadline. `fn` should pass `deadline.atMs` down so the backend gives up
 * too; the backstop here fires `graceMs` later in case it does not.
 */
export async function withDeadline<T>(
  what: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  fn: (deadline: Deadline) => Promise<T>,
  graceMs = 250,
): Promise<T> {
  if (signal?.aborted) throw cancelled(what, signal);
  const deadline = { atMs: Date.now() + timeoutMs, timeoutMs };
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StorageError(Code.UNAVAILABLE, `${what}: no answer from the cluster store within ${timeoutMs} ms`, {
      details: { reason: STORE_UNAVAILABLE },
    })), timeoutMs + graceMs);
    if (signal) {
      onAbort = () => reject(cancelled(what, signal));
      signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  const work = fn(deadline);
  work.catch(() => undefined); // settled through the race below; never unhandled
  try {
    return await Promise.race([work, guard]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}

function cancelled(what: string, signal: AbortSignal): StorageError {
  return new StorageError(Code.CANCELLED, `${what}: cancelled`, { cause: signal.reason });
}
