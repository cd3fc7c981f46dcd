/**
 * The engine's fault path when the layers under it misbehave (issue 9, items 2-4 and 8):
 * a dirty-map save that throws, a fault whose record in the cluster store is pending while
 * a flush or a second write to the same region comes in, and errors from reconcile and
 * applyDoc that must not escape unhandled.
 */
import test, { type ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { ReplicaId } from '../../src/common/ids.js';
import type { ReplicaControl } from '../../src/engine/engine-types.js';
import type { VolumeEngine } from '../../src/engine/volume-engine.js';
import { MiB, SIZE, VOL, engineSetup, stillPending, type EngineSetup } from '../helpers/engine-fixture.js';
import { filled, replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

async function setup(t: ExecutionContext, rf: number): Promise<EngineSetup> {
  const fxs: ReplicaFixture[] = [];
  t.teardown(async () => {
    for (const fx of fxs) await fx.cleanup();
  });
  for (let i = 0; i < rf; i++) {
    const fx = await replicaFixture();
    fxs.push(fx);
    await fx.manager.create({ replicaId: `rep-${i}` as ReplicaId, volumeId: VOL }, SIZE, 1, true);
  }
  return engineSetup(t, fxs.map((fx) => fx.manager), fxs[0]!.store.dirtyMaps());
}

/** Waits (by event-loop turns, not by time) until `cond` holds. */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 100_000) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

const stateOf = (e: VolumeEngine, id: ReplicaId): string | undefined => e.replicaViews().find((v) => v.replicaId === id)?.state;

/** An rf=3 engine whose replica 2 has failed and is recorded faulted (its map saved). */
async function withFaultedReplica(t: ExecutionContext, reconnectIntervalMs = 60_000): Promise<{ s: EngineSetup; e: VolumeEngine }> {
  const s = await setup(t, 3);
  s.connector.modes.set(s.ids[2]!, 'error');
  const e = await s.start({ reconnectIntervalMs });
  s.connector.down.add(s.ids[2]!); // once failed, it does not come back by itself
  await e.write(0, filled(4096, 1));
  t.is(stateOf(e, s.ids[2]!), 'faulted');
  t.is(s.control.recorded, 1);
  return { s, e };
}

test('item 2: a dirty-map save that throws once does not lose the fault; the write waits for the fault, recorded with fullRebuild', async (t) => {
  const s = await setup(t, 3);
  s.connector.modes.set(s.ids[2]!, 'error');
  const e = await s.start({ reconnectIntervalMs: 10 });
  s.connector.down.add(s.ids[2]!);
  s.maps.failures = 1; // the save that goes with the fault throws (SQLITE_FULL)
  let seen: { recorded: number; fullRebuild: ReplicaId[][] } | undefined;
  await e.write(3 * MiB, filled(4096, 3)).then(() => (seen = { recorded: s.control.recorded, fullRebuild: s.control.fullRebuild }));
  t.deepEqual(seen, { recorded: 1, fullRebuild: [[s.ids[2]!]] }, 'acknowledged only after the fault and the flag were recorded');
  t.deepEqual(s.control.faulted, [[s.ids[2]]]);
  // Later writes the replica misses are saved as usual, with what the failed save missed.
  await e.write(7 * MiB, filled(4096, 7));
  t.deepEqual(s.maps.regions(s.ids[2]!), [3, 7]);
  t.is(s.control.recorded, 1, 'the flag, once recorded, is not asked for again');
});

test('item 2: while the map cannot be saved, the write is acknowledged once the fault with fullRebuild is recorded; the save goes on in the background', async (t) => {
  const s = await setup(t, 3);
  s.connector.modes.set(s.ids[2]!, 'error');
  const e = await s.start({ reconnectIntervalMs: 10 });
  s.connector.down.add(s.ids[2]!);
  s.maps.failures = Number.POSITIVE_INFINITY; // the node store's disk is full
  s.control.hold(); // the cluster store does not answer yet
  const w = e.write(9 * MiB, filled(4096, 9)); // fails on replica 2
  await until('the fault was sent to the cluster store', () => s.control.faulted.length === 1);
  t.true(await stillPending(w), 'not acknowledged before the flag is recorded');
  s.control.release();
  await w;
  t.deepEqual(s.control.fullRebuild, [[s.ids[2]!]]);
  t.deepEqual(s.maps.regions(s.ids[2]!), [], 'acknowledged while the map is not saved');
  s.maps.failures = 0; // space returns
  while (s.maps.regions(s.ids[2]!).length === 0) await new Promise((r) => setTimeout(r, 5)); // the retry runs every 10 ms
  t.deepEqual(s.maps.regions(s.ids[2]!), [9]);
});

test('item 3: a flush waits for the fault a concurrent write has just started', async (t) => {
  const s = await setup(t, 3);
  const e = await s.start();
  await e.write(0, filled(4096, 1)); // acknowledged on every replica, not flushed
  s.control.hold(); // the cluster store does not answer yet
  s.connector.ios.get(s.ids[2]!)!.mode = 'error';
  const w = e.write(MiB, filled(4096, 2)); // fails on replica 2, which leaves the I/O path
  await until('markFaulted was called', () => s.control.faulted.length === 1);
  const flushed = [0, 1].map((i) => s.connector.ios.get(s.ids[i]!)!.flushes);
  const f = e.flush();
  await until('both remaining replicas flushed', () => [0, 1].every((i) => s.connector.ios.get(s.ids[i]!)!.flushes > flushed[i]!));
  t.true(await stillPending(f), 'the flush is not acknowledged while replica 2 (holding unflushed writes) is not recorded faulted');
  s.control.release();
  await Promise.all([w, f]);
  t.is(s.control.recorded, 1);
});

test('item 4: a second write to a region already marked waits for the save of that mark', async (t) => {
  const { s, e } = await withFaultedReplica(t);
  const savesBefore = s.maps.saves;
  const acked: number[][] = [];
  const a = e.write(5 * MiB, filled(4096, 5)).then(() => acked.push(s.maps.regions(s.ids[2]!)));
  const b = e.write(5 * MiB + 8192, filled(4096, 6)).then(() => acked.push(s.maps.regions(s.ids[2]!)));
  await Promise.all([a, b]);
  t.deepEqual(acked, [[0, 5], [0, 5]], 'each write was acknowledged after region 5 was saved');
  t.is(s.maps.saves, savesBefore + 1, 'one save for both');
});

test('item 8: a replica that fails during reconcile, with the fault refused (fenced), leaves no unhandled rejection', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));
  const s = await setup(t, 3);
  const real = await s.connector.control(s.nodes[2]!);
  const broken: ReplicaControl = { ...real, checksumRange: () => Promise.reject(new StorageError(Code.UNAVAILABLE, 'node-2 went away')) };
  s.connector.controls.set(s.nodes[2]!, broken);
  const e = await s.start();
  s.control.refusal = new StorageError(Code.FAILED_PRECONDITION, 'fenced', { details: { reason: 'STALE_EPOCH', newestEpoch: 2 } });
  await e.reconcile();
  t.is(stateOf(e, s.ids[2]!), 'faulted');
  await until('the engine is fenced', () => e.fenced);
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  t.deepEqual(unhandled, []);
});

