/**
 * The cluster side of snapshots (src/cluster/snapshot-*.ts, volume-restore.ts): the snapshot
 * document's parser, and the snapshot service and restore over an embedded cluster store with
 * real replica managers (file pools) as the nodes. A node's answers are scripted only where
 * that is what is tested (a copy that fails, the engine's node answering SnapshotVolume, a
 * node that is down).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import { getSnapshotDoc, parseSnapshotDoc, snapshotDocToJson } from '../../src/cluster/snapshot-doc.js';
import { shortTail, SNAPSHOT_RULE_TAIL_BYTES } from '../../src/cluster/snapshot-rule-record.js';
import { ClusterSnapshotService } from '../../src/cluster/snapshot-service.js';
import type { SnapshotDoc, SnapshotRuleRecord } from '../../src/cluster/snapshot-types.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import type { JsonValue } from '../../src/cluster/store/cluster-store.js';
import { getVolumeDoc, parseVolumeDoc, updateVolumeDoc, volumeDocToJson } from '../../src/cluster/volume-doc.js';
import { VolumeLifecycle, clusterCapacity, type ReplicaControls } from '../../src/cluster/volume-lifecycle.js';
import { placeRestore } from '../../src/cluster/volume-restore.js';
import type { ReplicaControl } from '../../src/engine/engine-types.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { codeOf, replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const NODES = ['node-a', 'node-b', 'node-c'] as NodeId[];

const sampleDoc: SnapshotDoc = {
  id: 'snap-1' as SnapshotId, name: 'before-upgrade', sourceVolumeId: 'vol-1' as VolumeId, sourceVolumeName: 'db', sizeBytes: 8 * MiB,
  createdAt: '2026-01-01T00:00:00.000Z', state: 'ready', readyToUse: true, copiesWanted: 2,
  copies: [{ nodeId: 'node-a' as NodeId, replicaId: 'rep-1' as ReplicaId }], pauseUs: 1200,
};

test('snapshot documents round-trip, and malformed ones are refused naming the key and the field', (t) => {
  t.deepEqual(parseSnapshotDoc('snapshots/x', snapshotDocToJson(sampleDoc)), sampleDoc);
  t.deepEqual(parseSnapshotDoc('snapshots/x', snapshotDocToJson({ ...sampleDoc, internal: true })).internal, true);
  t.is(parseSnapshotDoc('snapshots/x', snapshotDocToJson({ ...sampleDoc, groupSnapshotId: 'grp-1' })).groupSnapshotId, 'grp-1', 'a group member keeps its group id');
  t.false('groupSnapshotId' in parseSnapshotDoc('snapshots/x', snapshotDocToJson(sampleDoc)), 'an older document (no group id) still parses, without one');
  const base = snapshotDocToJson(sampleDoc) as { [k: string]: JsonValue };
  const bad: [JsonValue, RegExp][] = [
    [[], /not an object/],
    [{ ...base, state: 'gone' }, /unknown state gone/],
    [{ ...base, sizeBytes: -1 }, /sizeBytes/],
    [{ ...base, copies: [{ nodeId: 'n' }] }, /copy entry/],
    [{ ...base, copies: [{ nodeId: 'n', replicaId: 'a' }, { nodeId: 'n', replicaId: 'b' }] }, /two copies on one node/],
    [{ ...base, readyToUse: 'yes' }, /readyToUse/],
    [{ ...base, state: 'creating' }, /readyToUse while creating/],
    [{ ...base, internal: 1 }, /internal/],
    [{ ...base, groupSnapshotId: 7 }, /groupSnapshotId/],
    [{ ...base, createdAt: 'yesterday' }, /createdAt/],
  ];
  for (const [value, why] of bad) {
    const err = t.throws(() => parseSnapshotDoc('snapshots/x', value), { instanceOf: StorageError });
    t.is(err.code, Code.DATA_LOSS);
    t.regex(err.message, why);
    t.regex(err.message, /snapshots\/x/);
  }
});

test('a snapshot document keeps the rule it was taken under, field by field; one written before rules parses without it; a malformed record is DATA_LOSS', (t) => {
  const rule: SnapshotRuleRecord = {
    name: 'postgres', ok: false, durationMs: 812,
    actions: [
      { action: 'checkpoint', phase: 'pre', kind: 'command', step: 'run', target: 'node-a', status: 'succeeded', exitCode: 0, durationMs: 40 },
      { action: 'pre[1]', phase: 'pre', kind: 'fsfreeze', step: 'freeze', target: '/staging/pg', status: 'succeeded', exitCode: null, durationMs: 3 },
      { action: 'pre[1]', phase: 'post', kind: 'fsfreeze', step: 'thaw', target: '/staging/pg', status: 'succeeded', exitCode: null, durationMs: 1 },
      {
        action: 'notify', phase: 'post', kind: 'command', step: 'run', target: 'node-a', status: 'failed', exitCode: 3, durationMs: 12,
        error: { code: 'FAILED_PRECONDITION', message: 'notify exited 3' }, outputTail: 'no route to host\n',
      },
    ],
  };
  const withRule = { ...sampleDoc, rule };
  t.deepEqual(parseSnapshotDoc('snapshots/x', snapshotDocToJson(withRule)), withRule);
  // A document as written before rules existed: no rule field at all.
  const old = snapshotDocToJson(sampleDoc) as { [k: string]: JsonValue };
  t.false('rule' in old);
  t.is(parseSnapshotDoc('snapshots/x', old).rule, undefined);
  const json = snapshotDocToJson(withRule) as { [k: string]: JsonValue };
  const ruleJson = json.rule as { [k: string]: JsonValue };
  const bad: [JsonValue, RegExp][] = [
    [{ ...json, rule: 'postgres' }, /rule is not an object/],
    [{ ...json, rule: { ...ruleJson, ok: 'yes' } }, /rule\.ok/],
    [{ ...json, rule: { ...ruleJson, actions: [{ action: 'a', phase: 'during' }] } }, /rule\.actions\[0\]/],
    [{ ...json, rule: { ...ruleJson, actions: [{ ...(rule.actions[0] as unknown as { [k: string]: JsonValue }), exitCode: 'zero' }] } }, /exitCode/],
  ];
  for (const [value, why] of bad) {
    const err = t.throws(() => parseSnapshotDoc('snapshots/x', value), { instanceOf: StorageError });
    t.is(err.code, Code.DATA_LOSS);
    t.regex(err.message, why);
  }
  // Only a short tail of an action's output is kept.
  t.is(Buffer.byteLength(shortTail('é'.repeat(2000))), SNAPSHOT_RULE_TAIL_BYTES);
  t.is(shortTail('short'), 'short');
});

test('volume documents keep their content source and seed replicas; a seed no longer listed is dropped', (t) => {
  const doc = {
    id: 'vol-2' as VolumeId, name: 'copy', sizeBytes: 8 * MiB, createdAt: sampleDoc.createdAt, state: 'ready' as const, replicasWanted: 1, regionBytes: MiB, epoch: 1, engine: null,
    replicas: [{ id: 'rep-a' as ReplicaId, nodeId: 'node-a' as NodeId, state: 'in-sync' as const, since: sampleDoc.createdAt }],
    contentSource: { kind: 'snapshot' as const, id: 'snap-1', name: 'before-upgrade', snapshotId: 'snap-1' },
    seedReplicas: ['rep-a' as ReplicaId],
  };
  t.deepEqual(parseVolumeDoc('volumes/copy', volumeDocToJson(doc)), doc);
  const json = volumeDocToJson({ ...doc, seedReplicas: ['rep-gone' as ReplicaId] });
  t.is(parseVolumeDoc('volumes/copy', json).seedReplicas, undefined);
  t.is(t.throws(() => parseVolumeDoc('volumes/copy', { ...(json as object), contentSource: { kind: 'disk' } }), { instanceOf: StorageError }).code, Code.DATA_LOSS);
});

interface Setup {
  store: EmbeddedStore;
  fxs: Map<NodeId, ReplicaFixture>;
  registries: Map<NodeId, NodeRegistry>;
  real: ReplicaControls;
}

async function setup(t: ExecutionContext, nodes = NODES): Promise<Setup> {
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const fxs = new Map<NodeId, ReplicaFixture>();
  const registries = new Map<NodeId, NodeRegistry>();
  for (const id of nodes) {
    const fx = await replicaFixture();
    t.teardown(() => fx.cleanup());
    fxs.set(id, fx);
    const registry = new NodeRegistry(store, { ttlMs: 60_000, log: silentLogger() });
    t.teardown(() => registry.close());
    registries.set(id, registry);
    await registry.register({ nodeId: id, name: id, peerAddress: '', labels: {}, capacity: { totalBytes: 1 << 30, freeBytes: 1 << 29 }, version: 'test' });
  }
  return { store, fxs, registries, real: { control: async (nodeId) => localControl(fxs.get(nodeId)!.manager) } };
}

function services(s: Setup, controls: ReplicaControls = s.real, replicas = 2): { snapshots: ClusterSnapshotService; volumes: VolumeLifecycle } {
  const snapshots = new ClusterSnapshotService({ nodeId: 'controller-0' as NodeId, store: s.store, controls, log: silentLogger() });
  const volumes = new VolumeLifecycle({
    nodeId: 'controller-0' as NodeId, clusterName: 'c', store: s.store, controls, election: undefined, defaultReplicas: replicas,
    capacity: () => clusterCapacity(s.store), log: silentLogger(), snapshots,
  });
  return { snapshots, volumes };
}

/** Writes `byte` over the first MiB of the replica (at the volume's epoch). */
async function writeReplica(fx: ReplicaFixture, volumeId: string, replicaId: string, epoch: number, byte: number): Promise<void> {
  const r = await fx.manager.open({ replicaId, volumeId });
  r.admitEpoch(epoch);
  const io = new LocalReplicaIo(r, epoch, 'x' as NodeId);
  await io.write(0, Buffer.alloc(MiB, byte), true);
  await io.close();
}

