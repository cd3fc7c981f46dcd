/**
 * Reaches replicas wherever they live: the ones on this node through the local replica
 * manager (no network, still fenced by epoch), the others over the network. Block I/O to a
 * remote replica goes over the node's data channel (engine/data-replica-io.ts) when the
 * node advertises one and the transport is `channel` (the default), else over the Io
 * stream of its replica service; control calls always go over the replica service, one
 * gRPC channel per peer. Peer addresses come from the node registry and are looked up
 * again when a peer cannot be reached (it may have moved). The credentials are made once
 * (certificate rotation needs a restart), so their log lines, such as the plaintext
 * warning, appear once and not on every reconnect to a peer that is down.
 */
import type { ChannelCredentials } from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import type { ReplicaConnector, ReplicaControl, ReplicaIo } from '../engine/engine-types.js';
import { DataReplicaIo } from '../engine/data-replica-io.js';
import { DataChannelStats } from '../engine/data-stats.js';
import { LocalReplicaIo, RemoteReplicaIo } from '../engine/replica-io.js';
import { ReplicaClient } from '../replica/replica-client.js';
import type { ReplicaManager } from '../replica/replica-manager.js';
import { noEngineHere, type VolumeSnapshotHook } from '../replica/replica-server.js';
import type { SnapshotPuller, SnapshotPullHook } from '../replica/snapshot-pull.js';
import { loadPeerTls, peerChannelCredentials, type PeerTlsConfig, type PeerTlsMaterial } from '../rpc/tls.js';
import { listNodes } from './node-registry.js';
import type { ClusterStore } from './store/cluster-store.js';
import type { VolumeReplicaEntry } from './volume-doc.js';

export interface PeerConnectorOptions {
  nodeId: NodeId;
  /** This node's replicas; none on a controller-role cairnd, which reaches every replica over the peer port. */
  manager?: ReplicaManager;
  store: ClusterStore;
  tls: PeerTlsConfig;
  log: Logger;
  /** Deadline of control calls and of a stream's first answer; 10000 ms by default. */
  deadlineMs?: number;
  /** How block I/O reaches remote replicas; `channel` by default (falls back to grpc for a node without a data channel). */
  transport?: 'channel' | 'grpc';
  /** Connections per remote replica on the data channel; 1 by default. */
  dataConnections?: number;
  /** The barrier of this node's engines, for the local control's snapshotVolume (see localControl). */
  volumeSnapshots?: VolumeSnapshotHook;
  /** PullSnapshotCopy on this node, for the local control (see localControl). */
  snapshotPulls?: SnapshotPullHook;
}

/** The data channel's counters of one remote replica, for /metrics. */
export interface DataChannelReplicaStats {
  replicaId: ReplicaId;
  volumeId: VolumeId;
  nodeId: NodeId;
  stats: DataChannelStats;
}

/** A replica's counters are dropped this long after its last connection closed (its series end in /metrics). */
const STATS_RETAIN_MS = 10 * 60_000;

interface StatsEntry extends DataChannelReplicaStats {
  /** Open DataReplicaIos of the replica. */
  open: number;
  /** When the last one closed (performance.now()). */
  idleSince: number;
}

interface Peer {
  address: string;
  dataAddress: string | undefined;
  client: ReplicaClient;
}

/**
 * ReplicaManager's calls under the ReplicaControl names: the local node's control.
 * `volumeSnapshots` runs the barrier of this node's engine of a volume (snapshotVolume);
 * without it, snapshotVolume is FAILED_PRECONDITION as from a node without the engine.
 */
export function localControl(manager: ReplicaManager, volumeSnapshots?: VolumeSnapshotHook, snapshotPulls?: SnapshotPullHook): ReplicaControl & Partial<SnapshotPuller> {
  return {
    ...(snapshotPulls ? { pullSnapshotCopy: snapshotPulls } : {}),
    snapshotReplica: (ref, epoch, snapshotId, opts) => manager.snapshot(ref, epoch, snapshotId, opts),
    deleteSnapshotCopy: (snapshotId) => manager.deleteSnapshotCopy(snapshotId),
    listSnapshotCopies: () => manager.listSnapshotCopies(),
    createReplicaFromSnapshot: (ref, sizeBytes, epoch, snapshotId) => manager.createReplicaFromSnapshot(ref, sizeBytes, epoch, snapshotId),
    snapshotVolume: (volumeId, snapshotId, deadlineMs) => (volumeSnapshots ? volumeSnapshots(volumeId, snapshotId, deadlineMs) : Promise.reject(noEngineHere(volumeId))),
    createReplica: (ref, sizeBytes, epoch, inSync) => manager.create(ref, sizeBytes, epoch, inSync),
    deleteReplica: (ref, epoch) => manager.delete(ref, epoch),
    getReplicaStatus: (ref) => manager.status(ref),
    checksumRange: (ref, epoch, offset, lengthBytes, regionBytes) => manager.checksumRange(ref, epoch, offset, lengthBytes, regionBytes),
    allocatedRanges: (ref, epoch, offset, lengthBytes, maxExtents) => manager.allocatedRanges(ref, epoch, offset, lengthBytes, maxExtents),
    startRebuild: (ref, epoch, totalBytes, restart = false) => manager.startRebuild(ref, epoch, totalBytes, restart),
    updateRebuildProgress: (ref, epoch, progress) => manager.updateRebuildProgress(ref, epoch, progress),
    finishRebuild: (ref, epoch) => manager.finishRebuild(ref, epoch),
    resizeReplica: (ref, sizeBytes, epoch) => manager.resize(ref, sizeBytes, epoch),
  };
}

