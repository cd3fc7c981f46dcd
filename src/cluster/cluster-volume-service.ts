/**
 * The volume service of a node daemon (roles `node` and `all`): the volume lifecycle
 * (volume-lifecycle.ts: create, delete, views, over the cluster store and the peers), the
 * engine host (engine-host.ts: engines, NBD exports, rebuild-only engines, the watches)
 * and verification (volume-verifier.ts), behind the one `VolumeApi` the cairnctl API and
 * the repair loop use, and the snapshot service (snapshot-service.ts). A controller-role
 * cairnd uses the lifecycle, the verifier and the snapshot service alone.
 */
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { NodeId } from '../common/ids.js';
import type { DirtyMapStore, ReplicaConnector } from '../engine/engine-types.js';
import type { ExportInfo, ExportManager } from '../engine/export-manager.js';
import type { PoolBackend, PoolCapacity } from '../pool/backend.js';
import { EngineHost } from './engine-host.js';
import type { LeaderElection } from './leader-election.js';
import type { NodeStatus } from './node-registry.js';
import { ClusterSnapshotService } from './snapshot-service.js';
import type { ClusterStore } from './store/cluster-store.js';
import type { VolumeDoc } from './volume-doc.js';
import { VolumeLifecycle } from './volume-lifecycle.js';
import { VolumeVerifier } from './volume-verifier.js';
import type {
  CapacityQuery, ClusterStatusView, CreateVolumeOptions, ExportOptions, PublishAccess, VerifyResult, VolumeApi, VolumeChanges, VolumePage, VolumeView,
} from './volume-views.js';

export { MAX_VOLUME_BYTES, VOLUME_ALIGNMENT_BYTES } from './volume-lifecycle.js';

export interface ClusterVolumeServiceOptions {
  nodeId: NodeId;
  clusterName: string;
  store: ClusterStore;
  pool: PoolBackend;
  connector: ReplicaConnector;
  exports: ExportManager;
  dirtyMaps: DirtyMapStore;
  election: LeaderElection | undefined;
  defaultReplicas: number;
  replicaTimeoutMs: number;
  rebuildRateBytesPerSec: number;
  log: Logger;
}

export class ClusterVolumeService implements VolumeApi {
  readonly lifecycle: VolumeLifecycle;
  readonly host: EngineHost;
  readonly verifier: VolumeVerifier;
  /** Snapshots (snapshot-service.ts); restore and clone go through `create` with a content source. */
  readonly snapshots: ClusterSnapshotService;

  constructor(opts: ClusterVolumeServiceOptions) {
    const locks = new KeyedLock();
    this.host = new EngineHost({
      nodeId: opts.nodeId, store: opts.store, connector: opts.connector, exports: opts.exports, dirtyMaps: opts.dirtyMaps,
      replicaTimeoutMs: opts.replicaTimeoutMs, rebuildRateBytesPerSec: opts.rebuildRateBytesPerSec, log: opts.log, locks,
    });
    this.snapshots = new ClusterSnapshotService({
      nodeId: opts.nodeId, store: opts.store, controls: opts.connector, log: opts.log,
      localSnapshotVolume: (volumeId, snapshotId, deadlineMs) => this.host.snapshotVolume(volumeId, snapshotId, deadlineMs),
    });
    this.lifecycle = new VolumeLifecycle({
      nodeId: opts.nodeId, clusterName: opts.clusterName, store: opts.store, controls: opts.connector, election: opts.election,
      defaultReplicas: opts.defaultReplicas, capacity: () => opts.pool.capacity(), log: opts.log, locks, host: this.host, snapshots: this.snapshots,
    });
    this.verifier = new VolumeVerifier({ store: opts.store, controls: opts.connector, log: opts.log });
  }

  create(name: string, sizeBytes: number, options?: CreateVolumeOptions, signal?: AbortSignal): Promise<VolumeView> {
    return this.lifecycle.create(name, sizeBytes, options, signal);
  }

  finishCreate(doc: VolumeDoc): Promise<void> {
    return this.lifecycle.finishCreate(doc);
  }

  delete(name: string, force?: boolean, signal?: AbortSignal): Promise<void> {
    return this.lifecycle.delete(name, force, signal);
  }

  modify(name: string, changes: VolumeChanges, signal?: AbortSignal): Promise<VolumeView> {
    return this.lifecycle.modify(name, changes, signal);
  }

  expand(name: string, sizeBytes: number, signal?: AbortSignal): Promise<VolumeView> {
    return this.lifecycle.expand(name, sizeBytes, signal);
  }

  finishDelete(doc: VolumeDoc): Promise<boolean> {
    return this.lifecycle.finishDelete(doc);
  }

  export(name: string, options?: ExportOptions, signal?: AbortSignal): Promise<ExportInfo> {
    return this.host.export(name, options, signal);
  }

  unexport(name: string): Promise<void> {
    return this.host.unexport(name);
  }

  startRebuilder(name: string, nodes: readonly NodeStatus[]): Promise<boolean> {
    return this.host.startRebuilder(name, nodes);
  }

  reapRebuilders(): Promise<void> {
    return this.host.reapRebuilders();
  }

  get(name: string, signal?: AbortSignal): Promise<VolumeView> {
    return this.lifecycle.get(name, signal);
  }

  list(signal?: AbortSignal): Promise<VolumeView[]> {
    return this.lifecycle.list(signal);
  }

  verify(name: string, signal?: AbortSignal): Promise<VerifyResult> {
    return this.verifier.verify(name, signal);
  }

  capacity(): Promise<PoolCapacity> {
    return this.lifecycle.capacity();
  }

  clusterStatus(): Promise<ClusterStatusView> {
    return this.lifecycle.clusterStatus();
  }

  nodes(): Promise<NodeStatus[]> {
    return this.lifecycle.nodes();
  }

  publish(name: string, nodeId: string, access: PublishAccess, signal?: AbortSignal): Promise<void> {
    return this.lifecycle.publish(name, nodeId, access, signal);
  }

  unpublish(name: string, nodeId: string | undefined, signal?: AbortSignal): Promise<void> {
    return this.lifecycle.unpublish(name, nodeId, signal);
  }

  listPage(after: string | undefined, maxEntries: number, signal?: AbortSignal): Promise<VolumePage> {
    return this.lifecycle.listPage(after, maxEntries, signal);
  }

  placeableBytes(query: CapacityQuery): Promise<number> {
    return this.lifecycle.placeableBytes(query);
  }

  /** Number of NBD connections over every export of this node. */
  connectionCount(): number {
    return this.host.connectionCount();
  }

  /** At start: the engine host's watches, then the engines of the volumes this node exported. */
  recover(): Promise<void> {
    return this.host.recover();
  }

  /** Stops every engine here (flushed); the documents keep naming this node. */
  shutdown(): Promise<void> {
    return this.host.shutdown();
  }
}