async function readReplica(fx: ReplicaFixture, volumeId: string, replicaId: string, epoch: number): Promise<Buffer> {
  const r = await fx.manager.open({ replicaId, volumeId });
  r.admitEpoch(epoch);
  const io = new LocalReplicaIo(r, epoch, 'x' as NodeId);
  const data = await io.read(0, MiB);
  await io.close();
  return data;
}

test('a volume nobody serves is snapshotted from its in-sync replicas; the same name again is the same snapshot, another source ALREADY_EXISTS, an unknown volume NOT_FOUND', async (t) => {
  const s = await setup(t);
  const { snapshots, volumes } = services(s);
  const vol = await volumes.create('db', 8 * MiB);
  await volumes.create('other', 4 * MiB);
  const snap = await snapshots.create({ name: 'before-upgrade', volume: 'db' });
  t.is(snap.state, 'ready');
  t.true(snap.readyToUse);
  t.is(snap.copiesWanted, 2);
  t.is(snap.sizeBytes, vol.sizeBytes);
  t.deepEqual(snap.copies.map((c) => c.nodeId).sort(), vol.replicas.map((r) => r.nodeName).sort());
  for (const c of snap.copies) {
    const held = await s.fxs.get(c.nodeId)!.manager.listSnapshotCopies();
    t.deepEqual(held.map((h) => h.snapshotId), [snap.id], `copy on ${c.nodeId}`);
  }
  t.is((await snapshots.create({ name: 'before-upgrade', volume: vol.id })).id, snap.id, 'by the volume id: the same snapshot');
  const exists = await t.throwsAsync(snapshots.create({ name: 'before-upgrade', volume: 'other' }), { instanceOf: StorageError });
  t.is(exists.code, Code.ALREADY_EXISTS);
  t.regex(exists.message, /"db".*"other"/);
  t.is(await codeOf(snapshots.create({ name: 'x', volume: 'nope' })), Code.NOT_FOUND);
  t.is(await codeOf(snapshots.create({ name: 'Bad Name', volume: 'db' })), Code.INVALID_ARGUMENT);
  t.deepEqual((await snapshots.list({ volume: 'db' })).map((v) => v.name), ['before-upgrade']);
  t.deepEqual(await snapshots.list({ volume: 'other' }), []);
  t.is((await snapshots.get(snap.id)).name, 'before-upgrade');

  // Deleting the volume keeps the snapshot and its copies.
  await volumes.delete('db');
  t.is((await snapshots.get('before-upgrade')).state, 'ready');
  for (const c of snap.copies) t.is((await s.fxs.get(c.nodeId)!.manager.listSnapshotCopies()).length, 1);
});

