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
  /**
   * In-process callers only (never on the wire): a write's bytes in pieces, written back
   * to back with one scatter-gather write instead of `data`; and a read's caller-owned
   * buffers, filled back to back instead of returning `data`. The caller does not touch
   * them until the result arrives.
   */
  parts?: readonly Uint8Array[];
  targets?: readonly Uint8Array[];
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
  if (r.op === 'write') return r.data?.byteLength ?? totalBytes(r.parts);
  if (r.op === 'read') return r.lengthBytes;
  return 0;
}

/** The bytes of buffers laid back to back. */
export function totalBytes(parts: readonly Uint8Array[] | undefined): number {
  let n = 0;
  if (parts) for (const p of parts) n += p.byteLength;
  return n;
}
