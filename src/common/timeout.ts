/** Deadlines for promises that have none of their own. */
import { Code, StorageError } from './errors.js';

/**
 * Settles like `promise`, or rejects with UNAVAILABLE ("<what>: no answer within N ms")
 * when it has not settled after `ms`. The promise itself goes on; cancel it separately.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StorageError(Code.UNAVAILABLE, `${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