test('all copies or none: when one node cannot copy, the copies taken and the document are deleted and its error returned', async (t) => {
  const s = await setup(t);
  const failing: ReplicaControls = {
    async control(nodeId): Promise<ReplicaControl> {
      const real = localControl(s.fxs.get(nodeId)!.manager);
      if (nodeId !== 'node-b') return real;
      return { ...real, snapshotReplica: () => Promise.reject(new StorageError(Code.RESOURCE_EXHAUSTED, 'pool full')) };
    },
  };
  const { volumes } = services(s, s.real, 3);
  await volumes.create('db', 8 * MiB);
  const { snapshots } = services(s, failing);
  const err = await t.throwsAsync(snapshots.create({ name: 'snap', volume: 'db' }), { instanceOf: StorageError });
  t.is(err.code, Code.RESOURCE_EXHAUSTED);
  t.regex(err.message, /node-b/);
  t.is(await getSnapshotDoc(s.store, 'snap'), undefined);
  for (const fx of s.fxs.values()) t.deepEqual(await fx.manager.listSnapshotCopies(), []);
});

test('a replica that has seen a newer epoch (an engine started meanwhile) makes the snapshot ABORTED, with nothing left', async (t) => {
  const s = await setup(t);
  const { snapshots, volumes } = services(s);
  const vol = await volumes.create('db', 8 * MiB);
  const r = vol.replicas[1]!;
  (await s.fxs.get(r.nodeName as NodeId)!.manager.open({ replicaId: r.id, volumeId: vol.id })).admitEpoch(vol.epoch + 1);
  t.is(await codeOf(snapshots.create({ name: 'snap', volume: 'db' })), Code.ABORTED);
  t.is(await getSnapshotDoc(s.store, 'snap'), undefined);
  for (const fx of s.fxs.values()) t.deepEqual(await fx.manager.listSnapshotCopies(), []);
});

