/**
 * The node store's record of a snapshot copy this node holds (migration 5): which snapshot,
 * taken from which replica of which volume, its size and when. The copy's pool device id
 * is its snapshot id. The replica manager (src/replica/replica-manager.ts) writes it once
 * the device exists and deletes it before the device goes.
 */
import type { ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';

export interface SnapshotCopyRecord {
  snapshotId: SnapshotId;
  volumeId: VolumeId;
  /** The replica the copy was taken from. */
  replicaId: ReplicaId;
  sizeBytes: number;
  /** RFC 3339. */
  createdAt: string;
}

export interface SnapshotCopyRow { snapshot_id: string; volume_id: string; replica_id: string; size_bytes: number; created_at: string }

export const toSnapshotCopy = (r: SnapshotCopyRow): SnapshotCopyRecord => ({
  snapshotId: r.snapshot_id as SnapshotId, volumeId: r.volume_id as VolumeId, replicaId: r.replica_id as ReplicaId,
  sizeBytes: r.size_bytes, createdAt: r.created_at,
});
