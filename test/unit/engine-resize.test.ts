/**
 * Online volume expansion in the engine (issue 10, ControllerExpandVolume): the replicas
 * grow first (ReplicaManager.resize), then the engine learns the new size from its volume
 * document (`applyDoc`). Writes past the old end are refused until then and accepted after;
 * a replica out of sync gets the new regions in its map and its rebuild copies them, even
 * when it was never grown itself (the rebuild grows it first).
 */
import test, { type ExecutionContext } from 'ava';
import { Code } from '../../src/common/errors.js';
import type { ReplicaId } from '../../src/common/ids.js';
import type { VolumeReplicaEntry } from '../../src/engine/engine-types.js';
import { RegionLocks, RegionMap } from '../../src/engine/region-map.js';
import type { VolumeEngine } from '../../src/engine/volume-engine.js';
import { MiB, SIZE, VOL, engineSetup, type EngineSetup } from '../helpers/engine-fixture.js';
import { codeOf, filled, replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const GROWN = 2 * SIZE + 3 * 4096; // not a whole number of regions: the last one is short

interface Rig { s: EngineSetup; fxs: ReplicaFixture[] }

async function rig(t: ExecutionContext, rf: number): Promise<Rig> {
  const fxs: ReplicaFixture[] = [];
  t.teardown(async () => {
    for (const fx of fxs) await fx.cleanup();
  });
  for (let i = 0; i < rf; i++) {
    const fx = await replicaFixture();
    fxs.push(fx);
    await fx.manager.create({ replicaId: `rep-${i}` as ReplicaId, volumeId: VOL }, SIZE, 1, true);
  }
  return { s: engineSetup(t, fxs.map((fx) => fx.manager), fxs[0]!.store.dirtyMaps()), fxs };
}

/** Waits (by event-loop turns, not by time) until `cond` holds. */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 200_000) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

const entries = (s: EngineSetup, states: VolumeReplicaEntry['state'][]): VolumeReplicaEntry[] =>
  s.ids.map((id, i) => ({ id, nodeId: s.nodes[i]!, state: states[i] ?? 'in-sync', since: new Date().toISOString() }));

/** What the replica itself holds at `offset` (read on its node, not through the engine). */
async function onReplica(fx: ReplicaFixture, id: ReplicaId, offset: number, length: number): Promise<Buffer> {
  const replica = await fx.manager.open({ replicaId: id, volumeId: VOL });
  return (await replica.openedDevice()).read(offset, length);
}

async function growReplicas(r: Rig, which: number[], sizeBytes: number): Promise<void> {
  for (const i of which) await r.fxs[i]!.manager.resize({ replicaId: r.s.ids[i]!, volumeId: VOL }, sizeBytes, 1);
}

const stateOf = (e: VolumeEngine, id: ReplicaId): string | undefined => e.replicaViews().find((v) => v.replicaId === id)?.state;

/** An rf=2 engine whose replica 1 failed a write to region 0 and stays away (its saved map: region 0). */
async function degraded(t: ExecutionContext, r: Rig, options: Parameters<EngineSetup['start']>[0] = {}): Promise<VolumeEngine> {
  r.s.connector.modes.set(r.s.ids[1]!, 'error');
  const e = await r.s.start(options);
  r.s.connector.down.add(r.s.ids[1]!);
  await e.write(0, filled(4096, 3));
  t.is(stateOf(e, r.s.ids[1]!), 'faulted');
  t.deepEqual(r.s.maps.regions(r.s.ids[1]!), [0]);
  return e;
}

/** Replica 1 answers again: the engine tries it now. */
function comeBack(r: Rig, e: VolumeEngine): void {
  r.s.connector.modes.delete(r.s.ids[1]!);
  r.s.connector.down.delete(r.s.ids[1]!);
  e.nodeReturned(r.s.nodes[1]!);
}

test('writes past the old end are refused until the engine learns the new size, accepted after, and land on every replica', async (t) => {
  const r = await rig(t, 2);
  const e = await r.s.start();
  const tail = GROWN - 4096;
  t.is(await codeOf(e.write(SIZE, filled(4096, 1))), Code.OUT_OF_RANGE, 'past the end before anything grew');
  await growReplicas(r, [0, 1], GROWN);
  t.is(await codeOf(e.write(SIZE, filled(4096, 1))), Code.OUT_OF_RANGE, 'replicas grew, the engine does not know yet');
  t.is(e.sizeBytes, SIZE);

  e.applyDoc({ id: VOL, epoch: 1, sizeBytes: GROWN, replicas: entries(r.s, ['in-sync', 'in-sync']) });
  t.is(e.sizeBytes, GROWN);
  await e.write(tail, filled(4096, 7));
  await e.write(SIZE - 4096, filled(8192, 8)); // across the old end
  await e.flush();
  t.deepEqual(await e.read(tail, 4096), filled(4096, 7));
  for (let i = 0; i < 2; i++) {
    t.deepEqual(await onReplica(r.fxs[i]!, r.s.ids[i]!, tail, 4096), filled(4096, 7), `replica ${i} holds the write at the new end`);
    t.deepEqual(await onReplica(r.fxs[i]!, r.s.ids[i]!, SIZE - 4096, 8192), filled(8192, 8), `replica ${i} holds the write across the old end`);
  }
  t.deepEqual(await e.read(SIZE + MiB, 4096), filled(4096, 0), 'the new area reads as zeros');
  t.is(await codeOf(e.write(GROWN, filled(4096, 1))), Code.OUT_OF_RANGE, 'past the new end');
  t.deepEqual(r.s.control.faulted, [], 'no replica was faulted');
});

