/**
 * PullSnapshotCopy (replica.proto), the replica layer's side: the request, its checks, and
 * the hook that serves it. The pull itself reads another node's copy over the data channel
 * and so needs the peer connector, which lives above this layer: the data plane wires it in
 * (cluster/snapshot-pull.ts) as it wires the engine host's barrier for SnapshotVolume.
 * docs/replica-protocol.md, "Streaming a snapshot copy", has the design.
 */
import { Code, StorageError } from '../common/errors.js';
import { asDeviceId, type NodeId, type SnapshotId, type VolumeId } from '../common/ids.js';
import type { SnapshotCopyView } from './replica-manager.js';

export interface PullSnapshotCopyInput {
  snapshotId: SnapshotId;
  /** The snapshot's source volume (the copy's record names it). */
  volumeId: VolumeId;
  /** The snapshot's size: a positive multiple of 512. */
  sizeBytes: number;
  /** A node holding a copy. */
  sourceNodeId: NodeId;
}

/** Streams the snapshot from `sourceNodeId` into this node's copy; answers the copy made (or already here). */
export type SnapshotPullHook = (input: PullSnapshotCopyInput) => Promise<SnapshotCopyView>;

/** A control that can ask its node to pull a snapshot copy: the replica client, and the local control when the data plane gave it the hook. */
export interface SnapshotPuller {
  pullSnapshotCopy(input: PullSnapshotCopyInput): Promise<SnapshotCopyView>;
}

/** Whether `control` can ask for a pull (a controller's or a test's control may not). */
export function canPull<T extends object>(control: T): control is T & SnapshotPuller {
  return typeof (control as Partial<SnapshotPuller>).pullSnapshotCopy === 'function';
}

/** PullSnapshotCopy on a server that was given no way to pull (a test server, a node still starting). */
export function noPullHere(snapshotId: string): StorageError {
  return new StorageError(Code.UNIMPLEMENTED, `this node cannot stream snapshot copies (no data plane here): ask a node daemon to pull snapshot ${snapshotId}`,
    { details: { snapshot: snapshotId } });
}

/** Checks a request as it comes off the wire; INVALID_ARGUMENT naming the field. */
export function pullInput(req: { snapshotId: string; volumeId: string; sizeBytes: number; sourceNodeId: string }): PullSnapshotCopyInput {
  if (!req.snapshotId) throw new StorageError(Code.INVALID_ARGUMENT, 'PullSnapshotCopy names no snapshot');
  asDeviceId(req.snapshotId);
  if (!req.volumeId) throw new StorageError(Code.INVALID_ARGUMENT, `PullSnapshotCopy of snapshot ${req.snapshotId} names no volume`);
  if (!req.sourceNodeId) throw new StorageError(Code.INVALID_ARGUMENT, `PullSnapshotCopy of snapshot ${req.snapshotId} names no source node`);
  const size = req.sizeBytes;
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `PullSnapshotCopy of snapshot ${req.snapshotId}: size must be a positive multiple of 512 bytes, got ${size}`);
  }
  return { snapshotId: req.snapshotId as SnapshotId, volumeId: req.volumeId as VolumeId, sizeBytes: size, sourceNodeId: req.sourceNodeId as NodeId };
}
