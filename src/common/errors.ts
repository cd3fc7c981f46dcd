/**
 * The one error class of Cairn. Codes mirror gRPC's canonical status codes so that only
 * the rpc edge has to translate them; everything below decides on `code` and `errno`,
 * never on message text.
 */
export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

export interface StorageErrorOptions {
  cause?: unknown;
  details?: Record<string, unknown>;
}

export class StorageError extends Error {
  readonly code: Code;
  readonly details: Record<string, unknown>;

  constructor(code: Code, message: string, options: StorageErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StorageError';
    this.code = code;
    this.details = options.details ?? {};
  }
}

/**
 * `details.reason` of an error that a replica refused because a newer engine of the volume
 * has been there (fencing, rule 3); `details.newestEpoch` says which epoch. It travels
 * across the peer protocol, so that engines decide on it, never on the message text.
 */
export const STALE_EPOCH = 'STALE_EPOCH';

/** A refusal of a stale epoch (see STALE_EPOCH). */
export function staleEpochError(replica: string, volumeId: string, epoch: number, newestEpoch: number): StorageError {
  return new StorageError(Code.FAILED_PRECONDITION,
    `stale epoch ${epoch} < ${newestEpoch}: replica ${replica} has been fenced by a newer engine of volume ${volumeId}`,
    { details: { reason: STALE_EPOCH, replica, volumeId, epoch, newestEpoch } });
}

export function isStaleEpoch(err: unknown): boolean {
  return err instanceof StorageError && err.details.reason === STALE_EPOCH;
}

/**
 * `details.reason` of an UNAVAILABLE error because the cluster store (etcd) did not answer:
 * cairnd itself is up. It travels to cairnctl in the API's trailers (rpc/status.ts).
 */
export const STORE_UNAVAILABLE = 'STORE_UNAVAILABLE';

export function isStoreUnavailable(err: unknown): boolean {
  return err instanceof StorageError && err.details.reason === STORE_UNAVAILABLE;
}

/**
 * `details.reason` of the error a client makes when the channel to a server never carried
 * an answer (nothing listens on the socket, or the connection failed): see
 * rpc/status.ts `isFromServer`.
 */
export const SERVER_UNREACHABLE = 'SERVER_UNREACHABLE';

/** A failed system call, from the native addon or from node's fs. */
export class SystemError extends StorageError {
  readonly errno: number;
  readonly syscall: string;
  /** The errno's symbolic name, e.g. "ENOSPC". */
  readonly errnoName: string;

  constructor(code: Code, message: string, fields: { errno: number; errnoName: string; syscall: string }, options: StorageErrorOptions = {}) {
    super(code, message, { ...options, details: { ...options.details, errno: fields.errno, errnoName: fields.errnoName, syscall: fields.syscall } });
    this.name = 'SystemError';
    this.errno = fields.errno;
    this.errnoName = fields.errnoName;
    this.syscall = fields.syscall;
  }
}

/** A child process that exited non-zero (mkfs, losetup, ...). */
export class ChildProcessError extends StorageError {
  readonly exitCode: number | null;
  readonly stderr: string;

  /** `options.code` when the caller knows what the failure means (a missing path is NOT_FOUND); INTERNAL by default. */
  constructor(command: string, exitCode: number | null, stderr: string, options: StorageErrorOptions & { code?: Code } = {}) {
    super(options.code ?? Code.INTERNAL, `${command} failed with exit code ${exitCode ?? 'signal'}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`, {
      ...options,
      details: { ...options.details, command, exitCode },
    });
    this.name = 'ChildProcessError';
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** The gRPC code that fits an errno: ENOSPC is RESOURCE_EXHAUSTED, ENOENT is NOT_FOUND, ... */
export function codeForErrno(errnoName: string): Code {
  switch (errnoName) {
    case 'ENOENT':
    case 'ENXIO':
    case 'ENODEV':
      return Code.NOT_FOUND;
    case 'EEXIST':
      return Code.ALREADY_EXISTS;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'ENOMEM':
    case 'EMFILE':
    case 'ENFILE':
      return Code.RESOURCE_EXHAUSTED;
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return Code.PERMISSION_DENIED;
    case 'EINVAL':
    case 'ENOTTY':
    case 'E2BIG':
      return Code.INVALID_ARGUMENT;
    case 'EBUSY':
    case 'EAGAIN':
      return Code.UNAVAILABLE;
    case 'EOPNOTSUPP':
    case 'ENOTSUP':
    case 'ENOSYS':
    case 'EXDEV':
      return Code.UNIMPLEMENTED;
    case 'EIO':
      return Code.DATA_LOSS;
    default:
      return Code.INTERNAL;
  }
}

/** Wraps an error thrown by node's fs (which carries `code` and `errno`) into a SystemError. */
export function fromNodeError(err: unknown, what: string, details: Record<string, unknown> = {}): StorageError {
  if (err instanceof StorageError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && typeof e.errno === 'number') {
    return new SystemError(codeForErrno(e.code), `${what}: ${e.code} (${e.message})`, {
      errno: Math.abs(e.errno),
      errnoName: e.code,
      syscall: e.syscall ?? 'unknown',
    }, { cause: err, details });
  }
  return new StorageError(Code.INTERNAL, `${what}: ${e instanceof Error ? e.message : String(err)}`, { cause: err, details });
}

export function isStorageError(err: unknown, code?: Code): err is StorageError {
  return err instanceof StorageError && (code === undefined || err.code === code);
}
