/**
 * A dirty-region map the node store cannot save (issue 9, item 2 follow-up): the safety
 * comes from the cluster store. The engine records `fullRebuild` on the replica's entry
 * (with its fault, or in a CAS of its own for a replica already faulted), and from then on
 * the writes the replica missed are acknowledged without the local save. An engine started
 * later that sees the flag ignores the node-local map and rebuilds the replica in full; the
 * in-sync CAS clears the flag.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import type { NodeId, ReplicaId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { DocEngineControl } from '../../src/cluster/engine-control.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { createVolumeDoc, getVolumeDoc, type VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { EngineControl } from '../../src/engine/engine-types.js';
import { RegionMap } from '../../src/engine/region-map.js';
import type { VolumeEngine } from '../../src/engine/volume-engine.js';
import type { Replica } from '../../src/replica/replica.js';
import { MiB, SIZE, VOL, engineSetup, stillPending, type EngineSetup } from '../helpers/engine-fixture.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { filled, replicaFixture, runBatch, type ReplicaFixture } from '../helpers/replica-fixture.js';

/** Polls for an event (never to prove that something did not happen); the deadline only fails a stuck test. */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 60_000; !cond();) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

interface Rig {
  s: EngineSetup;
  fxs: ReplicaFixture[];
  /** Replica entries as the volume document holds them. */
  entries(): Promise<VolumeReplicaEntry[]>;
  /** The document's control, behind a gate: while held, no CAS reaches the store. */
  control: EngineControl & { calls: number; hold(): void; release(): void };
}

/** rf=3 over real replicas; the volume document in an embedded cluster store. */
async function rig(t: ExecutionContext, replicas?: (ids: ReplicaId[], nodes: NodeId[], since: string) => VolumeReplicaEntry[]): Promise<Rig> {
  const fxs: ReplicaFixture[] = [];
  t.teardown(async () => {
    for (const fx of fxs) await fx.cleanup();
  });
  for (let i = 0; i < 3; i++) {
    const fx = await replicaFixture();
    fxs.push(fx);
    await fx.manager.create({ replicaId: `rep-${i}` as ReplicaId, volumeId: VOL }, SIZE, 1, true);
  }
  const s = engineSetup(t, fxs.map((fx) => fx.manager), fxs[0]!.store.dirtyMaps());
  const cluster = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => cluster.close());
  const since = new Date().toISOString();
  await createVolumeDoc(cluster, {
    id: VOL, name: 'data', sizeBytes: SIZE, createdAt: since, state: 'ready', replicasWanted: 3, regionBytes: MiB, epoch: 1,
    engine: { nodeId: s.nodes[0]!, epoch: 1, exported: true, startedAt: since },
    replicas: replicas?.(s.ids, s.nodes, since) ?? s.ids.map((id, i) => ({ id, nodeId: s.nodes[i]!, state: 'in-sync' as const, since })),
  });
  const doc = new DocEngineControl(cluster, 'data', 1, silentLogger());
  t.teardown(() => doc.close());
  let gate: Promise<void> | undefined;
  let open = (): void => undefined;
  const control = {
    calls: 0,
    hold(): void {
      gate = new Promise((r) => (open = r));
    },
    release(): void {
      open();
      gate = undefined;
    },
    async markFaulted(ids: readonly ReplicaId[], reason: string, fullRebuild?: readonly ReplicaId[]): Promise<void> {
      control.calls++;
      await gate;
      await doc.markFaulted(ids, reason, fullRebuild);
    },
    markRebuilding: (id: ReplicaId) => doc.markRebuilding(id),
    markInSync: (id: ReplicaId) => doc.markInSync(id),
  };
  return { s, fxs, control, entries: async () => (await getVolumeDoc(cluster, 'data'))!.doc.replicas };
}

const stateOf = (e: VolumeEngine, id: ReplicaId): string | undefined => e.replicaViews().find((v) => v.replicaId === id)?.state;

test('the map of a replica faulted now cannot be saved: the missed write is acknowledged once the fault with fullRebuild is in the cluster store, not before', async (t) => {
  const { s, control, entries } = await rig(t);
  s.connector.modes.set(s.ids[2]!, 'error');
  const e = await s.start({ reconnectIntervalMs: 10, control });
  s.connector.down.add(s.ids[2]!);
  s.maps.failures = Number.POSITIVE_INFINITY; // the node store's disk is full
  control.hold(); // the cluster store does not answer yet
  const w = e.write(9 * MiB, filled(4096, 9)); // fails on replica 2
  await until('markFaulted was called', () => control.calls === 1);
  t.true(await stillPending(w), 'not acknowledged while the flag is not in the cluster store');
  t.like((await entries())[2], { state: 'in-sync' });
  control.release();
  await w;
  const entry = (await entries())[2]!;
  t.like(entry, { state: 'faulted', fullRebuild: true });
  t.deepEqual(s.maps.regions(s.ids[2]!), [], 'acknowledged without the local save');
  // Later missed writes do not wait for the disk either, and ask the store nothing more.
  await e.write(11 * MiB, filled(4096, 11));
  t.is(control.calls, 1);
  // Space returns: the map is saved in the background, complete.
  s.maps.failures = 0;
  await until('the map was saved', () => s.maps.regions(s.ids[2]!).length === 2);
  t.deepEqual(s.maps.regions(s.ids[2]!), [9, 11]);
  t.is(stateOf(e, s.ids[2]!), 'faulted');
});

