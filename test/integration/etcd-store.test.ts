/**
 * The ClusterStore conformance suite against a real etcd (Debian's etcd-server) on
 * loopback, plus what only etcd has: compaction and clusters sharing one etcd.
 */
import anyTest, { type TestFn } from 'ava';
import { Etcd3 } from 'etcd3';
import { Code } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { openClusterStore } from '../../src/cluster/store/open-cluster-store.js';
import { clusterStoreConformance, expectCode, uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const log = silentLogger();
const missing = await etcdMissingReason();
let etcd: EtcdProcess | undefined;

if (prerequisitesMet('etcd store tests', missing)) {
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });

  const open = (cluster = uniqueCluster()): EtcdStore => new EtcdStore({ endpoints: [etcd!.endpoint], cluster, callTimeoutMs: 3000, log });

  clusterStoreConformance(test, { open: async () => open(), shortTtlMs: 2000 });

  test('etcd: two clusters on one etcd see only their own keys', async (t) => {
    const a = open();
    const b = open();
    t.teardown(() => Promise.all([a.close(), b.close()]).then(() => undefined));
    await a.txn({ guards: [], ops: [{ type: 'put', key: 'nodes/n1', value: 'a' }] });
    await b.txn({ guards: [], ops: [{ type: 'put', key: 'nodes/n1', value: 'b' }] });
    t.deepEqual((await a.list('')).items.map((kv) => kv.value), ['a']);
    t.deepEqual((await b.list('nodes/')).items.map((kv) => kv.value), ['b']);
  });

  // Serial: ava runs it before the concurrent tests, whose watches start after the compaction.
  test.serial('etcd: a watch from a compacted revision is OUT_OF_RANGE', async (t) => {
    const s = open();
    t.teardown(() => s.close());
    const first = await s.txn({ guards: [], ops: [{ type: 'put', key: 'k', value: 1 }] });
    const last = await s.txn({ guards: [], ops: [{ type: 'put', key: 'k', value: 2 }] });
    const raw = new Etcd3({ hosts: etcd!.endpoint });
    t.teardown(() => raw.close());
    await raw.kv.compact({ revision: last.revision });
    // etcd confirms the watch, then cancels it: the error arrives through onError.
    const failure = new Promise<never>((_, reject) => {
      s.watch('', { onEvents: () => reject(new Error('events from a compacted revision')), onError: reject }, { fromRevision: first.revision }).catch(reject);
    });
    const err = await expectCode(t, failure, Code.OUT_OF_RANGE);
    t.regex(err.message, /compacted its history up to revision \d+/);
  });

  test('etcd: openClusterStore picks etcd when endpoints are configured', async (t) => {
    const s = openClusterStore({ cluster: uniqueCluster(), etcdEndpoints: [etcd!.endpoint], dataDir: '/nonexistent', log });
    t.teardown(() => s.close());
    t.is(s.kind, 'etcd');
    const r = await s.txn({ guards: [{ key: 'k', modRevision: 0 }], ops: [{ type: 'put', key: 'k', value: 'v' }] });
    t.like(await s.get('k'), { value: 'v', modRevision: r.revision });
  });
}