test('a served volume is snapshotted by its engine\'s node (SnapshotVolume with the deadline), and the copies it reports are recorded', async (t) => {
  const s = await setup(t);
  const { volumes } = services(s);
  const vol = await volumes.create('db', 8 * MiB);
  const doc = (await updateVolumeDoc(s.store, 'db', (d) => ({ ...d, epoch: d.epoch + 1, engine: { nodeId: 'node-b' as NodeId, epoch: d.epoch + 1, exported: true, startedAt: new Date().toISOString() } })))!.doc;
  const asked: { node: NodeId; volumeId: string; deadlineMs: number }[] = [];
  const routed: ReplicaControls = {
    async control(nodeId): Promise<ReplicaControl> {
      const real = localControl(s.fxs.get(nodeId)!.manager);
      return {
        ...real,
        snapshotVolume: async (volumeId, snapshotId, deadlineMs) => {
          asked.push({ node: nodeId, volumeId, deadlineMs });
          if (nodeId !== 'node-b') throw new StorageError(Code.FAILED_PRECONDITION, 'no engine here');
          const copies = [];
          for (const r of doc.replicas) {
            const c = await localControl(s.fxs.get(r.nodeId)!.manager).snapshotReplica({ replicaId: r.id, volumeId }, doc.epoch, snapshotId);
            copies.push({ nodeId: r.nodeId, replicaId: r.id, sizeBytes: c.sizeBytes });
          }
          return { copies, pauseUs: 850, epoch: doc.epoch };
        },
      };
    },
  };
  const { snapshots } = services(s, routed);
  const snap = await snapshots.create({ name: 'served', volume: 'db' });
  t.deepEqual(asked, [{ node: 'node-b' as NodeId, volumeId: vol.id, deadlineMs: 10_000 }]);
  t.is(snap.pauseUs, 850);
  t.deepEqual(snap.copies.map((c) => c.nodeId).sort(), doc.replicas.map((r) => r.nodeId).sort());
});

