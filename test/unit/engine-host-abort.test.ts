/**
 * The engine host's export takes an AbortSignal: a cancelled export leaves the volume
 * document as it was (no epoch bump, no engine recorded) and serves nothing, and the
 * same export without the signal then works.
 */
import test from 'ava';
import { Code } from '../../src/common/errors.js';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { getVolumeDoc } from '../../src/cluster/volume-doc.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { codeOf } from '../helpers/replica-fixture.js';
import { serviceCluster } from '../helpers/service-cluster.js';

const MiB = 1 << 20;

test('an export whose signal has fired changes nothing and serves nothing', async (t) => {
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const services = await serviceCluster(t, [{ id: 'node-a' as NodeId, store }]);
  const a = services.get('node-a' as NodeId)!;
  await a.create('vol', 8 * MiB);
  const before = (await getVolumeDoc(store, 'vol'))!.doc;

  const cancel = new AbortController();
  cancel.abort();
  t.is(await codeOf(a.export('vol', {}, cancel.signal)), Code.CANCELLED);
  const after = (await getVolumeDoc(store, 'vol'))!.doc;
  t.is(after.epoch, before.epoch);
  t.is(after.engine, null);
  t.is((await a.get('vol')).export, undefined);

  const served = await a.export('vol');
  t.truthy(served.socketPath);
  t.is((await getVolumeDoc(store, 'vol'))!.doc.engine?.nodeId, 'node-a' as NodeId);
});
