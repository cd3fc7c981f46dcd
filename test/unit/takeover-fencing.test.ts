/**
 * A takeover fences the old engine through the volume watch (applyDoc → fence → onFenced,
 * which stops the old export). Two ClusterVolumeServices ("nodes" a and b) in one process
 * on one embedded cluster store, each with its own file pool; real engines and NBD
 * exports. Nothing may end as an unhandled promise rejection.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { NodeId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ClusterVolumeService } from '../../src/cluster/cluster-volume-service.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import type { VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { ReplicaConnector, ReplicaControl, ReplicaIo } from '../../src/engine/engine-types.js';
import { ExportManager } from '../../src/engine/export-manager.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;

/** Every node's replicas, reached in process. */
class InProcessConnector implements ReplicaConnector {
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

test('a forced takeover fences the old engine, which stops its export without an unhandled rejection', async (t) => {
  const unhandled: unknown[] = [];
  let wake = (): void => undefined;
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
    wake();
  };
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));

  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const ids = ['node-a', 'node-b'] as NodeId[];
  const fxs = new Map<NodeId, ReplicaFixture>();
  for (const id of ids) fxs.set(id, await replicaFixture());
  t.teardown(async () => { for (const fx of fxs.values()) await fx.cleanup(); });
  const connector = new InProcessConnector(fxs);
  const sockets = mkdtempSync(join(tmpdir(), 'cairn-takeover-'));
  t.teardown(() => rmSync(sockets, { recursive: true, force: true }));
  const lines: string[] = [];
  let onLine = (): void => undefined;
  const logA = pino({ level: 'debug' }, { write: (s: string) => { lines.push(s); onLine(); } });

  const services = new Map<NodeId, ClusterVolumeService>();
  for (const id of ids) {
    const registry = new NodeRegistry(store, { ttlMs: 60_000, log: silentLogger() });
    t.teardown(() => registry.close());
    await registry.register({ nodeId: id, name: id, peerAddress: '', labels: {}, capacity: { totalBytes: 1 << 30, freeBytes: 1 << 30 }, version: 'test' });
    const fx = fxs.get(id)!;
    const log = id === 'node-a' ? logA : silentLogger();
    const service = new ClusterVolumeService({
      nodeId: id, clusterName: 'c', store, pool: fx.pool, connector, exports: new ExportManager(join(sockets, id), log), dirtyMaps: fx.store.dirtyMaps(),
      election: undefined, defaultReplicas: 2, replicaTimeoutMs: 5000, rebuildRateBytesPerSec: 0, log,
    });
    await service.recover();
    t.teardown(() => service.shutdown());
    services.set(id, service);
  }
  const a = services.get('node-a' as NodeId)!;
  const b = services.get('node-b' as NodeId)!;
  await a.create('vol', 8 * MiB, { replicas: 2 });
  await a.export('vol');

  // Node a's engine is stopped once the watch has fenced it (or the stop ends as an unhandled rejection).
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
    onLine = () => {
      if (lines.some((l) => l.includes('"volume engine closed"'))) resolve();
    };
  });
  await b.export('vol', { takeover: true, force: true });
  await stopped;
  t.is(a.connectionCount(), 0);
  // Unhandled rejections are reported once the microtask queue has drained: give it a turn.
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(unhandled.map((e) => (e as Error).message), [], 'no unhandled promise rejection');
  t.true(lines.some((l) => l.includes('volume engine fenced by a newer epoch')));
});
