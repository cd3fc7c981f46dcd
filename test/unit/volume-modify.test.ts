/**
 * A live change of the replica count (src/cluster/volume-modify.ts): which replicas a lower
 * count removes (a table of documents), the bounds, and the lifecycle's `modify` over an
 * embedded store with replica managers as the nodes: replicas created or deleted on their
 * nodes, the document as it ends up, idempotence, and nothing changed when it is refused.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { DocEngineControl } from '../../src/cluster/engine-control.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { getVolumeDoc, updateVolumeDoc, type VolumeDoc, type VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import { VolumeLifecycle, clusterCapacity } from '../../src/cluster/volume-lifecycle.js';
import { chooseRemovals, planReplicaCount } from '../../src/cluster/volume-modify.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { codeOf, replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const since = '2025-03-01T00:00:00.000Z';

function docOf(replicas: [string, string, VolumeReplicaEntry['state']][], replicasWanted = replicas.length): VolumeDoc {
  return {
    id: 'vol-1' as VolumeId, name: 'db', sizeBytes: 64 * MiB, createdAt: since, state: 'ready', replicasWanted, regionBytes: MiB, epoch: 2, engine: null,
    replicas: replicas.map(([id, nodeId, state]) => ({ id: id as ReplicaId, nodeId: nodeId as NodeId, state, since })),
  };
}

const ids = (rs: readonly VolumeReplicaEntry[]): string[] => rs.map((r) => r.id);

test('chooseRemovals: not in sync first (faulted, then rebuilding), then a down node, then not the engine\'s node, then the newest', (t) => {
  const cases: { doc: VolumeDoc; count: number; engine?: string; down?: string[]; want: string[]; why: string }[] = [
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'rebuilding'], ['c', 'n3', 'faulted']]), count: 1, want: ['c'], why: 'faulted before rebuilding' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'rebuilding'], ['c', 'n3', 'faulted']]), count: 2, want: ['c', 'b'], why: 'every replica not in sync' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync'], ['c', 'n3', 'rebuilding']]), count: 1, engine: 'n3', want: ['c'], why: 'not in sync beats the engine\'s node' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync'], ['c', 'n3', 'in-sync']]), count: 1, engine: 'n3', want: ['b'], why: 'the newest not on the engine\'s node' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync'], ['c', 'n3', 'in-sync']]), count: 2, engine: 'n1', want: ['c', 'b'], why: 'the engine\'s local replica stays' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync'], ['c', 'n3', 'in-sync']]), count: 1, engine: 'n1', down: ['n2'], want: ['b'], why: 'a down node before the newest' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync'], ['c', 'n3', 'in-sync']]), count: 1, down: ['n1'], want: ['a'], why: 'an in-sync replica on a down node before one on an up node' },
    { doc: docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync']]), count: 1, want: ['b'], why: 'without an engine: the newest' },
  ];
  for (const c of cases) {
    const got = chooseRemovals(c.doc, c.count, { engineNode: c.engine as NodeId | undefined, downNodes: new Set((c.down ?? []) as NodeId[]) });
    t.deepEqual(ids(got), c.want, c.why);
  }
});

test('chooseRemovals never removes the last in-sync replica: FAILED_PRECONDITION when none would be left', (t) => {
  const err = t.throws(() => chooseRemovals(docOf([['a', 'n1', 'faulted'], ['b', 'n2', 'rebuilding']]), 1), { instanceOf: StorageError });
  t.is(err.code, Code.FAILED_PRECONDITION);
  t.regex(err.message, /no in-sync replica to keep/);
  // One in sync among faulted ones: the faulted go, the in-sync one stays.
  t.deepEqual(ids(chooseRemovals(docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'faulted'], ['c', 'n3', 'faulted']]), 2)), ['c', 'b']);
});

test('planReplicaCount: bounds, idempotence, recording only, adding and removing', (t) => {
  const two = docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync']]);
  for (const bad of [0, 4, 1.5, -1]) t.is(t.throws(() => planReplicaCount(two, bad), { instanceOf: StorageError }).code, Code.INVALID_ARGUMENT, `replicas ${bad}`);
  t.deepEqual(planReplicaCount(two, 2), { kind: 'none' });
  t.deepEqual(planReplicaCount(two, 3), { kind: 'add', count: 1 });
  t.deepEqual(planReplicaCount(docOf([['a', 'n1', 'in-sync']]), 3), { kind: 'add', count: 2 });
  t.deepEqual(planReplicaCount(two, 1).kind, 'remove');
  // Wanted 3 with a replica still missing (the repair loop places it): 3 again changes nothing, 2 only records.
  const short = docOf([['a', 'n1', 'in-sync'], ['b', 'n2', 'in-sync']], 3);
  t.deepEqual(planReplicaCount(short, 3), { kind: 'none' });
  t.deepEqual(planReplicaCount(short, 2), { kind: 'record' });
  t.is(t.throws(() => planReplicaCount(docOf([['a', 'n1', 'faulted']]), 2), { instanceOf: StorageError }).code, Code.FAILED_PRECONDITION, 'nothing to copy from');
});

interface Setup { store: EmbeddedStore; fxs: Map<NodeId, ReplicaFixture>; volumes: VolumeLifecycle }

async function setup(t: ExecutionContext, nodes: string[], zones: Record<string, string> = {}): Promise<Setup> {
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const fxs = new Map<NodeId, ReplicaFixture>();
  for (const id of nodes as NodeId[]) {
    const fx = await replicaFixture();
    t.teardown(() => fx.cleanup());
    fxs.set(id, fx);
    const registry = new NodeRegistry(store, { ttlMs: 60_000, log: silentLogger() });
    t.teardown(() => registry.close());
    await registry.register({ nodeId: id, name: id, peerAddress: '', ...(zones[id] ? { zone: zones[id] } : {}), labels: {}, capacity: { totalBytes: 1 << 30, freeBytes: 1 << 29 }, version: 'test' });
  }
  const volumes = new VolumeLifecycle({
    nodeId: 'controller-0' as NodeId, clusterName: 'c', store, controls: { control: async (nodeId) => localControl(fxs.get(nodeId)!.manager) },
    election: undefined, defaultReplicas: 2, capacity: () => clusterCapacity(store), log: silentLogger(),
  });
  return { store, fxs, volumes };
}

/** Which nodes hold a replica of the volume (asked of each node's replica manager). */
async function hosting(s: Setup, volumeId: string, replicaIds: readonly string[]): Promise<string[]> {
  const found: string[] = [];
  for (const [node, fx] of s.fxs) {
    for (const id of replicaIds) if ((await codeOf(fx.manager.status({ replicaId: id, volumeId } as never))) !== Code.NOT_FOUND) found.push(`${node}:${id}`);
  }
  return found.sort();
}

