/**
 * The one place where etcd3 and grpc-js errors become StorageErrors. Decides on error
 * classes and gRPC status codes, never on message text.
 */
import { isBrokenCircuitError } from 'cockatiel';
import {
  ClientClosedError,
  EtcdLeaseInvalidError,
  EtcdWatchStreamEnded,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCInternalError,
  GRPCInvalidArgumentError,
  GRPCNotFoundError,
  GRPCOutOfRangeError,
  GRPCResourceExhastedError,
  GRPCUnavailableError,
  GRPCUnknownError,
} from 'etcd3';
import { Code, STORE_UNAVAILABLE, StorageError } from '../../common/errors.js';

/** gRPC status codes of raw grpc-js errors (streams), mapped to ours. */
const RAW_CODES: ReadonlyMap<number, Code> = new Map([
  [1, Code.UNAVAILABLE], // cancelled: the channel was torn down under us
  [2, Code.UNAVAILABLE], // unknown: connection reset
  [3, Code.INVALID_ARGUMENT],
  [4, Code.UNAVAILABLE], // deadline exceeded
  [5, Code.NOT_FOUND],
  [8, Code.UNAVAILABLE], // resource exhausted: etcd is overloaded ("too many requests")
  [11, Code.OUT_OF_RANGE],
  [13, Code.UNAVAILABLE], // internal: usually a broken HTTP/2 connection
  [14, Code.UNAVAILABLE],
]);

function codeOf(err: unknown): Code {
  if (err instanceof EtcdLeaseInvalidError || err instanceof GRPCNotFoundError) return Code.NOT_FOUND;
  if (err instanceof ClientClosedError) return Code.FAILED_PRECONDITION;
  if (err instanceof GRPCInvalidArgumentError) return Code.INVALID_ARGUMENT;
  if (err instanceof GRPCOutOfRangeError) return Code.OUT_OF_RANGE;
  if (
    err instanceof GRPCUnavailableError || err instanceof GRPCDeadlineExceededError || err instanceof GRPCCancelledError
    || err instanceof GRPCInternalError || err instanceof GRPCUnknownError || err instanceof GRPCResourceExhastedError
    || err instanceof EtcdWatchStreamEnded || (err instanceof Error && isBrokenCircuitError(err))
  ) {
    return Code.UNAVAILABLE;
  }
  const raw = (err as { code?: unknown } | undefined)?.code;
  if (typeof raw === 'number') return RAW_CODES.get(raw) ?? Code.INTERNAL;
  return Code.INTERNAL;
}

/** Wraps anything an etcd call threw; StorageErrors pass through unchanged. */
export function fromEtcdError(err: unknown, what: string): StorageError {
  if (err instanceof StorageError) return err;
  const code = codeOf(err);
  const text = err instanceof Error ? err.message : String(err);
  if (code !== Code.UNAVAILABLE) return new StorageError(code, `${what}: ${text}`, { cause: err });
  return new StorageError(code, `${what}: etcd is unavailable: ${text}`, { cause: err, details: { reason: STORE_UNAVAILABLE } });
}
