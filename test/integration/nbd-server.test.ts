/**
 * NbdExportServer over a file device, driven by real NBD clients (qemu-io, nbdinfo,
 * nbdcopy, qemu-img) and by a raw client that breaks the protocol on purpose while a
 * well-behaved client keeps using another export. Needs qemu-utils and libnbd-bin.
 */
import anyTest, { type TestFn } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ByteBudget } from '../../src/engine/nbd/byte-budget.js';
import * as C from '../../src/engine/nbd/codec.js';
import * as P from '../../src/engine/nbd/protocol.js';
import { execFileAsync, makeTempDir, recordingLogger, removeDir, startExport, type NbdExportFixture } from '../helpers/nbd-fixture.js';
import { RawNbdClient } from '../helpers/nbd-raw-client.js';
import { startTraffic, type Traffic } from '../helpers/nbd-traffic.js';
import { ABUSE_CASES } from '../helpers/nbd-abuse-cases.js';

interface Ctx {
  dir: string;
  a: NbdExportFixture;
  b: NbdExportFixture;
  ro: NbdExportFixture;
  warnings: Record<string, unknown>[];
  traffic: Traffic;
}
const test = anyTest as TestFn<Ctx>;
const MiB = 1 << 20;

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads `length` bytes at `offset` in one NBD read (structured replies) and returns them. */
async function readBack(c: RawNbdClient, cookie: bigint, offset: number, length: number): Promise<Buffer> {
  c.request({ type: P.NBD_CMD_READ, cookie, offset, length });
  const r = await c.readReply();
  if (r.error !== 0 || r.cookie !== cookie) throw new Error(`read ${cookie}: error ${r.error}, cookie ${r.cookie}`);
  return r.data;
}

/** Waits (up to 10 s) until `check` holds; returns whether it did. */
async function eventually(check: () => boolean): Promise<boolean> {
  for (let i = 0; i < 200 && !check(); i++) await delay(50);
  return check();
}

test.before(async (t) => {
  const dir = await makeTempDir();
  const { log, warnings } = recordingLogger();
  const a = await startExport(dir, 'vol-a', 64 * MiB, { log });
  const b = await startExport(dir, 'vol-b', 16 * MiB);
  const ro = await startExport(dir, 'vol-ro', 4 * MiB, { readOnly: true });
  const traffic = await startTraffic(b.socketPath, 'vol-b');
  t.context = { dir, a, b, ro, warnings, traffic };
});

test.after.always(async (t) => {
  const { a, b, ro, dir } = t.context;
  await Promise.allSettled([a.close(), b.close(), ro.close()]);
  await removeDir(dir);
});

test.serial('qemu-io writes patterns and reads them back', async (t) => {
  const { a } = t.context;
  const { stdout } = await execFileAsync('qemu-io', [
    '-f', 'raw', a.uri,
    '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 1M 64k', '-c', 'write -z 2M 1M',
    '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 1M 64k', '-c', 'read -P 0 2M 1M',
    '-c', 'discard 4M 1M', '-c', 'read -P 0 4M 1M', '-c', 'flush',
  ]);
  t.notRegex(stdout, /fail|error/i);
  const file = await readFile(a.file);
  t.true(file.subarray(0, MiB).every((x) => x === 0xab));
  t.true(file.subarray(MiB, MiB + 65536).every((x) => x === 0xcd));
});

