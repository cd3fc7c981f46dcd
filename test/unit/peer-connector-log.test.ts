/**
 * The peer connector logs a condition that does not change once: with peer TLS off, the
 * "peer TLS is off" warning appears once, not on every reconnect to a peer that is down.
 */
import test from 'ava';
import { pino } from 'pino';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { PeerConnector } from '../../src/cluster/replica-connector.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { freePort } from '../helpers/daemon.js';
import { replicaFixture } from '../helpers/replica-fixture.js';

test('a peer that is down: every reconnect fails, the plaintext warning is logged once', async (t) => {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => store.close());
  const registry = new NodeRegistry(store, { ttlMs: 60_000, retryMs: 250, log: silentLogger() });
  t.teardown(() => registry.close());
  // A registered peer whose port nobody listens on: a peer that is down.
  await registry.register({ nodeId: 'node-b' as NodeId, name: 'b', peerAddress: `127.0.0.1:${await freePort()}`, labels: {}, capacity: { totalBytes: 1, freeBytes: 1 }, version: 'test' });
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
  const connector = new PeerConnector({ nodeId: 'node-a' as NodeId, manager: fx.manager, store, tls: { insecure: true }, log, deadlineMs: 10_000 });
  t.teardown(() => connector.close());
  const replica = { id: 'rep-b' as ReplicaId, nodeId: 'node-b' as NodeId, state: 'in-sync' as const, since: new Date().toISOString() };
  for (let attempt = 0; attempt < 4; attempt++) {
    await t.throwsAsync(connector.openIo('vol-1' as VolumeId, replica, 1), undefined, `attempt ${attempt} fails: the peer is down`);
  }
  const warnings = lines.filter((l) => l.includes('peer TLS is off'));
  t.is(warnings.length, 1, `one warning over 4 reconnect attempts:\n${warnings.join('')}`);
});
