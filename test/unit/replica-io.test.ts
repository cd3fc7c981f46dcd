/**
 * The engine's I/O to one replica: LocalReplicaIo straight into a Replica, RemoteReplicaIo
 * over a real Io stream on loopback (mutual TLS).
 */
import test from 'ava';
import { Code } from '../../src/common/errors.js';
import type { NodeId, ReplicaId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { LocalReplicaIo, RemoteReplicaIo } from '../../src/engine/replica-io.js';
import { connect } from '../../src/replica/replica-client.js';
import { codeOf, filled, replicaFixture, startReplicaNode } from '../helpers/replica-fixture.js';
import { makeTestPki } from '../helpers/tls.js';

const MiB = 1 << 20;
const ref = { replicaId: 'rep-a', volumeId: 'vol-1' };
const node = 'node-a' as NodeId;

/** A replica on a temp pool; `open(epoch)` wraps it in a LocalReplicaIo at that epoch (1 by default). */
async function localIo(t: { teardown: (fn: () => Promise<void>) => void }): Promise<{ io: LocalReplicaIo; open: (epoch?: number) => Promise<LocalReplicaIo> }> {
  const fx = await replicaFixture();
  t.teardown(() => fx.cleanup());
  await fx.manager.create(ref, 16 * MiB, 1, true);
  const open = async (epoch = 1): Promise<LocalReplicaIo> => new LocalReplicaIo(await fx.manager.open(ref), epoch, node);
  return { io: await open(), open };
}

test('local: writes, reads, flush, trim and write-zeroes; a 9 MiB request is split under the batch limit', async (t) => {
  const { io } = await localIo(t);
  t.is(io.replicaId, 'rep-a' as ReplicaId);
  t.true(io.local);
  const big = Buffer.alloc(9 * MiB);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
  await Promise.all([io.write(0, filled(8192, 0xab), false), io.write(MiB, big, true)]);
  await io.flush();
  t.deepEqual(await io.read(0, 8192), filled(8192, 0xab));
  t.true((await io.read(MiB, big.length)).equals(big), 'the 9 MiB write and read went as several requests and came back whole');
  await io.trim(0, 4096);
  await io.writeZeroes(4096, 4096, false);
  t.deepEqual(await io.read(0, 8192), filled(8192, 0));
  t.is(await codeOf(io.read(16 * MiB, 1)), Code.OUT_OF_RANGE);
  t.is(io.inflight, 0);
});

test('local: a write in pieces goes as one scatter-gather write, a read fills caller buffers; both also above the chunk size', async (t) => {
  const { io } = await localIo(t);
  const parts = [filled(4096, 1), filled(65536, 2), filled(512, 3)];
  await io.writev(8192, parts, true);
  const targets = [Buffer.alloc(512), Buffer.alloc(69632)];
  await io.readInto(8192, targets);
  t.true(Buffer.concat(targets).equals(Buffer.concat(parts)));
  const big = [filled(3 * MiB, 4), filled(3 * MiB, 5)];
  await io.writev(MiB, big, false);
  const into = [Buffer.alloc(MiB), Buffer.alloc(5 * MiB)];
  await io.readInto(MiB, into);
  t.true(Buffer.concat(into).equals(Buffer.concat(big)));
  t.is(await codeOf(io.writev(16 * MiB - 4096, [filled(4096, 1), filled(4096, 1)], false)), Code.OUT_OF_RANGE);
});

test('local: a stale epoch is refused as FAILED_PRECONDITION naming it', async (t) => {
  const { io: old, open } = await localIo(t);
  await old.write(0, filled(512, 1), false);
  await (await open(2)).write(0, filled(512, 2), false);
  const err = await t.throwsAsync(old.write(0, filled(512, 3), false));
  t.is((err as { code?: Code }).code, Code.FAILED_PRECONDITION);
  t.regex(err!.message, /stale epoch 1 < 2/);
});

test('local: cancel rejects what is pending and everything after; close waits for requests in flight', async (t) => {
  const { io, open } = await localIo(t);
  const pending = io.write(0, filled(4096, 1), false);
  io.cancel();
  t.is(await codeOf(pending), Code.CANCELLED);
  t.is(await codeOf(io.flush()), Code.CANCELLED);

  const other = await open();
  let written = false;
  const inFlight = other.write(MiB, filled(4096, 7), false).then(() => (written = true));
  await other.close();
  t.true(written, 'close resolved only after the write in flight finished');
  await inFlight;
  t.is(await codeOf(other.write(0, filled(512, 1), false)), Code.FAILED_PRECONDITION, 'a closed io takes no new requests');
  const check = await open();
  t.deepEqual(await check.read(MiB, 4096), filled(4096, 7));
});

test('remote: the calls map 1:1 onto a real Io stream; cancel rejects pending requests', async (t) => {
  const pki = await makeTestPki();
  t.teardown(() => pki.cleanup());
  const n = await startReplicaNode(await pki.node('node-b'));
  t.teardown(() => n.cleanup());
  const client = connect(n.address, await pki.node('engine-a'), { log: silentLogger(), deadlineMs: 10_000 });
  t.teardown(() => client.close());
  await client.createReplica(ref, 8 * MiB, 1, true);

  const stream = client.openIoStream(ref, 1);
  await stream.ready;
  const io = new RemoteReplicaIo(stream, 'rep-a' as ReplicaId, 'node-b' as NodeId);
  t.false(io.local);
  await Promise.all([io.write(0, filled(4096, 0x11), true), io.write(4096, filled(4096, 0x22), false)]);
  await io.flush();
  t.deepEqual(await io.read(0, 8192), Buffer.concat([filled(4096, 0x11), filled(4096, 0x22)]));
  await io.trim(0, 4096);
  await io.writeZeroes(4096, 4096, true);
  t.deepEqual(await io.read(0, 8192), filled(8192, 0));
  await io.close();

  const second = new RemoteReplicaIo(client.openIoStream(ref, 1), 'rep-a' as ReplicaId, 'node-b' as NodeId);
  const pending = second.write(0, filled(4096, 3), false);
  second.cancel();
  t.is(await codeOf(pending), Code.CANCELLED);
  t.is(await codeOf(second.read(0, 512)), Code.CANCELLED);
});
