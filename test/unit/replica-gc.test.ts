/**
 * The orphan replica collector against a real replica manager (file pool) and the embedded
 * cluster store: only replicas no document lists, for the whole grace period, are deleted.
 */
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ReplicaCollector } from '../../src/cluster/replica-gc.js';
import type { ClusterStore } from '../../src/cluster/store/cluster-store.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { createVolumeDoc, updateVolumeDoc } from '../../src/cluster/volume-doc.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { replicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const GRACE = 60_000;

test('only replicas unlisted for the whole grace period are deleted; listed ones and a store outage delete nothing', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  let down = false;
  const flaky: ClusterStore = Object.assign(Object.create(store) as ClusterStore, {
    list: (prefix: string) => (down ? Promise.reject(new StorageError(Code.UNAVAILABLE, 'etcd is away')) : store.list(prefix)),
  });
  const since = new Date().toISOString();
  await createVolumeDoc(store, {
    id: 'vol-kept' as VolumeId, name: 'kept', sizeBytes: 4 * MiB, createdAt: since, state: 'ready', replicasWanted: 1, regionBytes: MiB, epoch: 1, engine: null,
    replicas: [{ id: 'rep-listed' as ReplicaId, nodeId: 'n' as NodeId, state: 'in-sync', since }],
  });
  for (const [replicaId, volumeId] of [['rep-listed', 'vol-kept'], ['rep-orphan', 'vol-gone'], ['rep-late', 'vol-kept']]) {
    await fx.manager.create({ replicaId: replicaId!, volumeId: volumeId! }, 4 * MiB, 1, true);
  }
  const gc = new ReplicaCollector({ store: flaky, manager: fx.manager, graceMs: GRACE, log: silentLogger() });
  const t0 = Date.now();
  t.deepEqual(await gc.pass(t0), [], 'first seen unlisted: kept');
  t.deepEqual(await gc.pass(t0 + GRACE - 1), [], 'not yet the whole grace period');
  // rep-late gets listed before the grace period ends (the repair loop's CAS came in).
  await updateVolumeDoc(store, 'kept', (d) => ({ ...d, replicas: [...d.replicas, { id: 'rep-late' as ReplicaId, nodeId: 'n' as NodeId, state: 'rebuilding', since }] }));
  down = true;
  await t.throwsAsync(gc.pass(t0 + GRACE + 1), { message: /etcd is away/ });
  t.deepEqual((await fx.manager.list()).map((r) => r.replicaId).sort(), ['rep-late', 'rep-listed', 'rep-orphan'], 'nothing deleted while the store is away');
  down = false;
  t.deepEqual(await gc.pass(t0 + GRACE + 1), ['rep-orphan' as ReplicaId]);
  t.deepEqual((await fx.manager.list()).map((r) => r.replicaId).sort(), ['rep-late', 'rep-listed']);
  t.deepEqual(await gc.pass(t0 + 10 * GRACE), [], 'listed replicas stay');
});

test('a replica no document lists but in use (a snapshot pull\'s temporary replica) is spared while requests reach it, deleted once idle for the grace period', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const grace = 300;
  const ref = { replicaId: 'rep-pull', volumeId: 'snapshot-pull-snap-1' };
  await fx.manager.create(ref, 4 * MiB, 1, true);
  const gc = new ReplicaCollector({ store, manager: fx.manager, graceMs: grace, log: silentLogger() });
  // Busy for four grace periods: every pass keeps it.
  const busyUntil = Date.now() + 4 * grace;
  let passes = 0;
  while (Date.now() < busyUntil) {
    await fx.manager.allocatedRanges(ref, 1, 0, 4 * MiB);
    t.deepEqual(await gc.pass(), [], `pass ${++passes} while in use`);
    await new Promise((r) => setTimeout(r, 50));
  }
  t.true(passes >= 8);
  // Idle: deleted once the grace period has passed with no request.
  const idleSince = Date.now();
  let deleted: ReplicaId[] = [];
  while (deleted.length === 0 && Date.now() - idleSince < 20 * grace) {
    await new Promise((r) => setTimeout(r, 50));
    deleted = await gc.pass();
  }
  t.deepEqual(deleted, ['rep-pull' as ReplicaId]);
  t.true(Date.now() - idleSince >= grace, 'not before the grace period');
  t.deepEqual(await fx.manager.list(), []);
});