export class PeerConnector implements ReplicaConnector {
  private readonly clients = new Map<NodeId, Peer>();
  private readonly dataStats = new Map<ReplicaId, StatsEntry>();
  private material: PeerTlsMaterial | undefined;
  private readonly local: ReplicaControl | undefined;
  private readonly deadlineMs: number;
  private credentials: ChannelCredentials | undefined;
  private closed = false;

  constructor(private readonly opts: PeerConnectorOptions) {
    this.local = opts.manager ? localControl(opts.manager, opts.volumeSnapshots, opts.snapshotPulls) : undefined;
    this.deadlineMs = opts.deadlineMs ?? 10_000;
  }

  async openIo(volumeId: VolumeId, replica: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
    const ref = { replicaId: replica.id, volumeId };
    if (replica.nodeId === this.opts.nodeId && this.opts.manager) {
      const r = await this.opts.manager.open(ref);
      r.admitEpoch(epoch);
      return new LocalReplicaIo(r, epoch, replica.nodeId);
    }
    const peer = await this.peer(replica.nodeId);
    if (peer.dataAddress && this.opts.transport !== 'grpc') return this.openData(peer.dataAddress, volumeId, replica, epoch);
    const stream = peer.client.openIoStream(ref, epoch);
    try {
      await withTimeout(stream.ready, this.deadlineMs, `replica ${replica.id} on node ${replica.nodeId}`);
    } catch (err) {
      stream.cancel();
      if (err instanceof StorageError && err.code === Code.UNAVAILABLE) this.forget(replica.nodeId);
      throw err;
    }
    return new RemoteReplicaIo(stream, replica.id, replica.nodeId);
  }

  async control(nodeId: NodeId): Promise<ReplicaControl> {
    if (nodeId === this.opts.nodeId && this.local) return this.local;
    return (await this.peer(nodeId)).client;
  }

  /** The data channel's counters per remote replica this node's engines have reached. */
  dataChannelStats(): DataChannelReplicaStats[] {
    const now = performance.now();
    for (const [id, e] of this.dataStats) if (e.open === 0 && e.stats.inflight === 0 && now - e.idleSince > STATS_RETAIN_MS) this.dataStats.delete(id);
    return [...this.dataStats.values()];
  }

  private async openData(address: string, volumeId: VolumeId, replica: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
    let entry = this.dataStats.get(replica.id);
    if (!entry) {
      entry = { replicaId: replica.id, volumeId, nodeId: replica.nodeId, stats: new DataChannelStats(), open: 0, idleSince: performance.now() };
      this.dataStats.set(replica.id, entry);
    }
    if (this.opts.tls.insecure !== true) this.material ??= loadPeerTls(this.opts.tls);
    const e = entry;
    try {
      const io = await DataReplicaIo.open({ address, replicaId: replica.id, volumeId, nodeId: replica.nodeId, epoch, tls: this.material }, {
        connections: this.opts.dataConnections, connectTimeoutMs: this.deadlineMs, stats: e.stats,
        onClosed: () => {
          e.open--;
          e.idleSince = performance.now();
        },
      });
      e.open++;
      return io;
    } catch (err) {
      if (err instanceof StorageError && err.code === Code.UNAVAILABLE) this.forget(replica.nodeId);
      throw err;
    }
  }

  /** Drops the cached channel to a peer, so the next call looks its address up again. */
  forget(nodeId: NodeId): void {
    const entry = this.clients.get(nodeId);
    if (!entry) return;
    this.clients.delete(nodeId);
    entry.client.close();
  }

  close(): void {
    this.closed = true;
    for (const { client } of this.clients.values()) client.close();
    this.clients.clear();
  }

  private async peer(nodeId: NodeId): Promise<Peer> {
    if (this.closed) throw new StorageError(Code.UNAVAILABLE, 'the peer connector is closed (cairnd is stopping)');
    const cached = this.clients.get(nodeId);
    if (cached) return cached;
    const nodes = await listNodes(this.opts.store, this.opts.log);
    const node = nodes.find((n) => n.nodeId === nodeId);
    if (!node) throw new StorageError(Code.UNAVAILABLE, `node ${nodeId} is not registered in the cluster; is its cairnd running?`, { details: { node: nodeId } });
    if (!node.peerAddress) throw new StorageError(Code.UNAVAILABLE, `node ${nodeId} serves no peer port (started without --peer-listen)`, { details: { node: nodeId } });
    const again = this.clients.get(nodeId);
    if (again) return again;
    this.credentials ??= peerChannelCredentials(this.opts.tls, this.opts.log);
    const client = new ReplicaClient(node.peerAddress, this.opts.tls, { log: this.opts.log, deadlineMs: this.deadlineMs, credentials: this.credentials });
    const peer = { address: node.peerAddress, dataAddress: node.dataAddress, client };
    this.clients.set(nodeId, peer);
    return peer;
  }
}