test.serial('nbdinfo reports size, block sizes and flags', async (t) => {
  const { stdout } = await execFileAsync('nbdinfo', ['--json', t.context.a.uri]);
  const exp = (JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
  t.like(exp, {
    'export-name': 'vol-a', 'export-size': 64 * MiB, block_size_minimum: 512, block_size_preferred: 4096,
    block_size_maximum: 32 * MiB, can_multi_conn: true, can_flush: true, can_fua: true, can_trim: true, can_zero: true, is_read_only: false,
  });
  const list = await execFileAsync('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${t.context.a.socketPath}`]);
  t.is((JSON.parse(list.stdout) as { exports: { 'export-name': string }[] }).exports[0]!['export-name'], 'vol-a');
});

test.serial('nbdcopy round trip keeps every byte', async (t) => {
  const { a, dir } = t.context;
  const src = randomBytes(64 * MiB);
  await writeFile(join(dir, 'src.bin'), src);
  await execFileAsync('nbdcopy', [join(dir, 'src.bin'), a.uri]);
  await execFileAsync('nbdcopy', [a.uri, join(dir, 'out.bin')]);
  t.is(sha256(await readFile(join(dir, 'out.bin'))), sha256(src));
});

test.serial('qemu-img convert into the export, then qemu-img compare', async (t) => {
  const { a, dir } = t.context;
  const img = join(dir, 'image.qcow2');
  await execFileAsync('qemu-img', ['create', '-f', 'qcow2', img, '64M']);
  await execFileAsync('qemu-io', ['-f', 'qcow2', img, '-c', 'write -P 0x5a 3M 5M', '-c', 'write -P 0x11 40M 128k']);
  await execFileAsync('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', img, a.uri]);
  const { stdout } = await execFileAsync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', img, a.uri]);
  t.regex(stdout, /identical/i);
});

test.serial('two connections: a flush on one covers a write completed on the other', async (t) => {
  const { a } = t.context;
  const c1 = await RawNbdClient.connect(a.socketPath);
  const c2 = await RawNbdClient.connect(a.socketPath);
  const f1 = await c1.negotiate('vol-a', false);
  await c2.negotiate('', true);
  t.truthy(f1.flags & P.NBD_FLAG_CAN_MULTI_CONN);
  const data = randomBytes(8192);
  c1.request({ type: P.NBD_CMD_WRITE, cookie: 11n, offset: 8 * MiB, data });
  t.like(await c1.readReply(), { error: 0, cookie: 11n, structured: false });
  c2.request({ type: P.NBD_CMD_FLUSH, cookie: 12n });
  t.like(await c2.readReply(), { error: 0, cookie: 12n });
  c2.request({ type: P.NBD_CMD_READ, cookie: 13n, offset: 8 * MiB, length: 8192 });
  const r = await c2.readReply();
  t.true(r.data.equals(data));
  const onDisk = await readFile(a.file);
  t.true(onDisk.subarray(8 * MiB, 8 * MiB + 8192).equals(data));
  t.true(a.server.stats().connections >= 2);
  for (const c of [c1, c2]) c.request({ type: P.NBD_CMD_DISC, cookie: 0n });
  t.true(await c1.waitClosed());
  t.true(await c2.waitClosed());
});

test.serial('many requests in flight are answered by cookie (simple replies with data)', async (t) => {
  const c = await RawNbdClient.connect(t.context.a.socketPath);
  await c.negotiate('vol-a', false);
  const blocks = new Map<bigint, Buffer>();
  for (let i = 0; i < 64; i++) {
    const data = randomBytes(4096);
    blocks.set(BigInt(1000 + i), data);
    c.request({ type: P.NBD_CMD_WRITE, cookie: BigInt(1000 + i), offset: 16 * MiB + i * 4096, data, flags: i % 8 === 0 ? P.NBD_CMD_FLAG_FUA : 0 });
  }
  const seen = new Set<bigint>();
  for (let i = 0; i < 64; i++) seen.add((await c.readReply()).cookie);
  t.is(seen.size, 64);
  for (let i = 0; i < 64; i++) c.request({ type: P.NBD_CMD_READ, cookie: BigInt(2000 + i), offset: 16 * MiB + i * 4096, length: 4096 });
  for (let i = 0; i < 64; i++) {
    const r = await c.readReply(4096);
    t.true(r.data.equals(blocks.get(r.cookie - 1000n)!));
  }
  c.destroy();
});

test.serial('a read-only export refuses writes with EPERM and serves reads', async (t) => {
  const c = await RawNbdClient.connect(t.context.ro.socketPath);
  const { flags } = await c.negotiate('vol-ro', true);
  t.truthy(flags & P.NBD_FLAG_READ_ONLY);
  c.request({ type: P.NBD_CMD_WRITE, cookie: 1n, offset: 0, data: Buffer.alloc(4096, 1) });
  t.like(await c.readReply(), { error: P.NBD_EPERM, cookie: 1n });
  c.request({ type: P.NBD_CMD_TRIM, cookie: 2n, offset: 0, length: 4096 });
  t.like(await c.readReply(), { error: P.NBD_EPERM, cookie: 2n });
  c.request({ type: P.NBD_CMD_READ, cookie: 3n, offset: 0, length: 4096 });
  const r = await c.readReply();
  t.true(r.data.equals(Buffer.alloc(4096)));
  c.destroy();
});

for (const receiveInPlace of [true, false]) {
  test.serial(`writes split across many socket reads read back intact (${receiveInPlace ? 'received in place' : 'data events'})`, async (t) => {
    const fx = await startExport(t.context.dir, `vol-split-${receiveInPlace}`, 16 * MiB, { receiveInPlace });
    const c = await RawNbdClient.connect(fx.socketPath);
    try {
      await c.negotiate('', true);
      // One 3 MiB write in 997-byte pieces: the header itself arrives split.
      const big = randomBytes(3 * MiB + 100);
      await c.sendInPieces(C.encodeRequest({ type: P.NBD_CMD_WRITE, cookie: 1n, offset: 4096, data: big }), 997);
      t.like(await c.readReply(), { error: 0, cookie: 1n });
      // The header with a few payload bytes, then the rest in two later sends.
      const mid = randomBytes(MiB);
      const req = C.encodeRequest({ type: P.NBD_CMD_WRITE, cookie: 2n, offset: 8 * MiB, data: mid, flags: P.NBD_CMD_FLAG_FUA });
      c.send(req.subarray(0, 40));
      await delay(20);
      c.send(req.subarray(40, 300_000));
      await delay(20);
      c.send(req.subarray(300_000));
      t.like(await c.readReply(), { error: 0, cookie: 2n });
      // A pipeline of writes of mixed sizes in one send.
      const blocks: { offset: number; data: Buffer }[] = [];
      let offset = 10 * MiB;
      for (const n of [4096, 100_000, MiB, 512, 300_000, 2 * MiB + 3]) {
        blocks.push({ offset, data: randomBytes(n) });
        offset += n;
      }
      c.send(Buffer.concat(blocks.map((b, i) => C.encodeRequest({ type: P.NBD_CMD_WRITE, cookie: BigInt(100 + i), offset: b.offset, data: b.data }))));
      const cookies = new Set<bigint>();
      for (const _ of blocks) {
        const r = await c.readReply();
        t.is(r.error, 0);
        cookies.add(r.cookie);
      }
      t.is(cookies.size, blocks.length);
      t.true((await readBack(c, 3n, 4096, big.length)).equals(big));
      t.true((await readBack(c, 4n, 8 * MiB, mid.length)).equals(mid));
      for (const [i, b] of blocks.entries()) t.true((await readBack(c, BigInt(200 + i), b.offset, b.data.length)).equals(b.data), `block ${i}`);
      const onDisk = await readFile(fx.file);
      t.true(onDisk.subarray(4096, 4096 + big.length).equals(big));
    } finally {
      c.destroy();
      await fx.close();
    }
  });
}

test.serial('back-pressure: clients with more than the byte budget in flight get every reply right', async (t) => {
  const budget = new ByteBudget(32 * MiB);
  const fx = await startExport(t.context.dir, 'vol-budget', 160 * MiB, { budget });
  const c1 = await RawNbdClient.connect(fx.socketPath);
  const c2 = await RawNbdClient.connect(fx.socketPath);
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, budget.usedBytes)), 1);
  try {
    await c1.negotiate('', true);
    await c2.negotiate('', false);
    // 96 MiB of writes on one connection and 32 MiB on another, all sent at once.
    const chunks = Array.from({ length: 32 }, () => randomBytes(4 * MiB));
    for (let i = 0; i < 32; i++) (i < 24 ? c1 : c2).request({ type: P.NBD_CMD_WRITE, cookie: BigInt(i), offset: i * 4 * MiB, data: chunks[i]! });
    const seen = new Set<bigint>();
    for (let i = 0; i < 24; i++) seen.add((await c1.readReply()).cookie);
    for (let i = 0; i < 8; i++) seen.add((await c2.readReply()).cookie);
    t.is(seen.size, 32);
    // 96 MiB of reads (replies the client only reads once all are sent) and one 32 MiB read.
    for (let i = 0; i < 24; i++) c1.request({ type: P.NBD_CMD_READ, cookie: BigInt(100 + i), offset: i * 4 * MiB, length: 4 * MiB });
    c2.request({ type: P.NBD_CMD_READ, cookie: 999n, offset: 96 * MiB, length: 32 * MiB });
    for (let i = 0; i < 24; i++) {
      const r = await c1.readReply();
      t.is(r.error, 0);
      t.true(r.data.equals(chunks[Number(r.cookie) - 100]!), `read ${r.cookie}`);
    }
    const last = await c2.readReply(32 * MiB);
    t.like(last, { error: 0, cookie: 999n });
    t.true(last.data.equals(Buffer.concat(chunks.slice(24))));
    t.true(peak <= 32 * MiB, `peak ${peak}`);
    t.true(await eventually(() => budget.usedBytes === 0));
    // A client that stops reading with reads in flight and goes away gives its bytes back.
    const c3 = await RawNbdClient.connect(fx.socketPath);
    await c3.negotiate('', true);
    for (let i = 0; i < 16; i++) c3.request({ type: P.NBD_CMD_READ, cookie: BigInt(i), offset: i * 4 * MiB, length: 4 * MiB });
    t.true(await eventually(() => budget.usedBytes > 0), 'c3\'s reads hold part of the budget before it goes');
    c3.destroy();
    t.true(await eventually(() => budget.usedBytes === 0));
  } finally {
    clearInterval(timer);
    c1.destroy();
    c2.destroy();
    await fx.close();
  }
});

