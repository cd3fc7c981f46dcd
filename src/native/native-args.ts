/** Argument checks done in TypeScript before a native call, so bad input is INVALID_ARGUMENT. */
import { Code, StorageError } from '../common/errors.js';

function invalid(message: string, details: Record<string, unknown>): StorageError {
  return new StorageError(Code.INVALID_ARGUMENT, message, { details });
}

/** A file descriptor: an integer in [0, 2^31). */
export function checkFd(fd: number, what = 'fd'): number {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw invalid(`${what} must be an open file descriptor`, { [what]: fd });
  return fd;
}

/** A byte offset, length or sector number: a non-negative safe integer. */
export function checkUint(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw invalid(`${what} must be a non-negative safe integer`, { [what]: value });
  return value;
}

/** Like checkUint, and greater than zero. */
export function checkPositive(value: number, what: string): number {
  if (checkUint(value, what) === 0) throw invalid(`${what} must be greater than zero`, { [what]: value });
  return value;
}

/** A string the kernel takes as a C string in a fixed field: no NUL, at most maxBytes bytes. */
export function checkCString(value: string, what: string, minBytes: number, maxBytes: number): string {
  const bytes = typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : -1;
  if (bytes < minBytes || bytes > maxBytes || value.includes('\0')) {
    throw invalid(`${what} must be ${minBytes}-${maxBytes} bytes without NUL`, { [what]: value });
  }
  return value;
}
