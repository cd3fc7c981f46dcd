/**
 * Turns what the native addon throws into Cairn's typed errors: a failed system call
 * becomes a SystemError (errno, errnoName, syscall; code from codeForErrno), a rejected
 * argument an INVALID_ARGUMENT StorageError, and a missing device-mapper a
 * DeviceMapperUnavailableError.
 */
import { Code, StorageError, SystemError, codeForErrno } from '../common/errors.js';

export const DEVICE_MAPPER_UNAVAILABLE = 'device-mapper is not available in this kernel';
const DEVICE_MAPPER_HINT = 'load dm_mod (modprobe dm_mod) or use the file pool backend';

/** The kernel has no device-mapper (or /dev/mapper/control is missing). Code UNAVAILABLE. */
export class DeviceMapperUnavailableError extends SystemError {
  constructor(fields: { errno: number; errnoName: string; syscall: string }, cause?: unknown) {
    super(Code.UNAVAILABLE, `${DEVICE_MAPPER_UNAVAILABLE}: ${DEVICE_MAPPER_HINT}`, fields, { cause });
    this.name = 'DeviceMapperUnavailableError';
  }
}

interface NativeFailure {
  errno: number;
  code: string;
  syscall: string;
  message: string;
}

function isNativeFailure(err: unknown): err is NativeFailure {
  if (!(err instanceof Error)) return false;
  const e = err as Error & Partial<NativeFailure>;
  return typeof e.errno === 'number' && typeof e.code === 'string' && typeof e.syscall === 'string';
}

/** Converts an error thrown or rejected by the addon. */
export function fromNativeError(err: unknown, details: Record<string, unknown> = {}): StorageError {
  if (err instanceof StorageError) return err;
  if (isNativeFailure(err)) {
    const fields = { errno: err.errno, errnoName: err.code, syscall: err.syscall };
    return new SystemError(codeForErrno(err.code), err.message, fields, { cause: err, details });
  }
  if (err instanceof TypeError) return new StorageError(Code.INVALID_ARGUMENT, err.message, { cause: err, details });
  return new StorageError(Code.INTERNAL, `native call failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err, details });
}

/**
 * Like fromNativeError, for device-mapper calls: failing to open the control node with
 * ENOENT, ENODEV or ENXIO means the kernel has no device-mapper. (ENXIO from a dm ioctl
 * itself means "no such dm device" and stays a NOT_FOUND SystemError.)
 */
export function fromDeviceMapperError(err: unknown, details: Record<string, unknown> = {}): StorageError {
  const converted = fromNativeError(err, details);
  if (
    converted instanceof SystemError &&
    converted.syscall.startsWith('open(') &&
    ['ENOENT', 'ENODEV', 'ENXIO'].includes(converted.errnoName)
  ) {
    return new DeviceMapperUnavailableError(converted, err);
  }
  return converted;
}

/** Runs one native call, converting whatever it throws or rejects with. */
export async function callNative<T>(call: () => Promise<T>, details: Record<string, unknown> = {}): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw fromNativeError(err, details);
  }
}