for (const abuse of ABUSE_CASES) {
  test.serial(`abuse: ${abuse.name}`, async (t) => {
    const { a, warnings } = t.context;
    const before = warnings.length;
    const c = await RawNbdClient.connect(a.socketPath);
    try {
      await abuse.run(t, c, a);
    } finally {
      c.destroy();
    }
    if (abuse.warns) {
      // Once the connection is gone nothing more can be logged for it: then count.
      t.true(await eventually(() => warnings.length > before && a.server.stats().connections === 0), 'the warning was logged and the connection closed');
      t.is(warnings.length - before, 1, 'one warn line for the misbehaving client');
    }
    // The export still serves a fresh, well-behaved client.
    const ok = await RawNbdClient.connect(a.socketPath);
    await ok.negotiate('vol-a', true);
    ok.request({ type: P.NBD_CMD_READ, cookie: 7n, offset: 0, length: 512 });
    t.is((await ok.readReply()).error, 0);
    ok.destroy();
  });
}

test.serial('the other export kept working through all the abuse', async (t) => {
  const result = await t.context.traffic.stop();
  t.deepEqual(result.errors, []);
  t.is(result.mismatches, 0);
  t.true(result.rounds > 0);
});

test.serial('close() answers in-flight requests, flushes and ends connections', async (t) => {
  const { dir } = t.context;
  const fx = await startExport(dir, 'vol-close', 4 * MiB);
  const c = await RawNbdClient.connect(fx.socketPath);
  await c.negotiate('', true);
  // The write reaches the device and is held there until close() has been called: it is in
  // flight when the server closes, whatever the machine's speed.
  let reached = (): void => undefined;
  const atDevice = new Promise<void>((r) => (reached = r));
  let release = (): void => undefined;
  const held = new Promise<void>((r) => (release = r));
  const dev = fx.device;
  const write = dev.write.bind(dev);
  dev.write = async (offset, payload, fua) => {
    reached();
    await held;
    return write(offset, payload, fua);
  };
  const writev = dev.writev?.bind(dev);
  if (writev) {
    dev.writev = async (offset, payloads, fua) => {
      reached();
      await held;
      return writev(offset, payloads, fua);
    };
  }
  const data = randomBytes(65536);
  c.request({ type: P.NBD_CMD_WRITE, cookie: 5n, offset: 0, data });
  await atDevice;
  const closing = fx.server.close();
  release();
  t.like(await c.readReply(), { error: 0, cookie: 5n });
  t.true(await c.waitClosed());
  await closing;
  await fx.device.close();
  t.true((await readFile(fx.file)).subarray(0, 65536).equals(data));
});

