/**
 * What /metrics reads, gathered once per scrape from this process's own state: the engines
 * running here, their NBD exports' counters, the data channel's counters, the replicas this
 * node hosts (its node store), the pool, and (roles with the cluster's volume lifecycle)
 * the snapshots per source volume. Nothing here calls another node.
 */
import type { DataChannelReplicaStats } from '../../cluster/replica-connector.js';
import type { SnapshotView } from '../../cluster/snapshot-types.js';
import type { RunningEngineView } from '../../engine/engine-types.js';
import type { NbdExportStats } from '../../engine/nbd/export-server.js';
import type { PoolBackend } from '../../pool/backend.js';
import { DmBackend } from '../../pool/dm-backend.js';
import { METADATA_BLOCK_BYTES } from '../../pool/dm-layout.js';
import type { ReplicaStatusView } from '../../replica/replica-manager.js';

/** Where the figures come from; a role leaves out what it does not have. */
export interface MetricSources {
  /** Engines running on this node (roles node and all). */
  engines?: () => RunningEngineView[];
  /** The NBD exports' counters. */
  exports?: () => NbdExportStats[];
  /** The data channel's counters per remote replica this node's engines reach. */
  dataChannel?: () => DataChannelReplicaStats[];
  /** The replicas this node hosts. */
  replicas?: () => Promise<ReplicaStatusView[]>;
  pool?: PoolBackend;
  /** Snapshots of the cluster (roles controller and all: one read of the cluster store per scrape). */
  snapshots?: () => Promise<Pick<SnapshotView, 'sourceVolumeName' | 'sizeBytes'>[]>;
}

export interface PoolFigures {
  kind: string;
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  /** dm pools only. */
  metadata?: { usedBytes: number; totalBytes: number };
}

export interface NodeView {
  engines: RunningEngineView[];
  exportOf(name: string): NbdExportStats | undefined;
  dataChannel: DataChannelReplicaStats[];
  replicas: ReplicaStatusView[];
  pool: PoolFigures | undefined;
  /** Per source volume; undefined where this role does not report snapshots. */
  snapshots: { volume: string; count: number; bytes: number }[] | undefined;
}

export const EMPTY_VIEW: NodeView = { engines: [], exportOf: () => undefined, dataChannel: [], replicas: [], pool: undefined, snapshots: undefined };

/**
 * Reads every source. One that fails (the cluster store unreachable, the pool's status
 * unreadable) is left out of this scrape and handed to `onError`; the others are reported.
 */
export async function loadNodeView(sources: MetricSources, onError: (what: string, err: unknown) => void): Promise<NodeView> {
  const exports = new Map((sources.exports?.() ?? []).map((s) => [s.name, s]));
  const settle = <T>(what: string, p: Promise<T> | undefined, fallback: T): Promise<T> => (p ?? Promise.resolve(fallback)).catch((err: unknown) => {
    onError(what, err);
    return fallback;
  });
  const [replicas, pool, snapshots] = await Promise.all([
    settle('hosted replicas', sources.replicas?.(), []),
    settle('pool', sources.pool && poolFigures(sources.pool), undefined),
    settle('snapshots', sources.snapshots && snapshotTotals(sources.snapshots), undefined),
  ]);
  return {
    engines: sources.engines?.() ?? [], exportOf: (name) => exports.get(name), dataChannel: sources.dataChannel?.() ?? [], replicas, pool, snapshots,
  };
}

async function poolFigures(pool: PoolBackend): Promise<PoolFigures> {
  const c = await pool.capacity();
  const figures: PoolFigures = { kind: pool.kind, ...c };
  if (pool instanceof DmBackend) {
    const s = await pool.poolStatus();
    figures.metadata = { usedBytes: s.usedMetadataBlocks * METADATA_BLOCK_BYTES, totalBytes: s.totalMetadataBlocks * METADATA_BLOCK_BYTES };
  }
  return figures;
}

async function snapshotTotals(list: NonNullable<MetricSources['snapshots']>): Promise<NonNullable<NodeView['snapshots']>> {
  const perVolume = new Map<string, { count: number; bytes: number }>();
  for (const s of await list()) {
    const e = perVolume.get(s.sourceVolumeName) ?? { count: 0, bytes: 0 };
    e.count++;
    e.bytes += s.sizeBytes;
    perVolume.set(s.sourceVolumeName, e);
  }
  return [...perVolume].map(([volume, e]) => ({ volume, ...e }));
}
