/**
 * The engine service (cairn.engine.v1) on the peer port under mutual TLS: the barrier's
 * phases of an engine (over real replicas on file pools) driven by an EngineClient;
 * FAILED_PRECONDITION for a volume with no engine on the node; a certificate from another
 * CA is refused.
 */
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { readFileSync } from 'node:fs';
import { Code, StorageError } from '../../src/common/errors.js';
import type { DeviceId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { EngineClient } from '../../src/engine/engine-client.js';
import { engineService } from '../../src/engine/engine-service.js';
import { startReplicaServer } from '../../src/replica/replica-server.js';
import { peerChannelCredentials } from '../../src/rpc/tls.js';
import { VOL, replicatedEngine, stillPending } from '../helpers/engine-fixture.js';
import { codeOf, filled } from '../helpers/replica-fixture.js';
import { makeTestPki } from '../helpers/tls.js';

const BLOCK = 4096;

test('pause, cut, resume, finish and abort over the peer port; unknown volumes FAILED_PRECONDITION; a rogue certificate is refused', async (t) => {
  const pki = await makeTestPki();
  t.teardown(() => pki.cleanup());
  const { s, fxs } = await replicatedEngine(t, 2);
  const e = await s.start();
  const lookup = (volumeId: VolumeId) => {
    if (volumeId !== VOL) throw new StorageError(Code.FAILED_PRECONDITION, `no engine of volume ${volumeId} runs on this node`);
    return e;
  };
  const server = await startReplicaServer({
    listen: '127.0.0.1:0', pool: fxs[0]!.pool, store: fxs[0]!.store, log: silentLogger(), tls: await pki.node('node-a'), manager: fxs[0]!.manager,
    shutdownTimeoutMs: 1000, services: [engineService(lookup, silentLogger())],
  });
  t.teardown(() => server.close());
  const address = `127.0.0.1:${server.port}`;
  const client = new EngineClient(address, peerChannelCredentials(await pki.node('coordinator'), silentLogger()));
  t.teardown(() => client.close());

  await e.write(0, filled(BLOCK, 0x11));
  const paused = await client.pause(VOL, 'grp', 30_000);
  t.is(paused.epoch, 1);
  const w = e.write(0, filled(BLOCK, 0x22));
  t.true(await stillPending(w), 'a write waits while the engine is paused from another node');
  const cut = await client.cut(VOL, 'grp', 'snap-e' as SnapshotId);
  t.deepEqual(cut.copies.map((c) => c.replicaId).sort(), ['rep-0', 'rep-1']);
  const pauseUs = await client.resume(VOL, 'grp');
  t.true(pauseUs > 0);
  t.is(await client.resume(VOL, 'grp'), pauseUs, 'resume twice is fine');
  await w;
  const copies = await client.finish(VOL, 'snap-e' as SnapshotId);
  t.deepEqual(copies.map((c) => c.replicaId).sort(), ['rep-0', 'rep-1']);
  const dev = await fxs[1]!.pool.open('snap-e' as DeviceId);
  t.deepEqual(await dev.read(0, BLOCK), filled(BLOCK, 0x11), 'the copy holds the write before the pause only');
  await dev.close();
  await client.abort(VOL, 'snap-e' as SnapshotId);
  await client.abort(VOL, 'snap-e' as SnapshotId);
  for (const fx of fxs) t.deepEqual(await fx.manager.listSnapshotCopies(), [], 'abort deleted every copy');

  t.is(await codeOf(client.pause('vol-elsewhere' as VolumeId, 'grp2', 1000)), Code.FAILED_PRECONDITION);
  t.is(await codeOf(client.cut(VOL, 'grp-never', 'snap-n' as SnapshotId)), Code.FAILED_PRECONDITION, 'a cut without a pause');
  t.is(await codeOf(client.pause(VOL, 'grp', 1000)), Code.ABORTED, 'a group that resumed may not pause again');

  const files = await pki.rogue('intruder');
  // Its files as they are (loadPeerTls would refuse them: the CA did not sign the certificate).
  const rogueCreds = grpc.credentials.createSsl(readFileSync(files.caFile), readFileSync(files.keyFile), readFileSync(files.certFile));
  const rogue = new EngineClient(address, rogueCreds, { deadlineMs: 3000 });
  t.teardown(() => rogue.close());
  t.is(await codeOf(rogue.pause(VOL, 'grp-rogue', 3000)), Code.UNAVAILABLE, 'a certificate from another CA is refused');
});