test('a smaller or equal size in the document changes nothing', async (t) => {
  const r = await rig(t, 1);
  const e = await r.s.start();
  t.false(e.resize(SIZE));
  e.applyDoc({ id: VOL, epoch: 1, sizeBytes: SIZE / 2, replicas: entries(r.s, ['in-sync']) });
  t.is(e.sizeBytes, SIZE);
  t.is(await codeOf(e.write(SIZE, filled(4096, 1))), Code.OUT_OF_RANGE);
});

test('a degraded replica gets the new regions in its saved map and is rebuilt over the new area', async (t) => {
  const r = await rig(t, 2);
  const e = await degraded(t, r);

  await growReplicas(r, [0, 1], GROWN);
  e.applyDoc({ id: VOL, epoch: 1, sizeBytes: GROWN, replicas: entries(r.s, ['in-sync', 'faulted']) });
  const regions = Math.ceil(GROWN / MiB);
  // The saved map is the grown one: old region 0 and every new region (the old last one reaches further now).
  const saved = r.fxs[0]!.store.dirtyMaps().load(VOL, r.s.ids[1]!);
  t.truthy(saved);
  t.is(saved!.bits.length, Math.ceil(regions / 8));
  t.is(e.replicaViews().find((v) => v.replicaId === r.s.ids[1])!.dirtyBytes, MiB + (GROWN - (SIZE - MiB)));

  await e.write(GROWN - 8192, filled(8192, 9));
  comeBack(r, e);
  await until('replica 1 is in sync again', () => stateOf(e, r.s.ids[1]!) === 'in-sync');
  t.deepEqual(await onReplica(r.fxs[1]!, r.s.ids[1]!, GROWN - 8192, 8192), filled(8192, 9), 'the rebuild copied the new area');
  t.deepEqual(await onReplica(r.fxs[1]!, r.s.ids[1]!, 0, 4096), filled(4096, 3));
});

test('a replica left at the old size (never grown) is grown by its rebuild, then copied', async (t) => {
  const r = await rig(t, 2);
  const e = await degraded(t, r);
  await growReplicas(r, [0], GROWN); // replica 1 stays at SIZE, as one made by a call racing with the expansion
  e.applyDoc({ id: VOL, epoch: 1, sizeBytes: GROWN, replicas: entries(r.s, ['in-sync', 'faulted']) });
  await e.write(GROWN - 4096, filled(4096, 4));
  t.is((await r.fxs[1]!.manager.status({ replicaId: r.s.ids[1]!, volumeId: VOL })).sizeBytes, SIZE);

  comeBack(r, e);
  await until('replica 1 is in sync again', () => stateOf(e, r.s.ids[1]!) === 'in-sync');
  t.is((await r.fxs[1]!.manager.status({ replicaId: r.s.ids[1]!, volumeId: VOL })).sizeBytes, GROWN);
  t.deepEqual(await onReplica(r.fxs[1]!, r.s.ids[1]!, GROWN - 4096, 4096), filled(4096, 4));
});

test('a map saved before the volume grew is loaded grown, with the new area marked', async (t) => {
  const r = await rig(t, 2);
  const first = await degraded(t, r);
  await first.close();
  await growReplicas(r, [0, 1], GROWN);
  // A later engine starts at the new size; the map on this node is still the old, shorter one.
  const e = await r.s.start({ sizeBytes: GROWN }, ['in-sync', 'faulted']);
  const dirty = e.replicaViews().find((v) => v.replicaId === r.s.ids[1])!.dirtyBytes;
  t.true(dirty >= MiB + (GROWN - SIZE), `region 0 and the new area are dirty (${dirty} bytes)`);
  t.true(dirty < GROWN, 'the old area the replica did not miss is not');
});

test('region maps and locks grow keeping their regions; new regions set only when asked', async (t) => {
  const map = new RegionMap(10 * MiB + 4096, MiB);
  map.set(3);
  map.grow(20 * MiB, true);
  t.is(map.regionCount, 20);
  const set: number[] = [];
  for (let r = map.nextSet(0); r >= 0; r = map.nextSet(r + 1)) set.push(r);
  t.deepEqual(set, [3, ...Array.from({ length: 10 }, (_, i) => 10 + i)], 'the old short last region (10) counts as new');
  const clean = new RegionMap(MiB, MiB);
  clean.grow(3 * MiB, false);
  t.is(clean.count(), 0);
  t.is(clean.regionLength(2), MiB);
  t.throws(() => clean.grow(MiB, false), { message: /cannot shrink/ });

  const locks = new RegionLocks(2 * MiB, MiB);
  const held = await locks.shared(0, 4096);
  t.throws(() => locks.tryShared(2 * MiB, 4096), { message: /outside the volume/ });
  locks.grow(4 * MiB);
  const waiting = locks.exclusive(0, 4); // waits for the hold taken before the growth
  const late = locks.tryShared(3 * MiB, 4096);
  t.is(late, undefined, 'the exclusive waiter covers the new regions too');
  held();
  (await waiting)();
  t.truthy(locks.tryShared(3 * MiB, 4096));
});
