/**
 * What the replica manager and its snapshot copies (snapshot-copies.ts) share: the shape of
 * a replica reference and status, and the checks of the ids and sizes in a request.
 */
import { Code, StorageError } from '../common/errors.js';
import { asDeviceId, type ReplicaId, type SnapshotId, type VolumeId } from '../common/ids.js';
import type { RebuildProgressRecord, ReplicaState } from '../store/node-store.js';

export interface ReplicaRefInput {
  replicaId: string;
  /** Must match the replica's volume; may be empty only where a method says so. */
  volumeId: string;
}

export interface ReplicaStatusView {
  replicaId: ReplicaId;
  volumeId: VolumeId;
  sizeBytes: number;
  allocatedBytes: number;
  epoch: number;
  state: ReplicaState;
  /** Set while rebuilding. */
  rebuild: RebuildProgressRecord | undefined;
  createdAt: string;
}

export const NO_PROGRESS: RebuildProgressRecord = Object.freeze({ doneBytes: 0, totalBytes: 0, checkpoint: Buffer.alloc(0) });
export const MAX_VOLUME_ID_LENGTH = 128;

export function wholeBytes(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new StorageError(Code.INVALID_ARGUMENT, `${what} must be a whole number of bytes, got ${value}`);
  return value;
}

/** The lock key of a snapshot copy: apart from replica ids, which share the pool's device names. */
export const copyKey = (id: SnapshotId): string => `copy/${id}`;

export function parseSnapshotId(text: string): SnapshotId {
  if (!text) throw new StorageError(Code.INVALID_ARGUMENT, 'the request names no snapshot');
  return asDeviceId(text) as string as SnapshotId;
}

export function checkReplicaSize(id: ReplicaId, sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `replica size must be a positive multiple of 512 bytes, got ${sizeBytes}`, { details: { replica: id } });
  }
}