test('a delete with a copy\'s node down removes the others; the repair leader\'s collect finishes it once the node answers', async (t) => {
  const s = await setup(t);
  let bDown = true;
  const flaky: ReplicaControls = {
    async control(nodeId) {
      if (nodeId === 'node-b' && bDown) throw new StorageError(Code.UNAVAILABLE, 'node-b is down');
      return localControl(s.fxs.get(nodeId)!.manager);
    },
  };
  const { volumes } = services(s);
  const vol = await volumes.create('db', 8 * MiB);
  t.true(vol.replicas.some((r) => r.nodeName === 'node-b'));
  const snap = await services(s).snapshots.create({ name: 'snap', volume: 'db' });
  const { snapshots } = services(s, flaky);
  await snapshots.delete('snap');
  const left = (await getSnapshotDoc(s.store, 'snap'))!.doc;
  t.is(left.state, 'deleting');
  t.deepEqual(left.copies.map((c) => c.nodeId), ['node-b']);
  t.is(await codeOf(snapshots.get('snap')), Code.NOT_FOUND, 'a snapshot being deleted is not shown');
  t.deepEqual((await s.fxs.get('node-b' as NodeId)!.manager.listSnapshotCopies()).map((c) => c.snapshotId), [snap.id]);
  bDown = false;
  await snapshots.collect();
  t.is(await getSnapshotDoc(s.store, 'snap'), undefined);
  for (const fx of s.fxs.values()) t.deepEqual(await fx.manager.listSnapshotCopies(), []);
  await snapshots.delete('snap'); // none: not an error
});

test('placeRestore: copy nodes first, the rest empty; a seed on a copy node when the requisite nodes hold none; UNAVAILABLE when no copy node is up', (t) => {
  const node = (id: string, freeBytes = 100 * MiB, up = true, zone?: string) => ({ nodeId: id as NodeId, name: id, up, freeBytes, ...(zone ? { zone } : {}) });
  const nodes = [node('n1', 10 * MiB), node('n2'), node('n3', 500 * MiB), node('n4', 400 * MiB)];
  const copyNodes = ['n1', 'n2'] as NodeId[];
  const two = placeRestore({ replicas: 2, sizeBytes: 8 * MiB, nodes, copyNodes });
  t.deepEqual([...two.fromCopy].sort(), ['n1', 'n2'], 'both copy nodes, although others have more room');
  t.deepEqual(two.empty, []);
  const three = placeRestore({ replicas: 3, sizeBytes: 8 * MiB, nodes, copyNodes });
  t.deepEqual([...three.fromCopy].sort(), ['n1', 'n2']);
  t.deepEqual(three.empty, ['n3']);
  t.is(three.seed, undefined);
  const onlyN4 = placeRestore({ replicas: 1, sizeBytes: 8 * MiB, nodes, copyNodes, firstAmong: ['n4' as NodeId] });
  t.deepEqual(onlyN4.fromCopy, []);
  t.deepEqual(onlyN4.empty, ['n4']);
  t.is(onlyN4.seed, 'n2' as NodeId, 'the copy node with the most room seeds it');
  const down = nodes.map((n) => (copyNodes.includes(n.nodeId) ? { ...n, up: false } : n));
  t.is(t.throws(() => placeRestore({ replicas: 1, sizeBytes: 8 * MiB, nodes: down, copyNodes }), { instanceOf: StorageError }).code, Code.UNAVAILABLE);
});

