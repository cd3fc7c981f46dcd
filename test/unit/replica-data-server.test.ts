import test, { type ExecutionContext } from 'ava';
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { BufferPool } from '../../src/common/buffer-pool.js';
import { Code } from '../../src/common/errors.js';
import type { Logger } from '../../src/common/log.js';
import { DataOp, DataReason, encodeRequestHeader } from '../../src/replica/data-frames.js';
import type { DataConnectionLimits } from '../../src/replica/data-connection.js';
import { startReplicaDataServer, type ReplicaDataServer } from '../../src/replica/data-server.js';
import type { PeerTlsConfig } from '../../src/rpc/tls.js';
import { dialData, fuzzFrames, prng, type DataClient } from '../helpers/data-client.js';
import { makeTestPki } from '../helpers/tls.js';
import { replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const REF = { replicaId: 'rep-a', volumeId: 'vol-1' };
const OTHER = { replicaId: 'rep-b', volumeId: 'vol-2' };
const INSECURE: PeerTlsConfig = { insecure: true };

type Line = Record<string, unknown>;

/** Log lines as they are written, with a way to wait for one. */
function captureLog(): { log: Logger; lines: Line[]; waitFor(pred: (l: Line) => boolean): Promise<Line> } {
  const lines: Line[] = [];
  const events = new EventEmitter();
  const stream = new Writable({
    write(chunk: Buffer, _e, cb) {
      const line = JSON.parse(chunk.toString()) as Line;
      lines.push(line);
      events.emit('line', line);
      cb();
    },
  });
  return {
    log: pino({ level: 'info' }, stream),
    lines,
    waitFor: (pred) => new Promise((resolve) => {
      const found = lines.find(pred);
      if (found) return resolve(found);
      const on = (l: Line): void => {
        if (!pred(l)) return;
        events.off('line', on);
        resolve(l);
      };
      events.on('line', on);
    }),
  };
}

interface Setup {
  fx: ReplicaFixture;
  server: ReplicaDataServer;
  pool: BufferPool;
  logs: ReturnType<typeof captureLog>;
  dial(epoch?: number, ref?: typeof REF, tls?: PeerTlsConfig): Promise<DataClient>;
}

async function setup(t: ExecutionContext, tls: PeerTlsConfig = INSECURE, limits?: Partial<DataConnectionLimits>): Promise<Setup> {
  const fx = await replicaFixture();
  await fx.manager.create(REF, SIZE, 1, true);
  await fx.manager.create(OTHER, SIZE, 1, true);
  const logs = captureLog();
  const pool = new BufferPool();
  const server = await startReplicaDataServer({ host: '127.0.0.1', port: 0, manager: fx.manager, tls, log: logs.log, pool, limits });
  t.teardown(async () => {
    await server.close();
    await fx.cleanup();
  });
  return {
    fx, server, pool, logs,
    async dial(epoch = 1, ref = REF, clientTls = tls) {
      const c = await dialData(server.port, clientTls);
      t.teardown(() => c.socket.destroy());
      const reply = await c.handshake({ ...ref, epoch });
      if (reply.code !== Code.OK) throw new Error(`hello refused: ${reply.message}`);
      return c;
    },
  };
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

/** Writes `data` at `offset`, then reads it back: true when the bytes match. */
async function roundTrip(c: DataClient, offset: number, data: Buffer): Promise<boolean> {
  const w = await c.write(offset, data);
  const r = await c.read(offset, data.length);
  return w.code === Code.OK && r.code === Code.OK && r.body.equals(data);
}

test('64 writes, then a flush, then 64 reads in flight: the bytes read back are those written', async (t) => {
  const s = await setup(t);
  const c = await s.dial();
  t.is(c.hello!.sizeBytes, SIZE);
  const sizes = [512, 4096, 65536, 300 << 10];
  const writes = Array.from({ length: 64 }, (_, i) => ({ offset: i * 320 * 1024, data: pattern(sizes[i % 4]!, i) }));
  const acks = await Promise.all(writes.map((w, i) => c.write(w.offset, w.data, i % 8 === 0)));
  t.deepEqual(acks.map((a) => a.code), writes.map(() => Code.OK));
  t.is((await c.flush()).code, Code.OK);
  const reads = await Promise.all(writes.map((w) => c.read(w.offset, w.data.length)));
  reads.forEach((r, i) => t.true(r.body.equals(writes[i]!.data), `request ${i}`));
  // The device holds them too, not only the replica's view of them.
  const device = await (await s.fx.manager.open(REF)).openedDevice();
  t.true((await device.read(writes[63]!.offset, writes[63]!.data.length)).equals(writes[63]!.data));
});

test('requests sent right behind the hello, before its reply, are served in order', async (t) => {
  const s = await setup(t);
  const c = await dialData(s.server.port, INSECURE);
  t.teardown(() => c.socket.destroy());
  const hello = c.handshake({ ...REF, epoch: 1 });
  const write = c.write(0, pattern(4096, 6));
  const flush = c.flush();
  t.is((await hello).code, Code.OK);
  t.is((await write).code, Code.OK);
  t.is((await flush).code, Code.OK);
  t.true((await c.read(0, 4096)).body.equals(pattern(4096, 6)));
});

test('with room for only 4 requests in flight, 64 pipelined writes still all complete (the server stops reading, then resumes)', async (t) => {
  const s = await setup(t, INSECURE, { maxInflightRequests: 4, maxInflightBytes: 64 << 10 });
  const c = await s.dial();
  t.is(c.hello!.maxInflightRequests, 4);
  const writes = Array.from({ length: 64 }, (_, i) => ({ offset: i * 65536, data: pattern(65536, i + 100) }));
  const acks = await Promise.all(writes.map((w) => c.write(w.offset, w.data)));
  t.true(acks.every((a) => a.code === Code.OK));
  const reads = await Promise.all(writes.map((w) => c.read(w.offset, w.data.length)));
  reads.forEach((r, i) => t.true(r.body.equals(writes[i]!.data), `request ${i}`));
});

test('a hello that never completes is closed at the handshake timeout', async (t) => {
  // Long enough for the good connection's hello to arrive on loopback, however loaded.
  const s = await setup(t, INSECURE, { handshakeTimeoutMs: 1000 });
  const c = await dialData(s.server.port, INSECURE);
  c.raw(Buffer.from('CAIRNDC1', 'latin1'));
  await c.closed;
  await s.logs.waitFor((l) => l.reason === 'handshake-timeout');
  t.true(await roundTrip(await s.dial(), 0, pattern(4096, 8)));
});

test('a request past the end gets OUT_OF_RANGE and the connection keeps serving', async (t) => {
  const s = await setup(t);
  const c = await s.dial();
  const r = await c.write(SIZE - 512, Buffer.alloc(4096));
  t.is(r.code, Code.OUT_OF_RANGE);
  t.true(await roundTrip(c, 0, pattern(4096, 1)));
});

test('a hello with a stale epoch is refused with STALE_EPOCH and the newest epoch', async (t) => {
  const s = await setup(t);
  await s.dial(3);
  const c = await dialData(s.server.port, INSECURE);
  const reply = await c.handshake({ ...REF, epoch: 2 });
  t.is(reply.code, Code.FAILED_PRECONDITION);
  t.is(reply.reason, DataReason.STALE_EPOCH);
  t.is(reply.epoch, 3);
  await c.closed;
  const refused = await dialData(s.server.port, INSECURE);
  t.is((await refused.handshake({ replicaId: 'rep-missing', volumeId: 'vol-1', epoch: 9 })).code, Code.NOT_FOUND);
});

test('a newer epoch closes the older connection first: none of its later writes reach the device', async (t) => {
  const s = await setup(t);
  const old = await s.dial(1);
  t.true(await roundTrip(old, 0, pattern(4096, 1)));
  // The old engine keeps writing 0xAA over [1 MiB, 2 MiB) until its connection drops.
  let stop = false;
  const hammer = (async () => {
    for (let i = 0; !stop; i++) await old.write(MiB + (i % 256) * 4096, Buffer.alloc(4096, 0xaa)).catch(() => (stop = true));
  })();
  const fresh = await s.dial(2);
  await old.closed;
  // Sent after the new engine was acknowledged: it must never land.
  old.raw(Buffer.concat([encodeRequestHeader({ op: DataOp.WRITE, flags: 0, lengthBytes: 4096, id: 999, offset: 4 * MiB }), Buffer.alloc(4096, 0xaa)]));
  stop = true;
  await hammer;
  t.is((await fresh.write(MiB, Buffer.alloc(MiB, 0xbb))).code, Code.OK);
  t.is((await fresh.flush()).code, Code.OK);
  t.true((await fresh.read(MiB, MiB)).body.equals(Buffer.alloc(MiB, 0xbb)), 'no write of the old engine landed after the new one');
  t.true((await fresh.read(4 * MiB, 4096)).body.equals(Buffer.alloc(4096)), 'the write sent after the takeover never landed');
  await s.logs.waitFor((l) => l.reason === 'fenced-by-newer-epoch' && l.epoch === 1 && l.newestEpoch === 2);
});

test('an epoch raised elsewhere (the gRPC path) fences the connection at its next request', async (t) => {
  const s = await setup(t);
  const c = await s.dial(1);
  (await s.fx.manager.open(REF)).admitEpoch(5);
  // Several requests in one batch: the first refusal ends the connection, cleanly.
  const replies = [c.write(0, Buffer.alloc(4096, 0xaa)), c.write(8192, Buffer.alloc(4096, 0xaa)), c.flush()].map((p) => p.catch(() => undefined));
  const first = await replies[0];
  t.is(first?.code, Code.FAILED_PRECONDITION);
  t.is(first?.reason, DataReason.STALE_EPOCH);
  await c.closed;
  await Promise.all(replies);
  const line = await s.logs.waitFor((l) => l.msg === 'replica data connection closed' && l.epoch === 1);
  t.is(line.reason, 'stale-epoch');
  t.true((await (await s.dial(5)).read(0, 4096)).body.equals(Buffer.alloc(4096)));
});

const BAD_INPUT: [string, Buffer, string, string | undefined][] = [
  ['garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\nmore garbage....', 'latin1'), 'malformed-frame', 'magic'],
  ['an oversized length', encodeRequestHeader({ op: DataOp.WRITE, flags: 0, lengthBytes: 64 * MiB, id: 1, offset: 0 }), 'malformed-frame', 'length'],
  ['an unknown op', encodeRequestHeader({ op: 42 as DataOp, flags: 0, lengthBytes: 4096, id: 1, offset: 0 }), 'malformed-frame', 'op'],
];

for (const [name, bytes, reason, field] of BAD_INPUT) {
  test(`${name}: the connection closes with a logged reason, other connections keep working`, async (t) => {
    const s = await setup(t);
    const good = await s.dial();
    const bad = await s.dial();
    bad.raw(bytes);
    await bad.closed;
    const line = await s.logs.waitFor((l) => l.msg === 'replica data connection closed' && l.reason === reason);
    t.is(line.field, field);
    t.is(line.level, 40, 'a warning');
    t.true(typeof line.peer === 'string' && line.peer.startsWith('127.0.0.1:'));
    t.true(await roundTrip(good, 8192, pattern(8192, 3)));
    t.true(await roundTrip(await s.dial(), 0, pattern(4096, 4)), 'the server still accepts connections');
  });
}

test('half a payload then a disconnect: logged, its pooled memory returned, other connections keep working', async (t) => {
  const s = await setup(t);
  const good = await s.dial();
  const bad = await s.dial();
  bad.raw(Buffer.concat([encodeRequestHeader({ op: DataOp.WRITE, flags: 0, lengthBytes: MiB, id: 1, offset: 0 }), Buffer.alloc(300 << 10, 0xcc)]));
  await bad.end();
  await s.logs.waitFor((l) => l.reason === 'peer-closed-mid-frame');
  t.is(s.pool.freeBytes, MiB, 'the four 256 KiB blocks taken for the payload are back in the pool');
  t.true(await roundTrip(good, 0, pattern(4096, 5)));
  t.true((await good.read(0, 4096)).body.equals(pattern(4096, 5)), 'nothing of the half payload was written');
});

test('fuzz: random and mutated frames against a live server while another volume\'s verified writes succeed', async (t) => {
  const s = await setup(t);
  const verified = await s.dial(1, OTHER);
  const rand = prng(0x5eed);
  let verifiedWrites = 0;
  for (let i = 0; i < 60; i++) {
    const fuzz = await s.dial(1);
    fuzz.raw(fuzzFrames(rand));
    const offset = (i % 64) * 65536;
    const data = pattern(65536, i);
    t.true(await roundTrip(verified, offset, data), `verified write ${i}`);
    verifiedWrites++;
    await fuzz.end();
  }
  t.is(verifiedWrites, 60);
  t.is(s.server.connections, 1, 'every fuzzing connection is gone, the verified one is still there');
  t.true(await roundTrip(verified, 0, pattern(4096, 77)));
});

test('mutual TLS: a peer with a certificate of the cluster CA works; one without a client certificate or from another CA is refused', async (t) => {
  const pki = await makeTestPki();
  t.teardown(() => pki.cleanup());
  const s = await setup(t, await pki.node('replica-node'));
  const engine = await s.dial(1, REF, await pki.node('engine-node'));
  t.true(await roundTrip(engine, 0, pattern(65536, 9)));
  t.regex(String((await s.logs.waitFor((l) => l.msg === 'replica data connection bound')).peer), /^engine-node@127\.0\.0\.1:/);

  for (const tls of [{ caFile: pki.caFile }, await pki.rogue('intruder')]) {
    const refused = dialData(s.server.port, tls).then((c) => c.handshake({ ...REF, epoch: 7 }));
    await t.throwsAsync(refused);
  }
  await s.logs.waitFor((l) => l.reason === 'tls-refused');
  t.is((await s.fx.manager.open(REF)).epoch, 1, 'no refused peer got as far as the replica');
  t.true(await roundTrip(engine, 4096, pattern(4096, 10)));
});
