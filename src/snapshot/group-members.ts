/**
 * A group snapshot's members as the coordinator (group-coordinator.ts) works on them: each
 * member volume, its snapshot document (an ordinary one, carrying `groupSnapshotId`), and where
 * its engine runs. Member documents are written `creating` before any pause, so that a crash
 * leaves something the repair leader undoes like a half-taken snapshot.
 */
import { Code, StorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { engineNodeOf } from '../cluster/snapshot-service.js';
import { createSnapshotDoc, updateSnapshotDoc } from '../cluster/snapshot-doc.js';
import type { SnapshotCopyEntry, SnapshotDoc, SnapshotService } from '../cluster/snapshot-types.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import { findVolumeDoc, inSyncReplicas, type VolumeDoc } from '../cluster/volume-doc.js';
import type { GroupSnapshotDoc } from './group-doc.js';

export interface MemberRun {
  volume: VolumeDoc;
  snap: SnapshotDoc;
  /** The node of the engine serving the volume; none: the in-sync replicas are copied directly (nobody writes). */
  engineNode: NodeId | undefined;
  /** Whether anything may hold a copy (a cut or a copy was asked). */
  asked: boolean;
  paused: boolean;
  pauseUs: number;
  drainMs: number;
  copies: SnapshotCopyEntry[];
  sizeBytes: number;
}

/** Every named volume's document; NOT_FOUND, FAILED_PRECONDITION or UNAVAILABLE naming the first that cannot be snapshotted. */
export async function resolveMembers(store: ClusterStore, volumes: readonly string[]): Promise<VolumeDoc[]> {
  const docs: VolumeDoc[] = [];
  for (const v of volumes) {
    const doc = (await findVolumeDoc(store, v))?.doc;
    if (!doc) throw new StorageError(Code.NOT_FOUND, `volume "${v}" not found: name existing volumes (by name or id)`, { details: { volume: v } });
    if (doc.state !== 'ready' || inSyncReplicas(doc).length === 0) {
      throw new StorageError(doc.state === 'creating' ? Code.UNAVAILABLE : Code.FAILED_PRECONDITION,
        `volume "${doc.name}" cannot be snapshotted now (${doc.state}, ${inSyncReplicas(doc).length} in-sync replicas)`, { details: { volume: doc.name } });
    }
    if (docs.some((d) => d.id === doc.id)) throw new StorageError(Code.INVALID_ARGUMENT, `volume "${v}" is named twice`, { details: { volume: v } });
    docs.push(doc);
  }
  return docs;
}

/** Writes each member's snapshot document `creating`; ALREADY_EXISTS when a snapshot of that name exists. */
export async function createMemberDocs(store: ClusterStore, group: GroupSnapshotDoc, volumes: readonly VolumeDoc[]): Promise<MemberRun[]> {
  const runs: MemberRun[] = [];
  const { createdAt } = group;
  for (const [i, volume] of volumes.entries()) {
    const engineNode = engineNodeOf(volume);
    const member = group.members[i]!;
    const snap: SnapshotDoc = {
      id: member.snapshotId, name: member.snapshotName, sourceVolumeId: volume.id, sourceVolumeName: volume.name, sizeBytes: volume.sizeBytes,
      createdAt, state: 'creating', readyToUse: false, copiesWanted: volume.replicasWanted,
      copies: (engineNode ? volume.replicas : inSyncReplicas(volume)).map((r) => ({ nodeId: r.nodeId, replicaId: r.id })), pauseUs: 0, groupSnapshotId: group.name,
    };
    if (!(await createSnapshotDoc(store, snap))) {
      throw new StorageError(Code.ALREADY_EXISTS, `a snapshot named "${snap.name}" exists already: choose another group name`, { details: { snapshot: snap.name } });
    }
    runs.push({ volume, snap, engineNode, asked: false, paused: false, pauseUs: 0, drainMs: 0, copies: [], sizeBytes: volume.sizeBytes });
  }
  return runs;
}

/** Marks each member ready with its copies and pause. */
export async function markMembersReady(store: ClusterStore, runs: readonly MemberRun[]): Promise<void> {
  for (const r of runs) {
    await updateSnapshotDoc(store, r.snap.name, (d) => {
      if (d.id !== r.snap.id || d.state !== 'creating') {
        throw new StorageError(Code.ABORTED, `member snapshot "${r.snap.name}" was deleted while the group was taken; take it again`, { details: { snapshot: r.snap.name } });
      }
      return { ...d, state: 'ready', readyToUse: true, copies: r.copies, pauseUs: r.pauseUs, sizeBytes: r.sizeBytes };
    });
  }
}

/**
 * Removes a failed group's members: a member nothing was asked to copy loses its document at
 * once; the others are deleted like any snapshot (copies where their nodes answer, the rest
 * left `deleting` for the repair leader). Best effort, each failure logged.
 */
export async function removeMembers(store: ClusterStore, snapshots: SnapshotService, runs: readonly MemberRun[], log: Logger): Promise<void> {
  await Promise.all(runs.map(async (r) => {
    try {
      if (r.asked) await snapshots.delete(r.snap.id);
      else await updateSnapshotDoc(store, r.snap.name, (d) => (d.id === r.snap.id ? 'delete' : undefined));
    } catch (err) {
      if (err instanceof StorageError && err.code === Code.NOT_FOUND) return;
      log.warn({ snapshot: r.snap.name, snapshotId: r.snap.id, err: (err as Error).message }, 'member snapshot of a failed group not removed now; the repair leader removes it');
    }
  }));
}
