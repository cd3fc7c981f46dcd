/**
 * What the volume service shows to the API, cairnctl and /metrics: one place that says
 * what a volume, a replica, a node and the cluster look like from outside.
 */
import type { ExportInfo } from '../engine/export-manager.js';
import type { PoolCapacity } from '../pool/backend.js';
import type { NodeStatus } from './node-registry.js';
import type { VolumeContentSource } from './snapshot-types.js';
import type { ReplicaHealth, VolumeDocState } from './volume-doc.js';

export type VolumeHealth = 'healthy' | 'degraded' | 'faulted';

export interface ReplicaView {
  id: string;
  nodeName: string;
  deviceId: string;
  state: ReplicaHealth;
  /** When the state last changed (ISO 8601). */
  since: string;
  /** Why it left the in-sync set. */
  reason?: string;
  /** Bytes backed by storage on its node; 0 when its node could not be asked. */
  allocatedBytes: number;
  /** While rebuilding. */
  rebuild?: { doneBytes: number; totalBytes: number; bytesPerSecond: number };
  /** Bytes of regions the replica missed (known to the engine), what a resync will copy. */
  dirtyBytes: number;
}

export interface VolumeView {
  id: string;
  name: string;
  sizeBytes: number;
  state: VolumeDocState;
  health: VolumeHealth;
  epoch: number;
  createdAt: string;
  replicasWanted: number;
  /** The node running the volume's engine, if any. */
  engineNode: string | undefined;
  allocatedBytes: number;
  replicas: ReplicaView[];
  /** Set while the volume is exported by this node. */
  export: ExportInfo | undefined;
  /** The nodes it is published to (CSI ControllerPublishVolume). */
  published: { nodeId: string; readonly: boolean }[];
  /** The filesystem it was created for (CSI), if any. */
  fsType?: string;
  /** The zones its replicas are kept in (CSI StorageClass `zones`), if any. */
  zones?: readonly string[];
  /** Where its data came from at creation (restore or clone), if anywhere. */
  contentSource?: { kind: 'snapshot' | 'volume'; id: string; name: string };
  /** The PersistentVolumeClaim it was provisioned for, if Kubernetes said. */
  claim?: { name: string; namespace: string };
}

export interface VerifyMismatch {
  offset: number;
  lengthBytes: number;
  /** Replica ids whose digest differs from the first in-sync replica's. */
  replicas: string[];
}

export interface VerifyResult {
  volume: string;
  /** The replicas compared (the in-sync ones; the first is the reference). */
  replicas: string[];
  regionBytes: number;
  regionsCompared: number;
  mismatches: VerifyMismatch[];
}

export interface ClusterStatusView {
  cluster: string;
  store: 'etcd' | 'embedded';
  nodeName: string;
  /** The node leading the repair loop, if any. */
  repairLeader: string | undefined;
  nodes: { total: number; up: number };
  volumes: { total: number; healthy: number; degraded: number; faulted: number };
}

export interface CreateVolumeOptions {
  /** 1-3; the cluster default when undefined. */
  replicas?: number;
  /** Place a replica on this node when it qualifies (locality). */
  preferredNode?: string;
  /** A replica must land on one of these nodes (CSI requisite topology); RESOURCE_EXHAUSTED when none has room. */
  requisiteNodes?: readonly string[];
  /** Every replica lands on a node in one of these zones (a StorageClass's `zones`). */
  zones?: readonly string[];
  /** The filesystem the volume is for (CSI), kept in its document; the same name with another is ALREADY_EXISTS. */
  fsType?: string;
  /**
   * The new volume's data: a snapshot's (restore) or a volume's (clone, through a barrier
   * snapshot). A size of 0 then means the source's size; smaller is OUT_OF_RANGE. The same
   * name with another source is ALREADY_EXISTS.
   */
  source?: VolumeContentSource;
  /** The PersistentVolumeClaim it is for (CSI CreateVolume's pvc parameters), kept in its document for logs. */
  claim?: { name: string; namespace: string };
}

/** How a node may use a volume it is published to (CSI ControllerPublishVolume). */
export interface PublishAccess {
  readonly: boolean;
  /** The capability is MULTI_NODE_READER_ONLY: other read-only publications may stay. */
  multiNodeReader: boolean;
}

/** One page of volumes in name order (CSI ListVolumes). */
export interface VolumePage {
  volumes: VolumeView[];
  /** Set when more volumes follow: the name of the last one here, to continue after. */
  last?: string;
}

/** What a new volume may be placed on (CSI GetCapacity); the cluster default replica count when unset. */
export interface CapacityQuery {
  replicas?: number;
  zones?: readonly string[];
  /** One replica must land on one of these nodes (a topology segment). */
  firstAmong?: readonly string[];
}

/** A live change of a volume (`VolumeApi.modify`); a field left out is not changed. */
export interface VolumeChanges {
  /** The new replica count, 1-3: replicas are added (and rebuilt) or removed while the volume serves. */
  replicas?: number;
}

export interface ExportOptions {
  /**
   * Start the volume here although another node's engine holds it (failover). Refused
   * while that node is up, unless `force`.
   */
  takeover?: boolean;
  force?: boolean;
  /**
   * Serve a read-only export (a read-only staging). While another node's read-only engine
   * holds the volume and every publication is read-only, this node serves it as a reader
   * (no epoch bump, nothing written to the document) instead of taking it.
   */
  readOnly?: boolean;
}

/**
 * The operations the API serves. A call given a `signal` stops its work when it fires
 * (CANCELLED), leaving nothing half-made.
 */
export interface VolumeApi {
  create(name: string, sizeBytes: number, options?: CreateVolumeOptions, signal?: AbortSignal): Promise<VolumeView>;
  delete(name: string, force?: boolean, signal?: AbortSignal): Promise<void>;
  /** Grows the volume online to at least `sizeBytes`; idempotent (a larger volume is returned as it is). */
  expand(name: string, sizeBytes: number, signal?: AbortSignal): Promise<VolumeView>;
  modify(name: string, changes: VolumeChanges, signal?: AbortSignal): Promise<VolumeView>;
  export(name: string, options?: ExportOptions, signal?: AbortSignal): Promise<ExportInfo>;
  unexport(name: string): Promise<void>;
  get(name: string, signal?: AbortSignal): Promise<VolumeView>;
  list(signal?: AbortSignal): Promise<VolumeView[]>;
  verify(name: string, signal?: AbortSignal): Promise<VerifyResult>;
  capacity(): Promise<PoolCapacity>;
  clusterStatus(): Promise<ClusterStatusView>;
  nodes(): Promise<NodeStatus[]>;
  /** Records that `nodeId` may stage the volume (CSI ControllerPublishVolume); idempotent. */
  publish(name: string, nodeId: string, access: PublishAccess, signal?: AbortSignal): Promise<void>;
  /** Removes the publication to `nodeId` (every node when undefined); OK when there is none. */
  unpublish(name: string, nodeId: string | undefined, signal?: AbortSignal): Promise<void>;
  /** Up to `maxEntries` volumes (0: all) whose names sort after `after`, in name order. */
  listPage(after: string | undefined, maxEntries: number, signal?: AbortSignal): Promise<VolumePage>;
  /** The largest volume that can be created now with `query` (bytes, a multiple of 4 KiB). */
  placeableBytes(query: CapacityQuery): Promise<number>;
}
