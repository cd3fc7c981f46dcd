/**
 * What the volume engine needs from the layers around it, as interfaces: I/O to one
 * replica (local or remote), the replica control calls, the volume document's in-sync
 * changes (compare-and-swap in the cluster store), and the node-local dirty-region maps.
 * The daemon wires real implementations; unit tests may fake them.
 */
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';
import type { AllocatedRanges } from '../pool/backend.js';
import type { ChecksumRangeResult, ReplicaRefInput, ReplicaStatusView, SnapshotCopyView } from '../replica/replica-manager.js';
import type { RebuildProgressRecord, ReplicaState } from '../store/node-store.js';

/**
 * One replica of a volume as the engine knows it. The volume document (cluster/volume-doc.ts)
 * stores its replicas in this shape; the engine does not import the document.
 */
export interface VolumeReplicaEntry {
  id: ReplicaId;
  nodeId: NodeId;
  /** in-sync: serves reads, takes writes. rebuilding: takes writes, is being copied to. faulted: neither. */
  state: ReplicaState;
  /** When the state last changed (ISO 8601): the repair loop measures "faulted for how long" from it. */
  since: string;
  /** Why the replica left the in-sync set, for operators. */
  reason?: string;
  /**
   * The replica's node-local dirty-region map is not to be trusted (the node store could not
   * save it): an engine started later copies every region. Absent means false; cleared when
   * the replica rejoins the in-sync set.
   */
  fullRebuild?: boolean;
}

/** What the engine follows of its volume document (`VolumeEngine.applyDoc`): epoch, size and replicas. */
export interface EngineVolumeDoc {
  id: VolumeId;
  epoch: number;
  /** The volume's size: a larger one grows the engine (online expansion). Absent: unchanged. */
  sizeBytes?: number;
  replicas: readonly VolumeReplicaEntry[];
}

/** Block I/O to one replica at one epoch. Errors are StorageErrors (a stale epoch is FAILED_PRECONDITION). */
export interface ReplicaIo {
  readonly replicaId: ReplicaId;
  readonly nodeId: NodeId;
  /** True for the replica on this node (direct I/O, no network). */
  readonly local: boolean;
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void>;
  /** Optional: writes `parts` back to back without joining them (the local replica). */
  writev?(offset: number, parts: readonly Uint8Array[], fua: boolean): Promise<void>;
  read(offset: number, lengthBytes: number): Promise<Buffer>;
  /** Optional: fills `targets` back to back from `offset` (the local replica). */
  readInto?(offset: number, targets: readonly Uint8Array[]): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, lengthBytes: number): Promise<void>;
  writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void>;
  /** Waits for requests in flight, then releases the connection. */
  close(): Promise<void>;
  /** Drops the connection now; pending requests reject. */
  cancel(): void;
}

/** The replica service's control calls, on this node (direct) or a peer (gRPC). */
export interface ReplicaControl {
  createReplica(ref: ReplicaRefInput, sizeBytes: number, epoch: number, inSync: boolean): Promise<ReplicaStatusView>;
  deleteReplica(ref: ReplicaRefInput, epoch: number): Promise<void>;
  getReplicaStatus(ref: ReplicaRefInput): Promise<ReplicaStatusView>;
  checksumRange(ref: ReplicaRefInput, epoch: number, offset: number, lengthBytes: number, regionBytes: number): Promise<ChecksumRangeResult>;
  /**
   * The bytes of [offset, offset + lengthBytes) that hold data (the rest reads as zeros), at
   * most `maxExtents` extents; continue from `endOffset` when it falls short. UNIMPLEMENTED
   * from a peer that predates the call: treat everything as allocated.
   */
  allocatedRanges(ref: ReplicaRefInput, epoch: number, offset: number, lengthBytes: number, maxExtents?: number): Promise<AllocatedRanges>;
  startRebuild(ref: ReplicaRefInput, epoch: number, totalBytes: number, restart?: boolean): Promise<ReplicaStatusView>;
  updateRebuildProgress(ref: ReplicaRefInput, epoch: number, progress: RebuildProgressRecord): Promise<ReplicaStatusView>;
  finishRebuild(ref: ReplicaRefInput, epoch: number): Promise<ReplicaStatusView>;
  /** Grows the replica (volume expansion); idempotent; OUT_OF_RANGE for a smaller size. */
  resizeReplica(ref: ReplicaRefInput, sizeBytes: number, epoch: number): Promise<ReplicaStatusView>;
  /**
   * Copies the replica's device as it is now into the node's copy of snapshot `snapshotId`
   * (a pool device of that id). The caller's barrier has drained the volume's writes. With
   * `cutOnly` the answer comes once the copy's content is fixed; `filling` in it says the
   * copy is still being filled while writes go on, and the same call without `cutOnly` waits
   * for it. Idempotent; FAILED_PRECONDITION for a stale epoch; RESOURCE_EXHAUSTED without room.
   */
  snapshotReplica(ref: ReplicaRefInput, epoch: number, snapshotId: SnapshotId, opts?: { cutOnly?: boolean }): Promise<SnapshotCopyStatus>;
  /** Deletes the node's copy of the snapshot; not an error when there is none. */
  deleteSnapshotCopy(snapshotId: SnapshotId): Promise<void>;
  /** Every snapshot copy the node holds. */
  listSnapshotCopies(): Promise<SnapshotCopyStatus[]>;
  /**
   * A new replica, in sync at `epoch`, whose content is the node's copy of the snapshot (a
   * thin or reflinked child), grown to `sizeBytes`. NOT_FOUND without a copy there.
   */
  createReplicaFromSnapshot(ref: ReplicaRefInput, sizeBytes: number, epoch: number, snapshotId: SnapshotId): Promise<ReplicaStatusView>;
  /**
   * Runs the write barrier of the volume's engine on that node and copies every in-sync
   * replica (SnapshotVolume in replica.proto). FAILED_PRECONDITION when no engine of the
   * volume runs there; all copies or none.
   */
  snapshotVolume(volumeId: VolumeId, snapshotId: SnapshotId, deadlineMs: number): Promise<VolumeSnapshotResult>;
}

