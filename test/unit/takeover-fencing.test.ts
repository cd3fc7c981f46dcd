/**
 * A takeover fences the old engine through the volume watch (applyDoc → fence → onFenced,
 * which stops the old export). Two ClusterVolumeServices ("nodes" a and b) in one process
 * on one embedded cluster store, each with its own file pool; real engines and NBD
 * exports. Nothing may end as an unhandled promise rejection.
 */
import test from 'ava';
import { pino } from 'pino';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { serviceCluster } from '../helpers/service-cluster.js';

const MiB = 1 << 20;

test('a forced takeover fences the old engine, which stops its export without an unhandled rejection', async (t) => {
  const unhandled: unknown[] = [];
  let wake = (): void => undefined;
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
    wake();
  };
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));

  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const lines: string[] = [];
  let onLine = (): void => undefined;
  const logA = pino({ level: 'debug' }, { write: (s: string) => { lines.push(s); onLine(); } });
  const services = await serviceCluster(t, [{ id: 'node-a' as NodeId, store, log: logA }, { id: 'node-b' as NodeId, store }]);
  const a = services.get('node-a' as NodeId)!;
  const b = services.get('node-b' as NodeId)!;
  await a.create('vol', 8 * MiB, { replicas: 2 });
  await a.export('vol');

  // Node a's engine is stopped once the watch has fenced it (or the stop ends as an unhandled rejection).
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
    onLine = () => {
      if (lines.some((l) => l.includes('"volume engine closed"'))) resolve();
    };
  });
  await b.export('vol', { takeover: true, force: true });
  await stopped;
  t.is(a.connectionCount(), 0);
  // Unhandled rejections are reported once the microtask queue has drained: give it a turn.
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(unhandled.map((e) => (e as Error).message), [], 'no unhandled promise rejection');
  t.true(lines.some((l) => l.includes('volume engine fenced by a newer epoch')));
});
