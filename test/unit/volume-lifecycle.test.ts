/**
 * The volume lifecycle runs with the cluster store and the replica services alone, as a
 * controller-role cairnd does: no pool, no NBD exports, no dirty-region maps are given to
 * it. Two "nodes" hold the replicas (replica managers reached in process, as the peer port
 * would reach them). A cancelled create leaves neither a document nor a replica behind.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Code } from '../../src/common/errors.js';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { getVolumeDoc, updateVolumeDoc } from '../../src/cluster/volume-doc.js';
import { VolumeLifecycle, clusterCapacity, type ReplicaControls } from '../../src/cluster/volume-lifecycle.js';
import type { ReplicaControl } from '../../src/engine/engine-types.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { codeOf, replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const NODES = ['node-a', 'node-b'] as NodeId[];

interface Setup {
  store: EmbeddedStore;
  fxs: Map<NodeId, ReplicaFixture>;
  controls: ReplicaControls;
}

async function setup(t: ExecutionContext): Promise<Setup> {
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const fxs = new Map<NodeId, ReplicaFixture>();
  for (const id of NODES) {
    const fx = await replicaFixture();
    t.teardown(() => fx.cleanup());
    fxs.set(id, fx);
    const registry = new NodeRegistry(store, { ttlMs: 60_000, log: silentLogger() });
    t.teardown(() => registry.close());
    await registry.register({ nodeId: id, name: id, peerAddress: '', labels: {}, capacity: { totalBytes: 1 << 30, freeBytes: 1 << 29 }, version: 'test' });
  }
  return { store, fxs, controls: { control: async (nodeId) => localControl(fxs.get(nodeId)!.manager) } };
}

function controller(s: Setup, controls = s.controls): VolumeLifecycle {
  // The controller's own name is no registered node: it holds no replica.
  return new VolumeLifecycle({
    nodeId: 'controller-0' as NodeId, clusterName: 'c', store: s.store, controls, election: undefined, defaultReplicas: 2,
    capacity: () => clusterCapacity(s.store), log: silentLogger(),
  });
}

test('the lifecycle creates, lists and deletes a volume with a store and the replica services only (no pool, no exports)', async (t) => {
  const s = await setup(t);
  const volumes = controller(s);
  const created = await volumes.create('data', 10 * MiB + 1);
  t.is(created.sizeBytes, 10 * MiB + 4096);
  t.is(created.state, 'ready');
  t.deepEqual(created.replicas.map((r) => r.nodeName).sort(), NODES);
  t.is(created.export, undefined);
  const refs = created.replicas.map((r) => ({ node: r.nodeName as NodeId, ref: { replicaId: r.id, volumeId: created.id } }));
  for (const { node, ref } of refs) t.is((await s.fxs.get(node)!.manager.status(ref)).sizeBytes, created.sizeBytes);

  t.deepEqual((await volumes.list()).map((v) => v.name), ['data']);
  t.is((await volumes.get('data')).id, created.id);
  const capacity = await volumes.capacity();
  t.is(capacity.totalBytes, 2 * 2 ** 30);
  t.is(capacity.provisionedBytes, 2 * created.sizeBytes);

  await volumes.delete('data');
  t.deepEqual(await volumes.list(), []);
  t.is(await getVolumeDoc(s.store, 'data'), undefined);
  for (const { node, ref } of refs) t.is(await codeOf(s.fxs.get(node)!.manager.status(ref)), Code.NOT_FOUND);
});

test('a create whose signal has already fired is CANCELLED and writes nothing', async (t) => {
  const s = await setup(t);
  const volumes = controller(s);
  const aborted = new AbortController();
  aborted.abort();
  t.is(await codeOf(volumes.create('never', 4 * MiB, {}, aborted.signal)), Code.CANCELLED);
  t.is(await getVolumeDoc(s.store, 'never'), undefined);
});

test('a create cancelled while a replica is being created is rolled back: no document, no replica left', async (t) => {
  const s = await setup(t);
  let releaseB = (): void => undefined;
  const gate = new Promise<void>((resolve) => { releaseB = resolve; });
  let reachedB = (): void => undefined;
  const bCalled = new Promise<void>((resolve) => { reachedB = resolve; });
  const created: { node: NodeId; replicaId: string; volumeId: string }[] = [];
  const controls: ReplicaControls = {
    async control(nodeId): Promise<ReplicaControl> {
      const real = localControl(s.fxs.get(nodeId)!.manager);
      return {
        ...real,
        createReplica: async (ref, sizeBytes, epoch, inSync) => {
          created.push({ node: nodeId, replicaId: String(ref.replicaId), volumeId: String(ref.volumeId) });
          if (nodeId === 'node-b') {
            reachedB();
            await gate; // node b answers slowly: the caller gives up meanwhile
          }
          return real.createReplica(ref, sizeBytes, epoch, inSync);
        },
      };
    },
  };
  const volumes = controller(s, controls);
  const cancel = new AbortController();
  const creating = volumes.create('slow', 4 * MiB, {}, cancel.signal);
  await bCalled;
  t.truthy(await getVolumeDoc(s.store, 'slow'), 'the creating document exists while replicas are made');
  cancel.abort(new Error('the CSI call was cancelled'));
  releaseB();
  t.is(await codeOf(creating), Code.CANCELLED);

  t.is(await getVolumeDoc(s.store, 'slow'), undefined);
  t.is(created.length, 2);
  for (const c of created) {
    t.is(await codeOf(s.fxs.get(c.node)!.manager.status({ replicaId: c.replicaId, volumeId: c.volumeId } as never)), Code.NOT_FOUND, `replica on ${c.node}`);
  }
  // The name is free again: the same create, not cancelled, succeeds.
  t.is((await controller(s).create('slow', 4 * MiB)).state, 'ready');
});

test('a controller refuses to delete a volume a node daemon serves (even one named like itself), and deletes it with force', async (t) => {
  const s = await setup(t);
  const volumes = controller(s);
  await volumes.create('served', 4 * MiB);
  for (const holder of ['node-a', 'controller-0'] as NodeId[]) {
    await updateVolumeDoc(s.store, 'served', (d) => ({ ...d, epoch: d.epoch + 1, engine: { nodeId: holder, epoch: d.epoch + 1, exported: true, startedAt: new Date().toISOString() } }));
    t.is(await codeOf(volumes.delete('served')), Code.FAILED_PRECONDITION, `served by ${holder}`);
    t.is((await volumes.get('served')).engineNode, holder);
  }
  await volumes.delete('served', true);
  t.is(await getVolumeDoc(s.store, 'served'), undefined);
});

test('a delete whose signal has already fired is CANCELLED and leaves the volume as it was', async (t) => {
  const s = await setup(t);
  const volumes = controller(s);
  const created = await volumes.create('kept', 4 * MiB);
  const aborted = new AbortController();
  aborted.abort();
  t.is(await codeOf(volumes.delete('kept', false, aborted.signal)), Code.CANCELLED);
  const after = await getVolumeDoc(s.store, 'kept');
  t.is(after?.doc.state, 'ready');
  t.is(after?.doc.epoch, 1);
  for (const r of created.replicas) t.is((await s.fxs.get(r.nodeName as NodeId)!.manager.status({ replicaId: r.id, volumeId: created.id } as never)).sizeBytes, created.sizeBytes);
});