test('modify raises the count: the new replica exists on the third node, listed rebuilding; the same count again changes nothing', async (t) => {
  const s = await setup(t, ['node-a', 'node-b', 'node-c']);
  const created = await s.volumes.create('db', 8 * MiB, { replicas: 2, preferredNode: 'node-a' });
  const raised = await s.volumes.modify('db', { replicas: 3 });
  t.is(raised.replicasWanted, 3);
  t.deepEqual(raised.replicas.map((r) => r.nodeName).sort(), ['node-a', 'node-b', 'node-c']);
  const added = raised.replicas.find((r) => !created.replicas.some((c) => c.id === r.id))!;
  t.is(added.state, 'rebuilding');
  t.is(added.reason, 'added: replica count raised to 3');
  t.is((await s.fxs.get(added.nodeName as NodeId)!.manager.status({ replicaId: added.id, volumeId: created.id } as never)).sizeBytes, created.sizeBytes);

  const before = await getVolumeDoc(s.store, 'db');
  const again = await s.volumes.modify('db', { replicas: 3 });
  t.deepEqual(again.replicas.map((r) => r.id), raised.replicas.map((r) => r.id));
  t.is((await getVolumeDoc(s.store, 'db'))!.modRevision, before!.modRevision, 'an idempotent modify writes nothing');
});

test('a volume created in zones keeps to them: a raised count places only there; the same name with another zones set is ALREADY_EXISTS', async (t) => {
  const s = await setup(t, ['node-a', 'node-b', 'node-c', 'node-d'], { 'node-a': 'z1', 'node-b': 'z1', 'node-c': 'z2', 'node-d': 'z1' });
  const created = await s.volumes.create('db', 8 * MiB, { replicas: 1, zones: ['z1'], preferredNode: 'node-a' });
  t.deepEqual(created.zones, ['z1']);
  t.deepEqual((await getVolumeDoc(s.store, 'db'))!.doc.zones, ['z1'], 'kept in the document');

  const three = await s.volumes.modify('db', { replicas: 3 });
  t.deepEqual(three.replicas.map((r) => r.nodeName).sort(), ['node-a', 'node-b', 'node-d'], 'node-c (z2) is not used');
  const before = await getVolumeDoc(s.store, 'db');
  const again = await t.throwsAsync(s.volumes.create('db', 8 * MiB, { zones: ['z2'] }), { instanceOf: StorageError });
  t.is(again.code, Code.ALREADY_EXISTS);
  t.is((await s.volumes.create('db', 8 * MiB, { zones: ['z1', 'z1'] })).id, created.id, 'the same set again is the same volume');
  t.is((await getVolumeDoc(s.store, 'db'))!.modRevision, before!.modRevision, 'refused calls wrote nothing');
});

