/**
 * Watches across an etcd compaction: a watch that needs history etcd has compacted lists
 * the prefix again (onResync, the state at one revision) and goes on from there, instead
 * of ending. Real etcd, real compaction; the connection cut is a TCP proxy dropping it.
 */
import anyTest, { type TestFn } from 'ava';
import { Etcd3 } from 'etcd3';
import { silentLogger } from '../../src/common/log.js';
import type { JsonValue, ListResult } from '../../src/cluster/store/cluster-store.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { collectEvents, uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { etcdProxy } from '../helpers/etcd-proxy.js';

const test = anyTest as TestFn;
const log = silentLogger();
const missing = await etcdMissingReason();
let etcd: EtcdProcess | undefined;

/** Resyncs as they come, and a promise for the next one. */
function collectResyncs(): { snapshots: ListResult[]; onResync: (s: ListResult) => void; next: () => Promise<ListResult> } {
  const snapshots: ListResult[] = [];
  const waiting: ((s: ListResult) => void)[] = [];
  return {
    snapshots,
    onResync: (s) => {
      snapshots.push(s);
      waiting.shift()?.(s);
    },
    next: () => new Promise((resolve) => waiting.push(resolve)),
  };
}

const state = (s: ListResult): Record<string, JsonValue> => Object.fromEntries(s.items.map((kv) => [kv.key, kv.value]));

if (prerequisitesMet('etcd watch resync tests', missing)) {
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });

  test.serial('a watch from a compacted revision lists again and goes on from there', async (t) => {
    const s = new EtcdStore({ endpoints: [etcd!.endpoint], cluster: uniqueCluster(), callTimeoutMs: 3000, log });
    t.teardown(() => s.close());
    const first = await s.txn({ guards: [], ops: [{ type: 'put', key: 'w/a', value: 1 }, { type: 'put', key: 'w/gone', value: 0 }] });
    await s.txn({ guards: [], ops: [{ type: 'put', key: 'w/a', value: 2 }, { type: 'delete', key: 'w/gone' }] });
    const last = await s.txn({ guards: [], ops: [{ type: 'put', key: 'w/b', value: 3 }] });
    const raw = new Etcd3({ hosts: etcd!.endpoint });
    t.teardown(() => raw.close());
    await raw.kv.compact({ revision: last.revision });
    const events = collectEvents();
    const resyncs = collectResyncs();
    const resynced = resyncs.next();
    let ended: unknown;
    await s.watch('w/', { onEvents: events.onEvents, onResync: resyncs.onResync, onError: (err) => { ended = err; } }, { fromRevision: first.revision });
    const snapshot = await resynced;
    t.deepEqual(state(snapshot), { 'w/a': 2, 'w/b': 3 }, 'the current state, without the deleted key');
    t.true(snapshot.revision >= last.revision);
    const after = await s.txn({ guards: [], ops: [{ type: 'put', key: 'w/c', value: 4 }] });
    await events.until((all) => all.some((e) => e.modRevision === after.revision));
    t.true(events.events.every((e) => e.modRevision > snapshot.revision), 'events continue after the snapshot, none from the compacted history');
    t.is(ended, undefined, 'the watch did not end');
  });

  test.serial('a live watch whose connection is away while etcd compacts resumes with the current state', async (t) => {
    const proxy = await etcdProxy(etcd!.endpoint);
    t.teardown(() => proxy.close());
    const cluster = uniqueCluster();
    const s = new EtcdStore({ endpoints: [proxy.endpoint], cluster, callTimeoutMs: 3000, log });
    t.teardown(() => s.close());
    const direct = new EtcdStore({ endpoints: [etcd!.endpoint], cluster, callTimeoutMs: 3000, log });
    t.teardown(() => direct.close());
    const raw = new Etcd3({ hosts: etcd!.endpoint });
    t.teardown(() => raw.close());

    const events = collectEvents();
    const resyncs = collectResyncs();
    let ended: unknown;
    await s.watch('v/', { onEvents: events.onEvents, onResync: resyncs.onResync, onError: (err) => { ended = err; } });
    const before = await direct.txn({ guards: [], ops: [{ type: 'put', key: 'v/x', value: 'old' }, { type: 'put', key: 'v/y', value: 'old' }] });
    await events.until((all) => all.some((e) => e.modRevision === before.revision));

    proxy.cut();
    // While the watcher is away: changes it cannot see, then the history of them is compacted.
    await direct.txn({ guards: [], ops: [{ type: 'put', key: 'v/x', value: 'new' }, { type: 'delete', key: 'v/y' }] });
    const last = await direct.txn({ guards: [], ops: [{ type: 'put', key: 'v/z', value: 'new' }] });
    await raw.kv.compact({ revision: last.revision });
    const resynced = resyncs.next();
    proxy.restore();

    const snapshot = await resynced;
    t.deepEqual(state(snapshot), { 'v/x': 'new', 'v/z': 'new' }, 'the watcher sees the state as it is now');
    const after = await direct.txn({ guards: [], ops: [{ type: 'put', key: 'v/after', value: 1 }] });
    await events.until((all) => all.some((e) => e.modRevision === after.revision));
    t.deepEqual(events.events.map((e) => e.modRevision).filter((r) => r > before.revision), [after.revision], 'after the snapshot, only newer events');
    t.is(ended, undefined, 'the watch did not end');
  });
}
