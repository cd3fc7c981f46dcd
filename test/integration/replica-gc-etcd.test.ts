/**
 * The orphan replica collector against a real etcd: a volume document this node cannot
 * read (a replica state from a newer release) must not make its replicas look orphaned.
 * No pass deletes anything while such a document exists, and the hold is logged once.
 */
import anyTest, { type TestFn } from 'ava';
import { pino } from 'pino';
import type { ReplicaId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ReplicaCollector } from '../../src/cluster/replica-gc.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { volumeKey } from '../../src/cluster/volume-doc.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { replicaFixture } from '../helpers/replica-fixture.js';

const test = anyTest as TestFn;
const missing = await etcdMissingReason();
const MiB = 1 << 20;
const GRACE = 60_000;
let etcd: EtcdProcess | undefined;

if (prerequisitesMet('replica gc on etcd', missing)) {
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });

  test('a volume document this node cannot parse holds orphan collection: its replicas survive every pass', async (t) => {
    const fx = await replicaFixture();
    t.teardown(() => fx.cleanup());
    const store = new EtcdStore({ endpoints: [etcd!.endpoint], cluster: uniqueCluster(), callTimeoutMs: 3000, log: silentLogger() });
    t.teardown(() => store.close());
    const since = new Date(Date.now() - 10 * GRACE).toISOString();
    // Written as a newer release would: a replica state this release does not know.
    const future = {
      id: 'vol-future', name: 'future', sizeBytes: 4 * MiB, createdAt: since, state: 'ready', replicasWanted: 2, regionBytes: MiB, epoch: 3, engine: null,
      replicas: [
        { id: 'rep-a', nodeId: 'n', state: 'in-sync', since },
        { id: 'rep-b', nodeId: 'n', state: 'draining', since },
      ],
    };
    await store.txn({ guards: [], ops: [{ type: 'put', key: volumeKey('future'), value: future }] });
    for (const replicaId of ['rep-a', 'rep-b', 'rep-orphan']) {
      await fx.manager.create({ replicaId, volumeId: replicaId === 'rep-orphan' ? 'vol-gone' : 'vol-future' }, 4 * MiB, 1, true);
    }
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
    const gc = new ReplicaCollector({ store, manager: fx.manager, graceMs: GRACE, log });
    // Created "long ago" as far as the collector can tell: passes far in the future.
    const t0 = Date.now() + 10 * GRACE;
    for (let i = 0; i < 5; i++) t.deepEqual(await gc.pass(t0 + i * GRACE), [], `pass ${i} deletes nothing`);
    t.deepEqual((await fx.manager.list()).map((r) => r.replicaId).sort(), ['rep-a', 'rep-b', 'rep-orphan'] as ReplicaId[]);
    const holds = lines.filter((l) => l.includes('orphan collection held'));
    t.is(holds.length, 1, `the hold is logged once, not every pass:\n${lines.join('')}`);
    t.regex(holds[0]!, /volumes\/future/);

    // Once the document is readable again (here: rewritten by this release), real orphans go after a full grace period.
    await store.txn({ guards: [], ops: [{ type: 'put', key: volumeKey('future'), value: { ...future, replicas: [future.replicas[0]!, { ...future.replicas[1]!, state: 'rebuilding' }] } }] });
    const t1 = t0 + 10 * GRACE;
    t.deepEqual(await gc.pass(t1), [], 'the grace period starts again after a hold');
    t.deepEqual(await gc.pass(t1 + GRACE), ['rep-orphan' as ReplicaId]);
    t.deepEqual((await fx.manager.list()).map((r) => r.replicaId).sort(), ['rep-a', 'rep-b'] as ReplicaId[]);
    t.is(lines.filter((l) => l.includes('orphan collection resumed')).length, 1);
  });
}