test('item 8: applyDoc finishes its work when the map save of an added replica (and the delete of a removed one) throws; the save is retried', async (t) => {
  const s = await setup(t, 3);
  const e = await s.start({ reconnectIntervalMs: 10 });
  const added = 'rep-3' as ReplicaId;
  s.connector.down.add(added);
  s.maps.failures = 1;
  s.maps.deleteFailures = 1; // removing replica 2's map fails too
  const doc = {
    id: VOL, name: 'data', epoch: 1,
    replicas: [
      { id: s.ids[0]!, nodeId: s.nodes[0]!, state: 'in-sync', since: new Date().toISOString() },
      { id: s.ids[1]!, nodeId: s.nodes[1]!, state: 'in-sync', since: new Date().toISOString() },
      { id: added, nodeId: 'node-3', state: 'faulted', since: new Date().toISOString() },
    ],
  } as unknown as Parameters<VolumeEngine['applyDoc']>[0];
  t.notThrows(() => e.applyDoc(doc));
  t.deepEqual(e.replicaViews().map((v) => v.replicaId), [s.ids[0], s.ids[1], added], 'replica 2 removed, replica 3 added');
  await until('the added replica\'s map was saved', () => s.maps.regions(added).length === SIZE / MiB);
  t.is(s.maps.regions(added).length, SIZE / MiB, 'every region of the added replica is in its saved map (it has missed them all)');
});
