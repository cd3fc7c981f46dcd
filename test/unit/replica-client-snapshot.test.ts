/**
 * SnapshotReplica over the peer port (real gRPC under mutual TLS, a real replica on a file
 * pool): a call that waits for a whole copy lasts as long as the copy takes, not the control
 * calls' deadline, while a cut stays under that deadline. A group snapshot's finish on a
 * loaded node failed with DEADLINE_EXCEEDED after 10 s before this.
 */
import test from 'ava';
import { Code } from '../../src/common/errors.js';
import type { SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ReplicaClient } from '../../src/replica/replica-client.js';
import type { ReplicaManager } from '../../src/replica/replica-manager.js';
import { startReplicaServer } from '../../src/replica/replica-server.js';
import { codeOf, replicaFixture } from '../helpers/replica-fixture.js';
import { makeTestPki } from '../helpers/tls.js';

const VOL = 'vol-slow-copy' as VolumeId;
const DEADLINE_MS = 200;

test('a SnapshotReplica call that waits for the whole copy outlives the control deadline; a cut does not', async (t) => {
  const pki = await makeTestPki();
  t.teardown(() => pki.cleanup());
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  const ref = { replicaId: 'rep-0', volumeId: VOL };
  await fx.manager.create(ref, 1 << 20, 1, true);
  // The node's snapshot work is held until the test lets it go: a copy slower than the deadline.
  let arrived!: () => void;
  let release!: () => void;
  const manager = Object.create(fx.manager, {
    snapshot: {
      value: async (...args: Parameters<ReplicaManager['snapshot']>) => {
        arrived();
        await new Promise<void>((resolve) => (release = resolve));
        return fx.manager.snapshot(...args);
      },
    },
  }) as ReplicaManager;
  const server = await startReplicaServer({ listen: '127.0.0.1:0', pool: fx.pool, store: fx.store, log: silentLogger(), tls: await pki.node('node-a'), manager, shutdownTimeoutMs: 1000 });
  t.teardown(() => server.close());
  const client = new ReplicaClient(`127.0.0.1:${server.port}`, await pki.node('node-b'), { deadlineMs: DEADLINE_MS, log: silentLogger() });
  t.teardown(() => client.close());

  const held = async <T>(call: () => Promise<T>): Promise<T> => {
    const reached = new Promise<void>((resolve) => (arrived = resolve));
    const pending = call();
    pending.catch(() => undefined);
    await reached;
    // Held past the client's deadline (this only makes the copy slow; nothing is proved by it).
    await new Promise((r) => setTimeout(r, DEADLINE_MS * 3));
    release();
    return pending;
  };
  const whole = await held(() => client.snapshotReplica(ref, 1, 'snap-whole' as SnapshotId));
  t.is(String(whole.snapshotId), 'snap-whole');
  t.deepEqual((await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId), ['snap-whole'], 'the copy is recorded on the node');
  t.is(await codeOf(held(() => client.snapshotReplica(ref, 1, 'snap-cut' as SnapshotId, { cutOnly: true }))), Code.DEADLINE_EXCEEDED, 'a cut is a control call');
});
