/**
 * The rpc edge: the one place where StorageError becomes a grpc-js status and back.
 * Codes are the same numbers on both sides (see common/errors.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';

/** Trailing metadata that carries `details.reason` (and a stale epoch's `newestEpoch`) across. */
const REASON_KEY = 'cairn-reason';
const NEWEST_EPOCH_KEY = 'cairn-newest-epoch';
/**
 * Set on every status a Cairn server sends. A status without it was made by the client's
 * own channel (it could not connect, or the connection broke before an answer): the
 * server was never reached. grpc-js gives those no server metadata at all.
 */
const ORIGIN_KEY = 'cairn-origin';
const ORIGIN_SERVER = 'server';

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  if (err instanceof StorageError) {
    const metadata = serverMetadata();
    if (typeof err.details.reason === 'string') metadata.set(REASON_KEY, err.details.reason);
    if (typeof err.details.newestEpoch === 'number') metadata.set(NEWEST_EPOCH_KEY, String(err.details.newestEpoch));
    return { code: err.code as number as grpc.status, details: err.message, metadata };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { code: grpc.status.INTERNAL, details: `internal error: ${message}`, metadata: serverMetadata() };
}

function serverMetadata(): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(ORIGIN_KEY, ORIGIN_SERVER);
  return metadata;
}

/** True when a Cairn server sent this status (toServiceError); false when the client's channel made it. */
export function isFromServer(err: Partial<grpc.ServiceError>): boolean {
  return err.metadata?.get(ORIGIN_KEY)[0] === ORIGIN_SERVER;
}

export function fromServiceError(err: unknown): StorageError {
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e?.code === 'number') {
    const details: Record<string, unknown> = {};
    const reason = e.metadata?.get(REASON_KEY)[0];
    if (typeof reason === 'string') details.reason = reason;
    const newest = Number(e.metadata?.get(NEWEST_EPOCH_KEY)[0]);
    if (Number.isSafeInteger(newest) && newest > 0) details.newestEpoch = newest;
    return new StorageError(e.code as number as Code, e.details || e.message || 'unknown error', { cause: err, details });
  }
  return new StorageError(Code.UNKNOWN, err instanceof Error ? err.message : String(err), { cause: err });
}

/**
 * Wraps an async handler into a grpc-js unary handler: errors become statuses, and
 * unexpected ones (not StorageError) are logged by `onUnexpected`.
 */
export function unary<Req, Res>(
  handler: (request: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  onUnexpected: (err: unknown, method: string) => void,
  method: string,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    handler(call.request, call).then(
      (response) => callback(null, response),
      (err: unknown) => {
        if (!(err instanceof StorageError)) onUnexpected(err, method);
        callback(toServiceError(err) as grpc.ServiceError);
      },
    );
  };
}
