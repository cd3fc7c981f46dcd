import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { openClusterStore } from '../../src/cluster/store/open-cluster-store.js';
import { clusterStoreConformance, collectEvents, expectCode, uniqueCluster } from '../helpers/cluster-store-conformance.js';

const log = silentLogger();

function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-cluster-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

clusterStoreConformance(test, {
  open: async () => EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), leaseCheckIntervalMs: 50, log }),
  shortTtlMs: 2000, // a renewal late by over a third of this fails the "renewed lease stays" case; CI machines are busy
});

test('embedded: keys, revisions and leases survive a reopen; the file is refused to another cluster', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const path = join(dir, 'cluster.db');
  const a = EmbeddedStore.open({ path, cluster: 'one', log });
  const lease = await a.grantLease(60_000);
  const r = await a.txn({ guards: [], ops: [{ type: 'put', key: 'k', value: { x: 1 } }, { type: 'put', key: 'l', value: 2, leaseId: lease.id }] });
  await a.close();

  const b = EmbeddedStore.open({ path, cluster: 'one', log });
  t.teardown(() => b.close());
  t.deepEqual(await b.get('k'), { key: 'k', value: { x: 1 }, createRevision: r.revision, modRevision: r.revision, version: 1 });
  t.is(await b.keepAliveLease(lease.id), 60_000);
  t.is((await b.list('')).revision, r.revision);
  const next = await b.txn({ guards: [], ops: [{ type: 'delete', key: 'k' }] });
  t.is(next.revision, r.revision + 1);
  t.throws(() => EmbeddedStore.open({ path, cluster: 'two', log }), { message: /belongs to cluster "one"/ });
});

test('embedded: a lease that expired while the store was closed is gone after reopening', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  let now = 1_000_000;
  const path = join(dir, 'cluster.db');
  const a = EmbeddedStore.open({ path, cluster: 'c', log, nowMs: () => now });
  const lease = await a.grantLease(5000);
  await a.txn({ guards: [], ops: [{ type: 'put', key: 'alive', value: 1, leaseId: lease.id }] });
  await a.close();
  now += 6000;
  const b = EmbeddedStore.open({ path, cluster: 'c', log, nowMs: () => now, leaseCheckIntervalMs: 10 });
  t.teardown(() => b.close());
  await expectCode(t, b.keepAliveLease(lease.id), Code.NOT_FOUND);
  t.is(await b.get('alive'), undefined);
});

test('embedded: a watch from before the retained history is OUT_OF_RANGE', async (t) => {
  const s = EmbeddedStore.open({ path: ':memory:', cluster: 'c', historyRevisions: 50, log });
  t.teardown(() => s.close());
  for (let i = 0; i < 200; i++) await s.txn({ guards: [], ops: [{ type: 'put', key: 'k', value: i }] });
  const err = await expectCode(t, s.watch('', { onEvents: () => undefined }, { fromRevision: 2 }), Code.OUT_OF_RANGE);
  t.regex(err.message, /list again/);
  const w = collectEvents();
  await s.watch('', { onEvents: w.onEvents }, { fromRevision: 190 });
  await w.until((all) => all.length === 12);
  t.deepEqual(w.events.map((e) => e.value), Array.from({ length: 12 }, (_, i) => 188 + i));
});

test('openClusterStore picks the embedded store without etcd endpoints, at <data-dir>/cluster.db', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const s = openClusterStore({ cluster: 'c', etcdEndpoints: [], dataDir: dir, log });
  t.teardown(() => s.close());
  t.is(s.kind, 'embedded');
  await s.txn({ guards: [], ops: [{ type: 'put', key: 'k', value: 1 }] });
  await s.close();
  const again = EmbeddedStore.open({ path: join(dir, 'cluster.db'), cluster: 'c', log });
  t.teardown(() => again.close());
  t.like(await again.get('k'), { value: 1 });
});
