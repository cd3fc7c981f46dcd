// The dm pool backend on a real kernel (VM only): pool on loop disks, devices, snapshots,
// growth, low space, restart and reboot.
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { dmList } from '../../src/native/index.js';
import { MIB, dev, makePool, pattern, removePoolDevices, sameBytes } from '../helpers/dm-pool.js';

test('a pool on two loop disks: capacity, devices, bytes read back, delete', async (t) => {
  const p = await makePool(t, [96 * MIB, 96 * MIB]);
  const cap = await p.backend.capacity();
  t.true(cap.totalBytes > 180 * MIB && cap.totalBytes <= 192 * MIB - 4 * MIB, `total ${cap.totalBytes}`);
  t.is(cap.usedBytes, 0);
  t.is(cap.provisionedBytes, 0);

  const info = await p.backend.create(dev('vol-a'), 64 * MIB);
  t.is(info.sizeBytes, 64 * MIB);
  t.regex(info.path, /^\/dev\/(dm-\d+|mapper\/.+)$/);
  t.deepEqual(await p.backend.create(dev('vol-a'), 64 * MIB).then((i) => i.sizeBytes), 64 * MIB, 'create is idempotent');
  const other = await t.throwsAsync(p.backend.create(dev('vol-a'), 32 * MIB), { instanceOf: StorageError });
  t.is(other?.code, Code.ALREADY_EXISTS);

  const device = await p.backend.open(dev('vol-a'));
  const data = pattern(1, 4 * MIB);
  await device.write(60 * MIB, data, true);
  await device.write(0, pattern(2, 65536));
  await device.flush();
  sameBytes(t, await device.read(60 * MIB, 4 * MIB), data);
  sameBytes(t, await device.read(1 * MIB, 4096), Buffer.alloc(4096), 'unwritten blocks read as zeros');
  await device.trim(60 * MIB, 4 * MIB);
  sameBytes(t, await device.read(60 * MIB, 4 * MIB), Buffer.alloc(4 * MIB), 'trimmed range reads as zeros');
  await device.writeZeroes(0, 1000, false);
  sameBytes(t, await device.read(0, 1000), Buffer.alloc(1000));
  sameBytes(t, await device.read(1000, 1000), pattern(2, 65536).subarray(1000, 2000), 'bytes after a zeroed range are intact');
  await device.close();

  const after = await p.backend.inspect(dev('vol-a'));
  t.true(after.allocatedBytes >= 64 * 1024, 'the written block is allocated');
  t.is((await p.backend.capacity()).provisionedBytes, 64 * MIB);

  await p.backend.delete(dev('vol-a'));
  await p.backend.delete(dev('vol-a'));
  t.deepEqual(await p.backend.list(), []);
  t.deepEqual(await p.backend.dmDevices(), [`cairn-${p.tag}-data`, `cairn-${p.tag}-meta`, `cairn-${p.tag}-pool`]);
  const gone = await t.throwsAsync(p.backend.inspect(dev('vol-a')), { instanceOf: StorageError });
  t.is(gone?.code, Code.NOT_FOUND);
});

test('a snapshot keeps the origin as it was; both stay writable', async (t) => {
  const p = await makePool(t, [128 * MIB]);
  await p.backend.create(dev('origin'), 32 * MIB);
  const origin = await p.backend.open(dev('origin'));
  await origin.write(0, pattern(10, 2 * MIB));
  await origin.flush();
  await p.backend.snapshot(dev('origin'), dev('snap-1'));
  await origin.write(0, pattern(11, 1 * MIB), true);
  const snap = await p.backend.open(dev('snap-1'));
  sameBytes(t, await snap.read(0, 2 * MIB), pattern(10, 2 * MIB));
  sameBytes(t, await origin.read(0, 1 * MIB), pattern(11, 1 * MIB));
  await snap.write(0, pattern(12, 4096), true);
  sameBytes(t, await origin.read(0, 4096), pattern(11, 4096), 'writing the snapshot leaves the origin alone');
  await Promise.all([snap.close(), origin.close()]);
  await p.backend.delete(dev('origin'));
  const snapAgain = await p.backend.open(dev('snap-1'));
  sameBytes(t, await snapAgain.read(4096, 4096), pattern(10, 2 * MIB).subarray(4096, 8192), 'the snapshot outlives its origin');
  await snapAgain.close();
});

