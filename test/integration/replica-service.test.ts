/**
 * The replica service over real gRPC on loopback, with mutual TLS: I/O round trips,
 * checksums across two nodes, fencing, and refusals of bad peer input while a good stream
 * keeps working.
 */
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import { Code, StorageError, isStaleEpoch } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { connect, type ReplicaClient } from '../../src/replica/replica-client.js';
import type { ChecksumRangeResult } from '../../src/replica/replica-manager.js';
import { makeTestPki, type TestPki } from '../helpers/tls.js';
import { codeOf, filled, startReplicaNode, type ReplicaNode } from '../helpers/replica-fixture.js';
import type { PeerTlsConfig } from '../../src/rpc/tls.js';
import { replicaServerDefinition } from '../../src/replica/replica-wire.js';

const test = anyTest as TestFn<{ pki: TestPki; serverTls: PeerTlsConfig; clientTls: PeerTlsConfig }>;
const MiB = 1 << 20;
const log = silentLogger();

test.before(async (t) => {
  const pki = await makeTestPki();
  t.context = { pki, serverTls: await pki.node('node-a'), clientTls: await pki.node('engine-b') };
});
test.after.always((t) => t.context.pki?.cleanup());

async function node(t: { context: { serverTls: PeerTlsConfig }; teardown: (fn: () => Promise<void>) => void }, limits?: Parameters<typeof startReplicaNode>[1]): Promise<ReplicaNode> {
  const n = await startReplicaNode(t.context.serverTls, limits);
  t.teardown(() => n.cleanup());
  return n;
}

function client(t: { context: { clientTls: PeerTlsConfig }; teardown: (fn: () => void) => void }, address: string): ReplicaClient {
  const c = connect(address, t.context.clientTls, { log, deadlineMs: 10_000 });
  t.teardown(() => c.close());
  return c;
}


test('control calls and I/O round trip: bytes written are read back, flush and FUA succeed', async (t) => {
  const n = await node(t);
  const c = client(t, n.address);
  const ref = { replicaId: 'rep-1', volumeId: 'vol-1' };
  const created = await c.createReplica(ref, 8 * MiB, 1, true);
  t.like(created, { replicaId: 'rep-1', volumeId: 'vol-1', sizeBytes: 8 * MiB, epoch: 1, state: 'in-sync' });
  t.deepEqual(await c.createReplica(ref, 8 * MiB, 1, true), created, 'create is idempotent');

  const io = c.openIoStream(ref, 1);
  t.is(await io.ready, 1);
  const small = Array.from({ length: 200 }, (_, i) => io.write(i * 4096, filled(4096, i & 0xff)));
  const big = Buffer.alloc(6 * MiB);
  for (let i = 0; i < big.length; i += 512) big.writeUInt32LE(i, i);
  await Promise.all([...small, io.write(MiB, big, true), io.flush()]);
  const back = await Promise.all(Array.from({ length: 200 }, (_, i) => io.read(i * 4096, 4096)));
  t.true(back.every((b, i) => b.equals(filled(4096, i & 0xff))));
  t.true((await io.read(MiB, big.length)).equals(big), 'a 6 MiB write and read are split and joined again');
  await io.trim(0, 4096);
  await io.writeZeroes(4096, 4096);
  t.true((await io.read(0, 8192)).equals(filled(8192, 0)));
  await io.end();

  const status = await c.getReplicaStatus({ replicaId: 'rep-1', volumeId: '' });
  t.true(status.allocatedBytes >= 6 * MiB);
  t.deepEqual((await c.listReplicas()).map((r) => r.replicaId), ['rep-1']);
  await c.deleteReplica(ref, 1);
  await c.deleteReplica(ref, 1);
  t.is(await codeOf(c.getReplicaStatus(ref)), Code.NOT_FOUND);
});

test('identical writes to replicas on two nodes give identical region checksums', async (t) => {
  const [a, b] = [await node(t), await node(t)];
  const ref = { replicaId: 'rep-x', volumeId: 'vol-x' };
  const clients = [client(t, a.address), client(t, b.address)];
  const payload = Buffer.alloc(3 * MiB + 4096);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
  for (const c of clients) {
    await c.createReplica(ref, 16 * MiB, 7, true);
    const io = c.openIoStream(ref, 7);
    await Promise.all([io.write(5 * MiB + 512, payload), io.write(0, filled(4096, 1)), io.flush()]);
    await io.end();
  }
  const [ca, cb] = await Promise.all(clients.map((c) => c.checksumRange(ref, 7, 0, 16 * MiB, MiB))) as [ChecksumRangeResult, ChecksumRangeResult];
  t.is(ca.algorithm, 'sha256');
  t.is(ca.digests.length, 16);
  t.deepEqual(ca.digests, cb.digests);
  t.deepEqual(ca.digests[2], ca.digests[15], 'untouched regions (holes) agree');
  t.notDeepEqual(ca.digests[5], ca.digests[15]);
});

