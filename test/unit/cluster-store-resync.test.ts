/**
 * The embedded store behaves as etcd does when a watch asks for history it no longer
 * keeps: with onResync, the watcher gets the prefix as it is now and events from there.
 */
import test from 'ava';
import { silentLogger } from '../../src/common/log.js';
import type { ListResult } from '../../src/cluster/store/cluster-store.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { collectEvents } from '../helpers/cluster-store-conformance.js';

test('embedded: a watch from before the retained history lists again and goes on from there', async (t) => {
  const s = EmbeddedStore.open({ path: ':memory:', cluster: 'c', historyRevisions: 50, log: silentLogger() });
  t.teardown(() => s.close());
  await s.txn({ guards: [], ops: [{ type: 'put', key: 'k/gone', value: 0 }] });
  for (let i = 0; i < 200; i++) await s.txn({ guards: [], ops: [{ type: 'put', key: 'k/a', value: i }] });
  await s.txn({ guards: [], ops: [{ type: 'delete', key: 'k/gone' }] });
  const events = collectEvents();
  let resolveResync: (s: ListResult) => void = () => undefined;
  const resynced = new Promise<ListResult>((resolve) => { resolveResync = resolve; });
  let ended: unknown;
  await s.watch('k/', { onEvents: events.onEvents, onResync: (snap) => resolveResync(snap), onError: (err) => { ended = err; } }, { fromRevision: 2 });
  const snapshot = await resynced;
  t.deepEqual(snapshot.items.map((kv) => [kv.key, kv.value]), [['k/a', 199]]);
  t.is(events.events.length, 0, 'no event before the snapshot');
  const after = await s.txn({ guards: [], ops: [{ type: 'put', key: 'k/b', value: 1 }] });
  await events.until((all) => all.length > 0);
  t.deepEqual(events.events.map((e) => e.modRevision), [after.revision]);
  t.is(ended, undefined);
});