test('restart and reboot: every device comes back with its bytes', async (t) => {
  const p = await makePool(t, [64 * MIB, 64 * MIB]);
  await p.backend.create(dev('keep'), 16 * MIB);
  const d = await p.backend.open(dev('keep'));
  await d.write(8 * MIB, pattern(20, MIB), true);
  await d.close();
  await p.backend.snapshot(dev('keep'), dev('keep-snap'));
  await p.backend.close();

  // cairnd restart: the kernel kept the devices.
  const reopened = await p.open();
  t.deepEqual((await reopened.list()).map((i) => i.id), ['keep', 'keep-snap']);
  await reopened.close();

  // Reboot: the kernel has none of them.
  await removePoolDevices(p.tag);
  t.deepEqual((await dmList()).filter((x) => x.name.startsWith(`cairn-${p.tag}-`)), []);
  const rebooted = await p.open();
  t.deepEqual((await rebooted.list()).map((i) => i.id), ['keep', 'keep-snap']);
  for (const id of ['keep', 'keep-snap']) {
    const dd = await rebooted.open(dev(id));
    sameBytes(t, await dd.read(8 * MIB, MIB), pattern(20, MIB), id);
    await dd.close();
  }
});

test('growth: a disk joins the live pool while a device is written', async (t) => {
  const p = await makePool(t, [64 * MIB]);
  const before = await p.backend.capacity();
  await p.backend.create(dev('busy'), 48 * MIB);
  const d = await p.backend.open(dev('busy'));
  const extra = await p.addLoopDisk(64 * MIB);
  let stop = false;
  let written = 0;
  const writer = (async () => {
    while (!stop && written < 32) {
      await d.write(written * MIB, pattern(30 + written, MIB), true);
      written++;
    }
  })();
  const grown = await p.backend.addDisk(extra);
  stop = true;
  await writer;
  t.true(grown.totalBytes >= before.totalBytes + 63 * MIB, `grew from ${before.totalBytes} to ${grown.totalBytes}`);
  for (let i = 0; i < written; i++) sameBytes(t, await d.read(i * MIB, MIB), pattern(30 + i, MIB), `MiB ${i}`);
  await d.close();
  const dup = await t.throwsAsync(p.backend.addDisk(extra), { instanceOf: StorageError });
  t.is(dup?.code, Code.ALREADY_EXISTS);
  await p.backend.close();
  await removePoolDevices(p.tag);
  const rebooted = await p.open();
  t.is((await rebooted.capacity()).totalBytes, grown.totalBytes, 'the grown size survives a reboot');
});

test('low space: new devices are refused early; a full pool fails writes to new blocks (EIO) and keeps old data', async (t) => {
  const p = await makePool(t, [40 * MIB], { overcommitRatio: 4 });
  const cap = await p.backend.capacity();
  const tooBig = await t.throwsAsync(p.backend.create(dev('huge'), cap.totalBytes * 4 + 4096 * 1024), { instanceOf: StorageError });
  t.is(tooBig?.code, Code.RESOURCE_EXHAUSTED);
  await p.backend.create(dev('fill'), 64 * MIB);
  const d = await p.backend.open(dev('fill'));
  const first = pattern(40, MIB);
  await d.write(0, first, true);
  let failure: unknown;
  for (let i = 1; i < 64 && failure === undefined; i++) {
    await d.write(i * MIB, pattern(40 + i, MIB), true).catch((err: unknown) => (failure = err));
  }
  t.true(failure instanceof StorageError, 'a write that needs a new block fails');
  t.log(`write failure: ${(failure as Error).message}`);
  const status = await p.backend.poolStatus();
  t.is(status.mode, 'out_of_data_space');
  t.true(status.errorIfNoSpace);
  const refused = await t.throwsAsync(p.backend.create(dev('more'), MIB), { instanceOf: StorageError });
  t.is(refused?.code, Code.RESOURCE_EXHAUSTED);
  t.regex(refused?.message ?? '', /out of data space/);
  sameBytes(t, await d.read(0, MIB), first, 'data written before the pool filled is intact');
  await d.write(0, pattern(99, 4096), true);
  sameBytes(t, await d.read(0, 4096), pattern(99, 4096), 'overwriting an allocated block still works');

  await p.backend.addDisk(await p.addLoopDisk(64 * MIB));
  t.is((await p.backend.poolStatus()).mode, 'rw', 'a new disk makes the pool writable again');
  await d.write(50 * MIB, pattern(50, MIB), true);
  sameBytes(t, await d.read(50 * MIB, MIB), pattern(50, MIB));
  await d.close();
});