test('AllocatedRanges names the data a replica holds; a peer without the call answers UNIMPLEMENTED', async (t) => {
  const n = await node(t);
  const c = client(t, n.address);
  const ref = { replicaId: 'rep-a', volumeId: 'vol-a' };
  await c.createReplica(ref, 8 * MiB, 1, true);
  const io = c.openIoStream(ref, 1);
  await Promise.all([io.write(2 * MiB, filled(64 << 10, 7)), io.write(5 * MiB, filled(4096, 8))]);
  await io.end();
  t.deepEqual(await c.allocatedRanges(ref, 1, 0, 8 * MiB), {
    extents: [{ offset: 2 * MiB, lengthBytes: 64 << 10 }, { offset: 5 * MiB, lengthBytes: 4096 }], endOffset: 8 * MiB,
  });
  t.deepEqual(await c.allocatedRanges(ref, 1, 0, 8 * MiB, 1), { extents: [{ offset: 2 * MiB, lengthBytes: 64 << 10 }], endOffset: 2 * MiB + (64 << 10) });
  t.is(await codeOf(c.allocatedRanges(ref, 1, 4 * MiB, 8 * MiB)), Code.OUT_OF_RANGE);
  await c.createReplica(ref, 8 * MiB, 2, true);
  t.is(await codeOf(c.allocatedRanges(ref, 1, 0, MiB)), Code.FAILED_PRECONDITION);

  // An older node: the same service without the method (grpc-js answers UNIMPLEMENTED).
  const old = new grpc.Server();
  old.addService(replicaServerDefinition(), {});
  const port = await new Promise<number>((resolve, reject) => old.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  t.teardown(() => old.forceShutdown());
  const oc = connect(`127.0.0.1:${port}`, { insecure: true }, { log, deadlineMs: 10_000 });
  t.teardown(() => oc.close());
  t.is(await codeOf(oc.allocatedRanges(ref, 2, 0, MiB)), Code.UNIMPLEMENTED, 'what makes a rebuild copy everything');
});

test('fencing: a newer engine fences the older one, which is refused while the newer proceeds', async (t) => {
  const n = await node(t);
  const c = client(t, n.address);
  const ref = { replicaId: 'rep-f', volumeId: 'vol-f' };
  await c.createReplica(ref, 4 * MiB, 1, true);
  const old = c.openIoStream(ref, 1);
  await old.write(0, filled(4096, 0x01));
  const newer = c.openIoStream(ref, 2);
  t.is(await newer.ready, 2);
  const refused = await t.throwsAsync(old.write(0, filled(4096, 0xee)));
  t.is((refused as StorageError).code, Code.FAILED_PRECONDITION);
  t.regex(refused!.message, /stale epoch 1 < 2/);
  t.true(isStaleEpoch(refused), 'the reason crosses the wire, so engines need not read the message');
  t.is((refused as StorageError).details.newestEpoch, 2);
  await newer.write(4096, filled(4096, 0x02));
  t.true((await newer.read(0, 8192)).equals(Buffer.concat([filled(4096, 0x01), filled(4096, 0x02)])));
  // A stream opened later at the old epoch is refused at once; so are fenced control calls.
  const late = c.openIoStream(ref, 1);
  const lateRefusal = await late.ready.catch((err: unknown) => err);
  t.is((lateRefusal as StorageError).code, Code.FAILED_PRECONDITION);
  t.true(isStaleEpoch(lateRefusal), 'a stream refused at open carries the reason in its trailers');
  t.is(await codeOf(late.write(0, filled(4096, 0xee))), Code.FAILED_PRECONDITION);
  t.is(await codeOf(c.finishRebuild(ref, 1)), Code.FAILED_PRECONDITION);
  t.is(await codeOf(c.checksumRange(ref, 1, 0, MiB, MiB)), Code.FAILED_PRECONDITION);
  t.is((await c.getReplicaStatus(ref)).epoch, 2);
  await newer.end();
  old.cancel();
});
