/**
 * What a node reports of itself: the process (role and version), its pool, the replicas it
 * hosts (their state and rebuild checkpoints as its node store has them), the data channel
 * towards the remote replicas of its engines, the write barrier's pauses and, where the role
 * has the volume lifecycle, the snapshots per source volume.
 */
import type { Registry } from 'prom-client';
import type { ReplicaStatusView } from '../../replica/replica-manager.js';
import type { DataChannelReplicaStats } from '../../cluster/replica-connector.js';
import { barrierPauses } from '../../engine/barrier-stats.js';
import { counterFamily, gaugeFamily, histogramFamily, type Labels, type Sample } from './families.js';
import type { NodeView, PoolFigures } from './node-view.js';

const REPLICA_STATES = ['in-sync', 'rebuilding', 'faulted'] as const;

export function registerNodeFamilies(registry: Registry, view: () => NodeView, info: { role: string; version: string }): void {
  gaugeFamily(registry, {
    name: 'cairn_node_info', help: 'Always 1: this cairnd\'s role and version (absent when the node is down).', labelNames: ['role', 'version'],
    samples: () => [{ labels: { role: info.role, version: info.version }, value: 1 }],
  });
  registerPoolFamilies(registry, view);
  registerHostedReplicaFamilies(registry, view);
  registerDataChannelFamilies(registry, view);
  histogramFamily(registry, {
    name: 'cairn_snapshot_barrier_pause_seconds', help: 'How long new writes waited at a snapshot\'s write barrier, on the engines of this node.', labelNames: [],
    samples: () => [{ labels: {}, histogram: barrierPauses }],
  });
  const perVolume = (value: (e: { count: number; bytes: number }) => number) => (): Sample[] => (view().snapshots ?? []).map((e) => ({ labels: { volume: e.volume }, value: value(e) }));
  gaugeFamily(registry, { name: 'cairn_volume_snapshots', help: 'Snapshots of each source volume (reported by roles controller and all).', labelNames: ['volume'], samples: perVolume((e) => e.count) });
  gaugeFamily(registry, { name: 'cairn_volume_snapshot_bytes', help: 'Sum of the sizes of the snapshots of each source volume (roles controller and all).', labelNames: ['volume'], samples: perVolume((e) => e.bytes) });
}

function registerPoolFamilies(registry: Registry, view: () => NodeView): void {
  const pool = (value: (p: PoolFigures) => number | undefined) => (): Sample[] => {
    const p = view().pool;
    const v = p && value(p);
    return p && v !== undefined ? [{ labels: { pool_kind: p.kind }, value: v }] : [];
  };
  const labelNames = ['pool_kind'];
  gaugeFamily(registry, { name: 'cairn_pool_total_bytes', help: 'Bytes the pool can hold.', labelNames, samples: pool((p) => p.totalBytes) });
  gaugeFamily(registry, { name: 'cairn_pool_used_bytes', help: 'Bytes of the pool allocated to devices.', labelNames, samples: pool((p) => p.usedBytes) });
  gaugeFamily(registry, { name: 'cairn_pool_free_bytes', help: 'Bytes still free in the pool.', labelNames, samples: pool((p) => p.freeBytes) });
  gaugeFamily(registry, { name: 'cairn_pool_provisioned_bytes', help: 'Sum of the virtual sizes of the pool\'s devices (thin provisioning may exceed the total).', labelNames, samples: pool((p) => p.provisionedBytes) });
  gaugeFamily(registry, { name: 'cairn_pool_metadata_used_bytes', help: 'Bytes of the dm thin pool\'s metadata device in use (dm pools only).', labelNames, samples: pool((p) => p.metadata?.usedBytes) });
  gaugeFamily(registry, { name: 'cairn_pool_metadata_total_bytes', help: 'Size of the dm thin pool\'s metadata device (dm pools only).', labelNames, samples: pool((p) => p.metadata?.totalBytes) });
}

function registerHostedReplicaFamilies(registry: Registry, view: () => NodeView): void {
  const labelNames = ['volume_id', 'replica'];
  const labels = (r: ReplicaStatusView): Labels => ({ volume_id: r.volumeId, replica: r.replicaId });
  const each = (value: (r: ReplicaStatusView) => number, only: (r: ReplicaStatusView) => boolean = () => true) => (): Sample[] =>
    view().replicas.filter(only).map((r) => ({ labels: labels(r), value: value(r) }));
  gaugeFamily(registry, {
    name: 'cairn_replica_state', help: 'State of each replica this node hosts, as its node store records it: 1 for its state, 0 for the others.', labelNames: [...labelNames, 'state'],
    samples: () => view().replicas.flatMap((r) => REPLICA_STATES.map((state) => ({ labels: { ...labels(r), state }, value: r.state === state ? 1 : 0 }))),
  });
  gaugeFamily(registry, { name: 'cairn_replica_size_bytes', help: 'Virtual size of each replica this node hosts.', labelNames, samples: each((r) => r.sizeBytes) });
  gaugeFamily(registry, { name: 'cairn_replica_allocated_bytes', help: 'Pool bytes allocated to each replica this node hosts.', labelNames, samples: each((r) => r.allocatedBytes) });
  const rebuilding = (r: ReplicaStatusView): boolean => r.rebuild !== undefined;
  gaugeFamily(registry, { name: 'cairn_replica_rebuild_done_bytes', help: 'Bytes of a replica being rebuilt that its last checkpoint says are copied.', labelNames, samples: each((r) => r.rebuild!.doneBytes, rebuilding) });
  gaugeFamily(registry, { name: 'cairn_replica_rebuild_total_bytes', help: 'Bytes the rebuild of a replica hosted here copies in all.', labelNames, samples: each((r) => r.rebuild!.totalBytes, rebuilding) });
}

/** The data channel's per remote replica counters (names kept from before prom-client). */
function registerDataChannelFamilies(registry: Registry, view: () => NodeView): void {
  const labelNames = ['replica', 'volume_id', 'replica_node'];
  const labels = (r: DataChannelReplicaStats): Labels => ({ replica: r.replicaId, volume_id: r.volumeId, replica_node: r.nodeId });
  const each = (value: (r: DataChannelReplicaStats) => number) => (): Sample[] => view().dataChannel.map((r) => ({ labels: labels(r), value: value(r) }));
  counterFamily(registry, { name: 'cairn_replica_data_requests_total', help: 'Requests sent to a remote replica on the data channel.', labelNames, samples: each((r) => r.stats.requests) });
  counterFamily(registry, { name: 'cairn_replica_data_sent_bytes_total', help: 'Write payload bytes sent to a remote replica.', labelNames, samples: each((r) => r.stats.bytesSent) });
  counterFamily(registry, { name: 'cairn_replica_data_failed_requests_total', help: 'Requests to a remote replica that failed (refused, or the connection was lost).', labelNames, samples: each((r) => r.stats.failures) });
  gaugeFamily(registry, { name: 'cairn_replica_data_inflight_requests', help: 'Requests to a remote replica waiting for their reply.', labelNames, samples: each((r) => r.stats.inflight) });
  histogramFamily(registry, {
    name: 'cairn_replica_data_latency_seconds', help: 'Time from sending a request to a remote replica to its reply.', labelNames,
    samples: () => view().dataChannel.map((r) => ({ labels: labels(r), histogram: r.stats.latency })),
  });
}
