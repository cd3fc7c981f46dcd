/**
 * Test helper: several ClusterVolumeServices ("nodes") in one process, each with its own
 * file pool, node store and NBD export directory, reaching each other's replicas in
 * process. Each node gets its own ClusterStore (the caller's choice: one shared embedded
 * store, or one etcd client per node, some behind a proxy).
 */
import type { ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { NodeId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ClusterVolumeService } from '../../src/cluster/cluster-volume-service.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import type { ClusterStore } from '../../src/cluster/store/cluster-store.js';
import type { VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { ReplicaConnector, ReplicaControl, ReplicaIo } from '../../src/engine/engine-types.js';
import { ExportManager } from '../../src/engine/export-manager.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { replicaFixture, type ReplicaFixture } from './replica-fixture.js';

/** Every node's replicas, reached in process. */
export class InProcessConnector implements ReplicaConnector {
  constructor(private readonly nodes: Map<NodeId, ReplicaFixture>) {}
  async openIo(volumeId: VolumeId, entry: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
    const replica = await this.nodes.get(entry.nodeId)!.manager.open({ replicaId: entry.id, volumeId });
    replica.admitEpoch(epoch);
    return new LocalReplicaIo(replica, epoch, entry.nodeId);
  }
  async control(nodeId: NodeId): Promise<ReplicaControl> {
    return localControl(this.nodes.get(nodeId)!.manager);
  }
}

export interface ServiceNode {
  id: NodeId;
  store: ClusterStore;
  /** Defaults to a silent logger. */
  log?: Logger;
}

/** Starts one service per node (registered, recovered); everything is torn down with the test. */
export async function serviceCluster(t: ExecutionContext, nodes: readonly ServiceNode[]): Promise<Map<NodeId, ClusterVolumeService>> {
  const fxs = new Map<NodeId, ReplicaFixture>();
  for (const n of nodes) fxs.set(n.id, await replicaFixture());
  t.teardown(async () => {
    for (const fx of fxs.values()) await fx.cleanup();
  });
  const connector = new InProcessConnector(fxs);
  const sockets = mkdtempSync(join(tmpdir(), 'cairn-svc-'));
  t.teardown(() => rmSync(sockets, { recursive: true, force: true }));
  const services = new Map<NodeId, ClusterVolumeService>();
  for (const n of nodes) {
    const log = n.log ?? silentLogger();
    const registry = new NodeRegistry(n.store, { ttlMs: 60_000, log: silentLogger() });
    t.teardown(() => registry.close());
    await registry.register({ nodeId: n.id, name: n.id, peerAddress: '', labels: {}, capacity: { totalBytes: 1 << 30, freeBytes: 1 << 30 }, version: 'test' });
    const fx = fxs.get(n.id)!;
    const service = new ClusterVolumeService({
      nodeId: n.id, clusterName: 'c', store: n.store, pool: fx.pool, connector, exports: new ExportManager(join(sockets, n.id), log),
      dirtyMaps: fx.store.dirtyMaps(), election: undefined, defaultReplicas: nodes.length, replicaTimeoutMs: 5000, rebuildRateBytesPerSec: 0, log,
    });
    await service.recover();
    t.teardown(() => service.shutdown());
    services.set(n.id, service);
  }
  return services;
}