test('restore: replicas on copy nodes are in sync with the snapshot\'s bytes, others are faulted for a full rebuild; a smaller size is OUT_OF_RANGE; same source again is the same volume, another ALREADY_EXISTS', async (t) => {
  const s = await setup(t);
  const { snapshots, volumes } = services(s, s.real, 2);
  const vol = await volumes.create('db', 8 * MiB);
  for (const r of vol.replicas) await writeReplica(s.fxs.get(r.nodeName as NodeId)!, vol.id, r.id, vol.epoch, 0x5a);
  const snap = await snapshots.create({ name: 'snap', volume: 'db' });
  for (const r of vol.replicas) await writeReplica(s.fxs.get(r.nodeName as NodeId)!, vol.id, r.id, vol.epoch, 0x11); // after the snapshot

  const small = await t.throwsAsync(volumes.create('tiny', 4 * MiB, { source: { snapshot: 'snap' } }), { instanceOf: StorageError });
  t.is(small.code, Code.OUT_OF_RANGE);
  t.regex(small.message, /4 MiB.*8 MiB/);
  t.is(await getVolumeDoc(s.store, 'tiny'), undefined);
  t.is(await codeOf(volumes.create('x', 0, { source: { snapshot: 'nope' } })), Code.NOT_FOUND);

  const restored = await volumes.create('restored', 0, { replicas: 3, source: { snapshot: 'snap' } });
  t.is(restored.sizeBytes, snap.sizeBytes);
  const doc = (await getVolumeDoc(s.store, 'restored'))!.doc;
  t.deepEqual(doc.contentSource, { kind: 'snapshot', id: snap.id, name: 'snap', snapshotId: snap.id });
  const copyNodes = new Set(snap.copies.map((c) => c.nodeId));
  for (const r of doc.replicas) {
    if (copyNodes.has(r.nodeId)) {
      t.is(r.state, 'in-sync', `replica on copy node ${r.nodeId}`);
      const bytes = await readReplica(s.fxs.get(r.nodeId)!, doc.id, r.id, doc.epoch);
      t.true(bytes.equals(Buffer.alloc(MiB, 0x5a)), `the snapshot's bytes on ${r.nodeId}`);
    } else {
      t.is(r.state, 'faulted', `replica on ${r.nodeId}`);
      t.true(r.fullRebuild);
    }
  }
  t.is(doc.replicas.filter((r) => r.state === 'in-sync').length, 2);
  t.is((await volumes.create('restored', 0, { source: { snapshot: snap.id } })).id, restored.id, 'the same source by id');
  t.is(await codeOf(volumes.create('restored', 0, { source: { volume: 'db' } })), Code.ALREADY_EXISTS);
  t.is(await codeOf(volumes.create('restored', 8 * MiB)), Code.ALREADY_EXISTS);

  // Deleting the snapshot leaves the restored replicas readable (thin/reflink children).
  await snapshots.delete('snap');
  const r0 = doc.replicas.find((r) => r.state === 'in-sync')!;
  t.true((await readReplica(s.fxs.get(r0.nodeId)!, doc.id, r0.id, doc.epoch)).equals(Buffer.alloc(MiB, 0x5a)));
});

test('clone: the new volume holds the source\'s bytes, the internal snapshot is gone afterwards', async (t) => {
  const s = await setup(t);
  const { snapshots, volumes } = services(s, s.real, 2);
  const vol = await volumes.create('db', 8 * MiB);
  for (const r of vol.replicas) await writeReplica(s.fxs.get(r.nodeName as NodeId)!, vol.id, r.id, vol.epoch, 0x77);
  const clone = await volumes.create('db-copy', 16 * MiB, { source: { volume: 'db' } });
  t.is(clone.sizeBytes, 16 * MiB);
  const doc = (await getVolumeDoc(s.store, 'db-copy'))!.doc;
  t.is(doc.contentSource?.kind, 'volume');
  t.is(doc.contentSource?.id, vol.id);
  for (const r of doc.replicas.filter((x) => x.state === 'in-sync')) {
    t.true((await readReplica(s.fxs.get(r.nodeId)!, doc.id, r.id, doc.epoch)).equals(Buffer.alloc(MiB, 0x77)), `clone replica on ${r.nodeId}`);
  }
  t.deepEqual(await snapshots.list({ includeInternal: true }), []);
  for (const fx of s.fxs.values()) t.deepEqual(await fx.manager.listSnapshotCopies(), []);
  t.is(await codeOf(volumes.create('c2', 0, { source: { volume: 'nope' } })), Code.NOT_FOUND);
});
