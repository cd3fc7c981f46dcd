/**
 * The replica's I/O vocabulary, free of gRPC: what one request asks, what it gets back,
 * and the limits a replica enforces on a batch.
 */
import type { StorageError } from '../common/errors.js';

export type IoOp = 'write' | 'read' | 'flush' | 'trim' | 'write-zeroes' | 'unspecified';

export interface IoRequest {
  /** Chosen by the client, echoed in the result. */
  seq: number;
  op: IoOp;
  offset: number;
  /** For reads, trims and write-zeroes; a write's length is `data.byteLength`. */
  lengthBytes: number;
  /** The bytes of a write. */
  data?: Uint8Array;
  fua?: boolean;
  /** For write-zeroes: the range may be deallocated. */
  mayTrim?: boolean;
}

export interface IoResult {
  seq: number;
  /** Absent when the request succeeded. */
  error?: StorageError;
  /** The bytes of a successful read. */
  data?: Buffer;
}

export interface ReplicaLimits {
  /** Requests per batch. */
  maxBatchRequests: number;
  /** Bytes per batch: write data plus read lengths. */
  maxBatchBytes: number;
  /** The largest frame the server decodes at all; a larger one ends the stream. */
  maxFrameBytes: number;
  /** Bytes a stream may have in flight before the server stops reading from it. */
  maxStreamInflightBytes: number;
}

export const DEFAULT_REPLICA_LIMITS: Readonly<ReplicaLimits> = Object.freeze({
  maxBatchRequests: 1024,
  maxBatchBytes: 8 << 20,
  maxFrameBytes: 32 << 20,
  maxStreamInflightBytes: 64 << 20,
});

/** Write data plus read lengths: what a batch costs in memory on both ends. */
export function requestBytes(r: IoRequest): number {
  if (r.op === 'write') return r.data?.byteLength ?? 0;
  if (r.op === 'read') return r.lengthBytes;
  return 0;
}
