/**
 * Brings volumes of the first, single-node release (recorded in the node store's
 * `volumes` table) into the cluster store as volume documents with their one local
 * replica in sync. Runs at every start and does nothing once the table is empty. Volumes
 * that were half created or half deleted are removed, as the old recovery would have
 * finished or undone them.
 */
import type { NodeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { PoolBackend } from '../pool/backend.js';
import type { NodeStore } from '../store/node-store.js';
import type { ClusterStore } from './store/cluster-store.js';
import { createVolumeDoc, getVolumeDoc, regionBytesFor, type VolumeDoc } from './volume-doc.js';

export async function importLegacyVolumes(opts: { store: NodeStore; cluster: ClusterStore; pool: PoolBackend; nodeId: NodeId; log: Logger }): Promise<number> {
  let imported = 0;
  for (const volume of opts.store.listVolumes()) {
    const replicas = opts.store.listReplicas(volume.id);
    if (volume.state !== 'ready') {
      for (const r of replicas) {
        await opts.pool.delete(r.deviceId);
        opts.store.deleteHostedReplica(r.id);
      }
      opts.store.deleteVolume(volume.id);
      opts.log.info({ volume: volume.name, state: volume.state }, 'removed an unfinished volume of the single-node layout');
      continue;
    }
    if (!(await getVolumeDoc(opts.cluster, volume.name))) {
      const now = new Date().toISOString();
      const epoch = Math.max(volume.epoch, ...replicas.map((r) => opts.store.getHostedReplica(r.id)?.epoch ?? 0)) + 1;
      const doc: VolumeDoc = {
        id: volume.id, name: volume.name, sizeBytes: volume.sizeBytes, createdAt: volume.createdAt, state: 'ready',
        replicasWanted: replicas.length, regionBytes: regionBytesFor(volume.sizeBytes), epoch,
        engine: volume.exported ? { nodeId: opts.nodeId, epoch, exported: true, startedAt: now } : null,
        replicas: replicas.map((r) => ({ id: r.id, nodeId: opts.nodeId, state: r.state, since: now })),
      };
      await createVolumeDoc(opts.cluster, doc);
      imported++;
      opts.log.info({ volume: volume.name, replicas: replicas.length }, 'volume of the single-node layout moved to the cluster store');
    }
    opts.store.deleteVolume(volume.id);
  }
  return imported;
}
