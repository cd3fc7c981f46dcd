/**
 * Snapshots as the cluster sees them (docs/snapshots.md): the snapshot document in the
 * cluster store, the view callers get, and the service the API, the CSI controller and
 * cairnctl use. A snapshot is taken at a write barrier of the volume's engine (or, for a
 * volume nobody serves, straight from its in-sync replicas at the document's epoch), with
 * one copy per in-sync replica, each a pool device named by the snapshot id on its node.
 */
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';

/** creating: copies being taken (not restorable); ready: every copy durable; deleting: copies being removed. */
export type SnapshotState = 'creating' | 'ready' | 'deleting';

/** One node's copy: the pool device `<snapshot id>` on `nodeId`, taken from `replicaId`. */
export interface SnapshotCopyEntry {
  nodeId: NodeId;
  /** The replica of the source volume it was taken from (or, for a copy repair made, streamed into). */
  replicaId: ReplicaId;
}

export interface SnapshotDoc {
  id: SnapshotId;
  name: string;
  sourceVolumeId: VolumeId;
  /** The source's name when the snapshot was taken (the volume may be gone since). */
  sourceVolumeName: string;
  sizeBytes: number;
  /** RFC 3339: when the barrier ran. */
  createdAt: string;
  state: SnapshotState;
  /** True once every copy is durable (state ready). */
  readyToUse: boolean;
  /** The source's in-sync replica count at the barrier; repair keeps the copies at it. */
  copiesWanted: number;
  copies: SnapshotCopyEntry[];
  /** How long the source's writes waited for the barrier, in microseconds (0 without an engine). */
  pauseUs: number;
  /**
   * Taken by the cluster itself (a clone's source snapshot, deleted once the clone is made):
   * lists hide it unless asked. Absent means false.
   */
  internal?: boolean;
  /** The snapshot rule it was taken under and how its actions went (snapshot-rule-record.ts); absent when none. */
  rule?: SnapshotRuleRecord;
  /** The name of the group snapshot this one is a member of (`group-snapshots/<name>`, snapshot/group-coordinator.ts; CSI's group_snapshot_id); absent for a snapshot of its own. */
  groupSnapshotId?: string;
}

/** One step of a rule run as a snapshot keeps it: no output beyond a short tail. */
export interface SnapshotRuleActionRecord {
  /** The action's name, or its place ("pre[1]"). */
  action: string;
  phase: 'pre' | 'post';
  kind: string;
  /** run, hold (background), freeze or thaw. */
  step: string;
  /** The pod, the node, or the frozen mount point; empty when none was found. */
  target: string;
  /** succeeded, failed or skipped. */
  status: string;
  /** null when it did not exit by itself or is not a process. */
  exitCode: number | null;
  durationMs: number;
  /** The canonical code's name and the message, when it failed or was skipped. */
  error?: { code: string; message: string };
  /** The last bytes of its stderr (or of its stdout when stderr was empty), at most SNAPSHOT_RULE_TAIL_BYTES. */
  outputTail?: string;
}

/** The rule a snapshot was taken under: ok when no action whose onError is Fail failed. */
export interface SnapshotRuleRecord {
  name: string;
  ok: boolean;
  durationMs: number;
  actions: SnapshotRuleActionRecord[];
}

export interface SnapshotCopyView extends SnapshotCopyEntry {
  /** Whether the node is registered and its lease alive. */
  nodeUp: boolean;
}

export interface SnapshotView extends Omit<SnapshotDoc, 'copies'> {
  copies: SnapshotCopyView[];
}

export interface CreateSnapshotInput {
  name: string;
  /** The source volume, by name or id. */
  volume: string;
  /** A snapshot the cluster takes for itself (a clone's): hidden from lists unless asked. */
  internal?: boolean;
}

/** Where a new volume's data comes from: a snapshot (restore) or a volume (clone). */
export type VolumeContentSource = { snapshot: string } | { volume: string };

export interface SnapshotService {
  /**
   * Takes the snapshot. Idempotent by name: the same name and source returns the existing
   * one; another source is ALREADY_EXISTS. NOT_FOUND for an unknown volume.
   */
  create(input: CreateSnapshotInput, opts?: { signal?: AbortSignal }): Promise<SnapshotView>;
  /** By name or id; NOT_FOUND when there is none. */
  get(nameOrId: string): Promise<SnapshotView>;
  /** Every snapshot, or those of one volume (name or id), oldest first. */
  list(filter?: { volume?: string; includeInternal?: boolean }): Promise<SnapshotView[]>;
  /** Removes the copies and the document. Not an error when there is no such snapshot. */
  delete(nameOrId: string): Promise<void>;
}
