/**
 * The volume watch of a node that was away from etcd while the history it needed was
 * compacted: when it is back it lists the documents again, and its engine follows the
 * document as it is now. Here another node took the volume over meanwhile, so the
 * engine must be fenced and its export stopped. Real etcd and compaction; node a reaches
 * etcd through a proxy that is cut for the while.
 */
import anyTest, { type TestFn } from 'ava';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { etcdProxy } from '../helpers/etcd-proxy.js';
import { serviceCluster } from '../helpers/service-cluster.js';

const test = anyTest as TestFn;
const missing = await etcdMissingReason();
const MiB = 1 << 20;
let etcd: EtcdProcess | undefined;

if (prerequisitesMet('watch resync of the volume service', missing)) {
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });

  test('a node away while etcd compacts sees the takeover when it is back: its engine is fenced', async (t) => {
    const proxy = await etcdProxy(etcd!.endpoint);
    t.teardown(() => proxy.close());
    const cluster = uniqueCluster();
    const open = (endpoint: string): EtcdStore => {
      const s = new EtcdStore({ endpoints: [endpoint], cluster, callTimeoutMs: 2000, log: silentLogger() });
      t.teardown(() => s.close());
      return s;
    };
    const raw = new Etcd3({ hosts: etcd!.endpoint });
    t.teardown(() => raw.close());
    const lines: string[] = [];
    let onLine = (): void => undefined;
    const logA = pino({ level: 'debug' }, { write: (s: string) => { lines.push(s); onLine(); } });
    const services = await serviceCluster(t, [
      { id: 'node-a' as NodeId, store: open(proxy.endpoint), log: logA },
      { id: 'node-b' as NodeId, store: open(etcd!.endpoint) },
    ]);
    const a = services.get('node-a' as NodeId)!;
    const b = services.get('node-b' as NodeId)!;
    await a.create('vol', 8 * MiB, { replicas: 2 });
    await a.export('vol');

    proxy.cut();
    await b.export('vol', { takeover: true, force: true });
    // One more write, so that the compaction also covers the takeover's revision.
    const revision = Number((await raw.put(`/unrelated/${cluster}`).value('x').exec()).header.revision);
    await raw.kv.compact({ revision });
    const outcome = new Promise<string>((resolve) => {
      onLine = () => {
        if (lines.some((l) => l.includes('"volume engine closed"'))) resolve('fenced');
        if (lines.some((l) => l.includes('volume watch ended'))) resolve('watch ended');
      };
    });
    proxy.restore();
    t.is(await outcome, 'fenced', 'node a learns of the takeover after the compaction');
    t.true(lines.some((l) => l.includes('volume engine fenced by a newer epoch')));
    t.is((await b.get('vol')).engineNode, 'node-b');
  });
}