test('a replica already faulted whose map cannot be saved: markFaulted sets fullRebuild on it, and the missed write waits for that CAS', async (t) => {
  const { s, control, entries } = await rig(t);
  s.connector.modes.set(s.ids[2]!, 'error');
  const e = await s.start({ reconnectIntervalMs: 10, control });
  s.connector.down.add(s.ids[2]!);
  await e.write(0, filled(4096, 1)); // faults replica 2; its map is saved
  const faulted = (await entries())[2]!;
  t.like(faulted, { state: 'faulted' });
  t.is(faulted.fullRebuild, undefined);
  t.deepEqual(s.maps.regions(s.ids[2]!), [0]);
  s.maps.failures = Number.POSITIVE_INFINITY; // now the disk fills
  control.hold();
  const w = e.write(5 * MiB, filled(4096, 5));
  await until('markFaulted was called again', () => control.calls === 2);
  t.true(await stillPending(w), 'not acknowledged while the flag is not in the cluster store');
  control.release();
  await w;
  const flagged = (await entries())[2]!;
  t.deepEqual(flagged, { ...faulted, fullRebuild: true }, 'still faulted, since and reason kept, flag set');
});

/** Reads `length` bytes at `offset` straight from a replica, a region at a time. */
async function readReplica(replica: Replica, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = offset; at < offset + length; at += MiB) {
    const [r] = await runBatch(replica, replica.epoch, [{ seq: 1, op: 'read', offset: at, lengthBytes: Math.min(MiB, offset + length - at) }]);
    if (r!.error) throw r!.error;
    parts.push(r!.data!);
  }
  return Buffer.concat(parts);
}

async function writeReplica(replica: Replica, offset: number, data: Buffer): Promise<void> {
  const [r] = await runBatch(replica, replica.epoch, [{ seq: 1, op: 'write', offset, lengthBytes: data.length, data }]);
  if (r!.error) throw r!.error;
}

test('an engine started on a document that says fullRebuild ignores the older node-local map and rebuilds the replica in full; the in-sync CAS clears the flag', async (t) => {
  const { s, fxs, control, entries } = await rig(t, (ids, nodes, since) => ids.map((id, i) => (i === 2
    ? { id, nodeId: nodes[i]!, state: 'faulted' as const, since, reason: 'ENOSPC', fullRebuild: true }
    : { id, nodeId: nodes[i]!, state: 'in-sync' as const, since })));
  // What the previous engine acknowledged while replica 2 was out: regions 3 and 7 on the
  // in-sync replicas. Its saved map is older and lacks region 7.
  const replicas = await Promise.all(fxs.map((fx, i) => fx.manager.open({ replicaId: s.ids[i]!, volumeId: VOL })));
  const w3 = randomBytes(64 << 10);
  const w7 = randomBytes(64 << 10);
  for (const r of replicas.slice(0, 2)) {
    await writeReplica(r, 3 * MiB, w3);
    await writeReplica(r, 7 * MiB + 4096, w7);
  }
  const older = new RegionMap(SIZE, MiB);
  older.set(3);
  s.maps.inner.save(VOL, s.ids[2]!, MiB, older.toBuffer());
  const e = await s.start({
    reconnectIntervalMs: 10, control,
    replicas: (await entries()).map((r) => ({ ...r })),
  });
  await until('replica 2 is in sync again', () => stateOf(e, s.ids[2]!) === 'in-sync');
  const source = await readReplica(replicas[0]!, 0, SIZE);
  const rebuilt = await readReplica(replicas[2]!, 0, SIZE);
  t.true(rebuilt.subarray(7 * MiB, 8 * MiB).equals(source.subarray(7 * MiB, 8 * MiB)), 'region 7, which the old map lacked, was copied');
  t.true(rebuilt.equals(source), 'the rebuilt replica equals the source everywhere');
  const entry = (await entries())[2]!;
  t.is(entry.state, 'in-sync');
  t.false('fullRebuild' in entry, 'the in-sync CAS wrote the entry without the flag');
  t.false('reason' in entry);
});

test('an engine that starts while the node store cannot save: an unreachable in-sync replica is faulted with fullRebuild, and the engine starts', async (t) => {
  const { s, control, entries } = await rig(t);
  s.connector.down.add(s.ids[2]!);
  s.maps.failures = Number.POSITIVE_INFINITY;
  const e = await s.start({ reconnectIntervalMs: 10, control });
  t.like((await entries())[2], { state: 'faulted', fullRebuild: true });
  await e.write(0, filled(4096, 1)); // missed by replica 2, acknowledged without the local save
  t.deepEqual(s.maps.regions(s.ids[2]!), []);
});