test.serial('a client that stops reading its replies is cut off, its budget comes back, and other exports carry on', async (t) => {
  const budget = new ByteBudget(40 * MiB);
  const { log, warnings } = recordingLogger();
  const stalled = await startExport(t.context.dir, 'vol-stall', 64 * MiB, { budget, log, replyStallTimeoutMs: 300 });
  const other = await startExport(t.context.dir, 'vol-other', 64 * MiB, { budget });
  const c = await RawNbdClient.connect(stalled.socketPath);
  const o = await RawNbdClient.connect(other.socketPath);
  try {
    await c.negotiate('', true);
    c.stopReading();
    // 32 MiB of reads whose replies the client never takes: they hold most of the budget.
    for (let i = 0; i < 8; i++) c.request({ type: P.NBD_CMD_READ, cookie: BigInt(i), offset: i * 4 * MiB, length: 4 * MiB });
    t.true(await eventually(() => warnings.length > 0 && stalled.server.stats().connections === 0), 'the server disconnected the client that stopped reading');
    t.true(await eventually(() => budget.usedBytes === 0), 'its bytes went back to the shared budget');
    t.true(warnings.some((w) => w.reason === 'client stopped reading its replies'), 'one warning says why');

    // A full-size request on another export now gets the budget it needs.
    await o.negotiate('', true);
    const data = randomBytes(32 * MiB);
    o.request({ type: P.NBD_CMD_WRITE, cookie: 1n, offset: 0, data });
    t.like(await o.readReply(), { error: 0, cookie: 1n });
    o.request({ type: P.NBD_CMD_READ, cookie: 2n, offset: 0, length: 32 * MiB });
    const r = await o.readReply();
    t.is(r.error, 0);
    t.true(r.data.equals(data), 'the other export\'s bytes read back');
  } finally {
    c.destroy();
    o.destroy();
    await stalled.close();
    await other.close();
  }
});
