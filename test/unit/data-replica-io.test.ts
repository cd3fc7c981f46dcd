import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { Code, isStaleEpoch, type StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import type { ReplicaId, VolumeId } from '../../src/common/ids.js';
import { DataReplicaIo, sliceParts } from '../../src/engine/data-replica-io.js';
import { DataChannelStats } from '../../src/engine/data-stats.js';
import { startReplicaDataServer, type ReplicaDataServer } from '../../src/replica/data-server.js';
import { encodeHelloReply, DataReason, encodeReplyHeader } from '../../src/replica/data-frames.js';
import { loadPeerTls, type PeerTlsConfig, type PeerTlsMaterial } from '../../src/rpc/tls.js';
import { replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';
import { makeTestPki } from '../helpers/tls.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const REF = { replicaId: 'rep-a' as ReplicaId, volumeId: 'vol-1' as VolumeId };

interface Setup {
  fx: ReplicaFixture;
  server: ReplicaDataServer;
  open(epoch?: number, opts?: { connections?: number; stats?: DataChannelStats; tls?: PeerTlsMaterial; onClosed?: () => void }): Promise<DataReplicaIo>;
}

async function setup(t: ExecutionContext, tls: PeerTlsConfig = { insecure: true }, clientTls?: PeerTlsMaterial): Promise<Setup> {
  const fx = await replicaFixture();
  await fx.manager.create(REF, SIZE, 1, true);
  const server = await startReplicaDataServer({ host: '127.0.0.1', port: 0, manager: fx.manager, tls, log: silentLogger() });
  t.teardown(async () => {
    await server.close();
    await fx.cleanup();
  });
  return {
    fx, server,
    async open(epoch = 1, opts = {}) {
      const io = await DataReplicaIo.open({
        address: `127.0.0.1:${server.port}`, ...REF, nodeId: 'node-b' as never, epoch, tls: opts.tls ?? clientTls,
      }, opts);
      t.teardown(() => io.cancel());
      return io;
    },
  };
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

test('sliceParts cuts buffers laid back to back at any byte', (t) => {
  const parts = [Buffer.from('abc'), Buffer.from('defg'), Buffer.from('h')];
  const join = (from: number, to: number): string => Buffer.concat(sliceParts(parts, from, to)).toString();
  t.is(join(0, 8), 'abcdefgh');
  t.is(join(2, 5), 'cde');
  t.is(join(3, 7), 'defg');
  t.is(join(7, 8), 'h');
});

test('writes, writev, flush, then reads into the caller buffers return the bytes written, over two links', async (t) => {
  const s = await setup(t);
  const stats = new DataChannelStats();
  const io = await s.open(1, { connections: 2, stats });
  t.is(io.sizeBytes, SIZE);
  const writes = Array.from({ length: 96 }, (_, i) => ({ offset: i * 256 * 1024, data: pattern([512, 4096, 65536, 200 << 10][i % 4]!, i) }));
  await Promise.all(writes.map((w, i) => (i % 3 === 0
    ? io.writev(w.offset, [w.data.subarray(0, 100), w.data.subarray(100)], i % 5 === 0)
    : io.write(w.offset, w.data, false))));
  await io.flush();
  const back = writes.map((w) => [Buffer.alloc(w.data.length >> 1), Buffer.alloc(w.data.length - (w.data.length >> 1))]);
  await Promise.all(writes.map((w, i) => io.readInto(w.offset, back[i]!)));
  writes.forEach((w, i) => t.true(Buffer.concat(back[i]!).equals(w.data), `request ${i}`));
  t.true((await io.read(writes[5]!.offset, writes[5]!.data.length)).equals(writes[5]!.data));
  // The replica's device holds them, not only its view.
  const device = await (await s.fx.manager.open(REF)).openedDevice();
  t.true((await device.read(writes[95]!.offset, writes[95]!.data.length)).equals(writes[95]!.data));
  t.is(stats.inflight, 0);
  t.is(stats.failures, 0);
  t.is(stats.requests, 96 + 1 + 96 + 1);
  t.is(stats.bytesSent, writes.reduce((n, w) => n + w.data.length, 0));
});

test('a 9 MiB write and read are split at the replica payload limit and come back whole', async (t) => {
  const s = await setup(t);
  const io = await s.open();
  const data = pattern(9 * MiB + 4096, 3);
  await io.writev(MiB, [data.subarray(0, 3 * MiB + 5), data.subarray(3 * MiB + 5)], true);
  t.true((await io.read(MiB, data.length)).equals(data));
});

test('trim and write-zeroes make the range read as zeros; past the end is OUT_OF_RANGE and the link stays usable', async (t) => {
  const s = await setup(t);
  const io = await s.open();
  await io.write(0, pattern(4 * MiB, 9), false);
  await io.trim(0, MiB);
  await io.writeZeroes(2 * MiB, MiB, true);
  const back = await io.read(0, 4 * MiB);
  t.true(back.subarray(0, MiB).equals(Buffer.alloc(MiB)));
  t.true(back.subarray(MiB, 2 * MiB).equals(pattern(4 * MiB, 9).subarray(MiB, 2 * MiB)));
  t.true(back.subarray(2 * MiB, 3 * MiB).equals(Buffer.alloc(MiB)));
  const err = await t.throwsAsync<StorageError>(io.write(SIZE - 512, Buffer.alloc(4096), false));
  t.is(err?.code, Code.OUT_OF_RANGE);
  await io.write(SIZE - 4096, pattern(4096, 1), false);
  t.true((await io.read(SIZE - 4096, 4096)).equals(pattern(4096, 1)));
});

test('a newer engine fences the old: its hello is STALE_EPOCH, its open link fails, and nothing it sends lands', async (t) => {
  const s = await setup(t);
  const old = await s.open(1);
  await old.write(0, pattern(4096, 1), false);
  const fresh = await s.open(2);
  // The old engine keeps writing after the takeover: refused or cut, never applied.
  const late = await Promise.allSettled([old.write(0, pattern(4096, 66), false), old.write(8192, pattern(4096, 66), false)]);
  t.true(late.every((r) => r.status === 'rejected'));
  t.deepEqual(await fresh.read(0, 4096), pattern(4096, 1));
  t.deepEqual(await fresh.read(8192, 4096), Buffer.alloc(4096));
  const err = await t.throwsAsync<StorageError>(s.open(1));
  t.is(err?.code, Code.FAILED_PRECONDITION);
  t.true(isStaleEpoch(err));
  t.is(err?.details.newestEpoch, 2);
});

test('an unknown replica is NOT_FOUND at the hello', async (t) => {
  const s = await setup(t);
  const err = await t.throwsAsync<StorageError>(DataReplicaIo.open({
    address: `127.0.0.1:${s.server.port}`, replicaId: 'nope' as ReplicaId, volumeId: REF.volumeId, nodeId: 'node-b' as never, epoch: 1, tls: undefined,
  }));
  t.is(err?.code, Code.NOT_FOUND);
});

test('cancel rejects every pending request with CANCELLED; later requests fail too', async (t) => {
  const s = await setup(t);
  const io = await s.open();
  const pending = Array.from({ length: 32 }, (_, i) => io.write(i * MiB, pattern(MiB, i), false));
  io.cancel();
  const results = await Promise.allSettled(pending);
  t.true(results.every((r) => r.status === 'rejected' && (r.reason as StorageError).code === Code.CANCELLED));
  t.is((await t.throwsAsync<StorageError>(io.flush()))?.code, Code.CANCELLED);
});

/** A fake replica that answers the hello, then does what `then` says with the socket. */
async function fakeReplica(t: ExecutionContext, then: (socket: Socket) => void): Promise<string> {
  const server = createServer((socket) => {
    socket.once('data', () => {
      socket.write(encodeHelloReply({ code: Code.OK, reason: DataReason.NONE, epoch: 1, sizeBytes: SIZE, maxPayloadBytes: MiB, maxInflightRequests: 64, message: '' }));
      socket.once('data', () => then(socket));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const address = server.address();
  return `127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
}

for (const [name, then] of [
  ['closes the connection', (s: Socket) => s.destroy()],
  ['answers with garbage', (s: Socket) => s.write(Buffer.alloc(64, 0xee))],
  ['answers a request id that was never sent', (s: Socket) => s.write(encodeReplyHeader({ id: 999, code: Code.OK, reason: DataReason.NONE, lengthBytes: 0 }))],
  ['answers a write with data', (s: Socket) => s.write(encodeReplyHeader({ id: 1, code: Code.OK, reason: DataReason.NONE, lengthBytes: 16 }))],
] as const) {
  test(`a replica that ${name} fails every pending request with UNAVAILABLE naming it`, async (t) => {
    const address = await fakeReplica(t, then);
    const io = await DataReplicaIo.open({ address, ...REF, nodeId: 'node-b' as never, epoch: 1, tls: undefined });
    const results = await Promise.allSettled([io.write(0, Buffer.alloc(4096), false), io.read(0, 4096), io.flush()]);
    for (const r of results) {
      t.is(r.status, 'rejected');
      const err = (r as PromiseRejectedResult).reason as StorageError;
      t.is(err.code, Code.UNAVAILABLE);
      t.is(err.details.replica, REF.replicaId);
    }
    io.cancel();
  });
}

test('mutual TLS: a node certificate of the cluster CA is served; the replica refuses a foreign CA', async (t) => {
  const pki = await makeTestPki();
  t.teardown(() => pki.cleanup());
  const serverFiles = await pki.node('localhost');
  const s = await setup(t, serverFiles, loadPeerTls(await pki.node('localhost')));
  const io = await s.open();
  await io.write(4096, pattern(8192, 4), true);
  t.true((await io.read(4096, 8192)).equals(pattern(8192, 4)));
  const rogue = await pki.rogue('localhost');
  // Its files as they are (loadPeerTls would refuse them: the CA did not sign the certificate).
  const material = { ca: readFileSync(rogue.caFile), cert: readFileSync(rogue.certFile), key: readFileSync(rogue.keyFile), subject: 'rogue' };
  const err = await t.throwsAsync<StorageError>(s.open(1, { tls: material }));
  t.is(err?.code, Code.UNAVAILABLE);
});

test('onClosed is told once, on close or on cancel (the connector drops idle replicas\' counters after it)', async (t) => {
  const s = await setup(t);
  let closedA = 0;
  const a = await s.open(1, { onClosed: () => closedA++ });
  await a.write(0, pattern(4096, 1), false);
  await a.close();
  a.cancel();
  t.is(closedA, 1);
  let closedB = 0;
  const b = await s.open(1, { onClosed: () => closedB++ });
  b.cancel();
  b.cancel();
  t.is(closedB, 1);
});