test('a raised count with no room left in the volume\'s zones is RESOURCE_EXHAUSTED and changes nothing, although another zone has a node', async (t) => {
  const s = await setup(t, ['node-a', 'node-b', 'node-c'], { 'node-a': 'z1', 'node-b': 'z1', 'node-c': 'z2' });
  await s.volumes.create('db', 8 * MiB, { replicas: 2, zones: ['z1'] });
  const before = await getVolumeDoc(s.store, 'db');
  const err = await t.throwsAsync(s.volumes.modify('db', { replicas: 3 }), { instanceOf: StorageError });
  t.is(err.code, Code.RESOURCE_EXHAUSTED);
  t.regex(err.message, /z1/, 'the message names the zone');
  t.is((await getVolumeDoc(s.store, 'db'))!.modRevision, before!.modRevision);
});

test('modify lowers the count: the replica not in sync goes first, then one off the engine\'s node; their data is deleted on their nodes', async (t) => {
  const s = await setup(t, ['node-a', 'node-b', 'node-c']);
  const created = await s.volumes.create('db', 8 * MiB, { replicas: 2, preferredNode: 'node-a' });
  const raised = await s.volumes.modify('db', { replicas: 3 });
  const all = raised.replicas.map((r) => r.id);
  const added = all.find((id) => !created.replicas.some((c) => c.id === id))!;
  // The engine runs on node-a.
  await updateVolumeDoc(s.store, 'db', (d) => ({ ...d, epoch: d.epoch + 1, engine: { nodeId: 'node-a' as NodeId, epoch: d.epoch + 1, exported: true, startedAt: since } }));

  const two = await s.volumes.modify('db', { replicas: 2 });
  t.is(two.replicasWanted, 2);
  t.false(two.replicas.some((r) => r.id === added), 'the rebuilding replica was removed');
  t.deepEqual(await hosting(s, created.id, all), created.replicas.map((r) => `${r.nodeName}:${r.id}`).sort(), 'its data is gone from its node');

  const one = await s.volumes.modify('db', { replicas: 1 });
  t.deepEqual(one.replicas.map((r) => [r.nodeName, r.state]), [['node-a', 'in-sync']], 'the engine\'s local replica stays');
  const onA = created.replicas.find((r) => r.nodeName === 'node-a')!;
  t.deepEqual(await hosting(s, created.id, all), [`node-a:${onA.id}`]);
  t.is((await s.volumes.modify('db', { replicas: 1 })).replicas.length, 1, 'idempotent');
});

test('modify refuses what it cannot do and changes nothing: too few nodes (RESOURCE_EXHAUSTED), bad count, unknown volume, cancelled', async (t) => {
  const s = await setup(t, ['node-a', 'node-b']);
  const created = await s.volumes.create('db', 8 * MiB, { replicas: 2 });
  const before = await getVolumeDoc(s.store, 'db');
  const err = await t.throwsAsync(s.volumes.modify('db', { replicas: 3 }), { instanceOf: StorageError });
  t.is(err!.code, Code.RESOURCE_EXHAUSTED);
  t.regex(err!.message, /only 0 other nodes are up/);
  t.is(await codeOf(s.volumes.modify('db', { replicas: 4 })), Code.INVALID_ARGUMENT);
  t.is(await codeOf(s.volumes.modify('nope', { replicas: 1 })), Code.NOT_FOUND);
  const aborted = new AbortController();
  aborted.abort();
  t.is(await codeOf(s.volumes.modify('db', { replicas: 1 }, aborted.signal)), Code.CANCELLED);
  t.is((await getVolumeDoc(s.store, 'db'))!.modRevision, before!.modRevision);
  t.is((await hosting(s, created.id, created.replicas.map((r) => r.id))).length, 2);
});

test('an engine fault that would leave the document with no in-sync replica (one was removed meanwhile) is refused: the engine fences', async (t) => {
  const s = await setup(t, ['node-a', 'node-b']);
  await s.volumes.create('db', 8 * MiB, { replicas: 2, preferredNode: 'node-a' });
  const doc = (await getVolumeDoc(s.store, 'db'))!.doc;
  // The engine still writes to both; the count is lowered to 1 (node-b's replica removed), then node-a's replica fails a write.
  await s.volumes.modify('db', { replicas: 1 });
  const onA = doc.replicas.find((r) => r.nodeId === 'node-a')!;
  const control = new DocEngineControl(s.store, 'db', doc.epoch, silentLogger());
  const err = await t.throwsAsync(control.markFaulted([onA.id], 'EIO'), { instanceOf: StorageError });
  t.is(err!.code, Code.FAILED_PRECONDITION);
  t.deepEqual((await getVolumeDoc(s.store, 'db'))!.doc.replicas.map((r) => [r.id, r.state]), [[onA.id, 'in-sync']], 'the document keeps its in-sync replica');
  // A fault of the removed replica itself changes nothing and succeeds.
  const onB = doc.replicas.find((r) => r.nodeId === 'node-b')!;
  await control.markFaulted([onB.id], 'closed');
  t.is((await getVolumeDoc(s.store, 'db'))!.doc.replicas.length, 1);
});