test('snapshot copies do not count against the overcommit limit; a restored child does', async (t) => {
  const p = await makePool(t, [40 * MIB]); // overcommit ratio 1: virtual sizes up to the pool's size
  const cap = await p.backend.capacity();
  const size = Math.floor((cap.totalBytes * 0.6) / MIB) * MIB;
  await p.backend.create(dev('vol'), size);
  const d = await p.backend.open(dev('vol'));
  await d.write(0, pattern(21, MIB), true);
  await d.close();
  await p.backend.snapshot(dev('vol'), dev('copy-1'), { copy: true });
  await p.backend.snapshot(dev('vol'), dev('copy-2'), { copy: true });
  t.is((await p.backend.capacity()).provisionedBytes, size, 'two copies of a volume at 60 % of the pool: only the volume counts');
  const child = await t.throwsAsync(p.backend.snapshot(dev('copy-1'), dev('child')), { instanceOf: StorageError });
  t.is(child?.code, Code.RESOURCE_EXHAUSTED, 'a writable child of a copy counts its size: refused past the limit');
  t.regex(child?.message ?? '', /overcommit/);
  const copy = await p.backend.open(dev('copy-2'));
  sameBytes(t, await copy.read(0, MIB), pattern(21, MIB), 'the copy holds the volume\'s data');
  await copy.close();
});

test('a nearly full pool refuses new devices before it is full', async (t) => {
  const p = await makePool(t, [40 * MIB], { overcommitRatio: 2, reservePercent: 50 });
  await p.backend.create(dev('half'), 32 * MIB);
  const d = await p.backend.open(dev('half'));
  for (let i = 0; i < 24; i++) await d.write(i * MIB, pattern(60 + i, MIB));
  await d.flush();
  await d.close();
  const err = await t.throwsAsync(p.backend.create(dev('next'), MIB), { instanceOf: StorageError });
  t.is(err?.code, Code.RESOURCE_EXHAUSTED);
  t.regex(err?.message ?? '', /nearly full/);
  t.is((await p.backend.poolStatus()).mode, 'rw');
});

test('allocatedRanges follows the thin mapping: written blocks are data (flushed first), unwritten and discarded ones are not', async (t) => {
  const p = await makePool(t, [128 * MIB]);
  await p.backend.create(dev('sparse'), 64 * MIB);
  const d = await p.backend.open(dev('sparse'));
  const block = 64 * 1024; // the pool's default block
  await d.write(0, pattern(1, 4096));
  await d.write(10 * MIB, pattern(2, MIB));
  await d.write(40 * MIB, pattern(3, 4 * MIB));
  // No flush here: the writes may still be in the page cache; the call flushes them first.
  const all = await d.allocatedRanges!(0, 64 * MIB, 100);
  t.deepEqual(all.extents, [
    { offset: 0, lengthBytes: block },
    { offset: 10 * MIB, lengthBytes: MIB },
    { offset: 40 * MIB, lengthBytes: 4 * MIB },
  ]);
  t.is(all.endOffset, 64 * MIB);
  const firstTwo = await d.allocatedRanges!(0, 64 * MIB, 2);
  t.is(firstTwo.endOffset, 40 * MIB, 'the next call starts at the third extent');
  await d.trim(40 * MIB, 4 * MIB);
  t.deepEqual((await d.allocatedRanges!(8 * MIB, 56 * MIB, 100)).extents, [{ offset: 10 * MIB, lengthBytes: MIB }], 'discarded blocks are unmapped');
  sameBytes(t, await d.read(10 * MIB, MIB), pattern(2, MIB));
  await d.close();
});