/** One node's copy of a snapshot, as its replica service reports it (`filling`: answered at the cut, ask again to wait for it). */
export type SnapshotCopyStatus = SnapshotCopyView;

/** What a write barrier snapshot produced: one copy per in-sync replica. */
export interface VolumeSnapshotResult {
  copies: { nodeId: NodeId; replicaId: ReplicaId; sizeBytes: number }[];
  /** How long new writes waited, in microseconds. */
  pauseUs: number;
  /** The engine's epoch. */
  epoch: number;
}

/** Reaches replicas wherever they live. */
export interface ReplicaConnector {
  /**
   * Opens I/O to the replica at `epoch`; resolves once the replica accepted the epoch.
   * UNAVAILABLE when its node cannot be reached, FAILED_PRECONDITION for a stale epoch,
   * NOT_FOUND when the node has no such replica.
   */
  openIo(volumeId: VolumeId, replica: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo>;
  /** Control calls to the replica service of `nodeId`. UNAVAILABLE when the node is unknown or down. */
  control(nodeId: NodeId): Promise<ReplicaControl>;
}

/**
 * The engine's changes to its volume document. Each is a compare-and-swap guarded by the
 * engine's epoch: when the document's epoch is no longer the engine's, it rejects with
 * FAILED_PRECONDITION ("fenced") and the engine must stop acknowledging anything. While the
 * store is unreachable it keeps retrying (I/O that waits on it waits too): a write the
 * replica missed is never acknowledged before the replica left the in-sync set.
 */
export interface EngineControl {
  /**
   * The replicas leave the in-sync set (state `faulted`, with the reason). Those in
   * `fullRebuild` also get `fullRebuild: true`, already faulted or not (their saved maps are
   * not to be trusted). Durable when resolved.
   */
  markFaulted(ids: readonly ReplicaId[], reason: string, fullRebuild?: readonly ReplicaId[]): Promise<void>;
  /** Marks a returning or new replica `rebuilding` (for operators; it stays out of the in-sync set). */
  markRebuilding(id: ReplicaId): Promise<void>;
  /** The replica joins the in-sync set, after its rebuild and checksum comparison agreed; its entry loses `fullRebuild`. */
  markInSync(id: ReplicaId): Promise<void>;
}

/**
 * Persisted dirty-region maps, one per (volume, replica) that is not in sync, on the
 * engine's node. A set bit is a region the replica may lack. `save` is durable when it
 * returns (SQLite, synchronous=FULL).
 */
export interface DirtyMapStore {
  load(volumeId: VolumeId, replicaId: ReplicaId): { regionBytes: number; bits: Buffer } | undefined;
  save(volumeId: VolumeId, replicaId: ReplicaId, regionBytes: number, bits: Buffer): void;
  delete(volumeId: VolumeId, replicaId: ReplicaId): void;
}

/** One engine running on this node, as /metrics sees it. */
export interface RunningEngineView {
  name: string;
  volumeId: VolumeId;
  sizeBytes: number;
  /** A rebuild-only engine (no NBD export). */
  headless: boolean;
  replicas: EngineReplicaView[];
}

/** A replica's state as the engine sees it, for `cairnctl volume inspect` and metrics. */
export interface EngineReplicaView {
  replicaId: ReplicaId;
  nodeId: NodeId;
  state: 'in-sync' | 'rebuilding' | 'faulted';
  /** While rebuilding. */
  rebuild?: { doneBytes: number; totalBytes: number; bytesPerSecond: number };
  /** Bytes of regions marked dirty (what a resync will copy). */
  dirtyBytes: number;
}
