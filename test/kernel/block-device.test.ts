// The file backend's I/O path (file-device.ts) on real block devices, and why the dm
// backend wraps it (block-device.ts): on a dm-thin device fallocate(PUNCH_HOLE) needs
// WRITE_ZEROES, which dm-thin lacks, so trim goes through BLKDISCARD instead. VM only.
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { openBlockDevice } from '../../src/pool/block-device.js';
import { openFileDevice } from '../../src/pool/file-device.js';
import { MIB, dev, log, makePool, pattern, sameBytes } from '../helpers/dm-pool.js';
import { makeLoopDevice } from '../helpers/loop-fs.js';

test.serial('the file device on a loop device: write, FUA, flush, read back, zero, trim', async (t) => {
  const loop = await makeLoopDevice(32 * MIB);
  t.teardown(() => loop.dispose());
  const d = await openFileDevice(loop.device, dev('loop'), 32 * MIB, log);
  t.teardown(() => d.close());
  await d.write(0, pattern(1, MIB));
  await d.write(31 * MIB, pattern(2, MIB), true);
  await d.flush();
  sameBytes(t, await d.read(0, MIB), pattern(1, MIB));
  sameBytes(t, await d.read(31 * MIB, MIB), pattern(2, MIB));
  await d.writeZeroes(0, 64 * 1024, false);
  sameBytes(t, await d.read(0, 64 * 1024), Buffer.alloc(64 * 1024));
  await d.trim(31 * MIB, MIB);
  sameBytes(t, await d.read(31 * MIB, MIB), Buffer.alloc(MIB), 'a loop device punches holes in its file');
});

test.serial('on a dm-thin device the plain file device cannot trim; the block device can', async (t) => {
  const p = await makePool(t, [64 * MIB]);
  const info = await p.backend.create(dev('thin'), 16 * MIB);
  const plain = await openFileDevice(info.path, dev('thin'), info.sizeBytes, log);
  await plain.write(0, pattern(3, MIB), true);
  const err = await t.throwsAsync(plain.trim(0, MIB), { instanceOf: StorageError });
  t.is(err?.code, Code.UNIMPLEMENTED, `fallocate(PUNCH_HOLE) on dm-thin: ${err?.message}`);
  await plain.close();

  const d = await openBlockDevice(info.path, dev('thin'), info.sizeBytes, 64 * 1024, log);
  t.teardown(() => d.close());
  sameBytes(t, await d.read(0, MIB), pattern(3, MIB));
  const before = (await p.backend.inspect(dev('thin'))).allocatedBytes;
  await d.trim(1000, MIB - 2000);
  sameBytes(t, await d.read(1000, MIB - 2000), Buffer.alloc(MIB - 2000), 'the trimmed range reads as zeros, edges included');
  sameBytes(t, await d.read(0, 1000), pattern(3, MIB).subarray(0, 1000), 'bytes before the range are intact');
  sameBytes(t, await d.read(MIB - 1000, 1000), pattern(3, MIB).subarray(MIB - 1000), 'bytes after the range are intact');
  t.true((await p.backend.inspect(dev('thin'))).allocatedBytes < before, 'whole blocks were unmapped');
  await d.writeZeroes(5 * MIB + 7, 100_000, false);
  sameBytes(t, await d.read(5 * MIB, 200_000), Buffer.alloc(200_000));
});
