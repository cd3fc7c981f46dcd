/** The file BlockDevice behind NBD exports (src/pool/file-device.ts), on a temp file. */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Code, isStorageError } from '../../src/common/errors.js';
import type { DeviceId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { openFileDevice } from '../../src/pool/file-device.js';
import { makeTempDir, removeDir } from '../helpers/nbd-fixture.js';

const MiB = 1 << 20;

async function device(size = 8 * MiB): Promise<{ dir: string; file: string; dev: Awaited<ReturnType<typeof openFileDevice>> }> {
  const dir = await makeTempDir();
  const file = join(dir, 'dev.img');
  await writeFile(file, '');
  await truncate(file, size);
  return { dir, file, dev: await openFileDevice(file, 'dev-1' as DeviceId, size, silentLogger()) };
}

test('writes read back, small and large, many at once; holes read as zeros', async (t) => {
  const { dir, file, dev } = await device();
  const blocks = Array.from({ length: 64 }, () => randomBytes(4096));
  await Promise.all(blocks.map((b, i) => dev.write(i * 8192, b, i % 16 === 0)));
  const big = randomBytes(2 * MiB);
  await dev.write(4 * MiB, big);
  const reads = await Promise.all(blocks.map((_, i) => dev.read(i * 8192, 4096)));
  reads.forEach((r, i) => t.true(r.equals(blocks[i]!)));
  t.true((await dev.read(4 * MiB, 2 * MiB)).equals(big));
  t.true((await dev.read(4096, 4096)).equals(Buffer.alloc(4096)));
  await dev.flush();
  t.true((await readFile(file)).subarray(4 * MiB, 6 * MiB).equals(big));
  await dev.close();
  await removeDir(dir);
});

test('writev writes its parts back to back; readInto fills several targets; both small and large, with FUA', async (t) => {
  const { dir, file, dev } = await device();
  const whole = randomBytes(3 * MiB + 1234);
  // Uneven parts, as a payload arrives: a slice with the header's chunk, then blocks.
  const cuts = [0, 1000, 65536, 65537, 300_000, 2 * MiB, whole.length];
  const parts = cuts.slice(1).map((end, i) => whole.subarray(cuts[i], end));
  await dev.writev!(MiB, parts);
  const small = [randomBytes(100), randomBytes(3996)];
  await dev.writev!(512, small, true);
  const targets = [Buffer.alloc(4096), Buffer.alloc(MiB), Buffer.alloc(whole.length - MiB - 4096)];
  await dev.readInto!(MiB, targets);
  t.true(Buffer.concat(targets).equals(whole));
  const back = [Buffer.alloc(1), Buffer.alloc(4095)];
  await dev.readInto!(512, back);
  t.true(Buffer.concat(back).equals(Buffer.concat(small)));
  t.true((await readFile(file)).subarray(MiB, MiB + whole.length).equals(whole));
  await dev.close();
  await removeDir(dir);
});

test('readInto past the end of a shorter file fills zeros in every target', async (t) => {
  const { dir, file, dev } = await device(MiB);
  await dev.write(0, Buffer.alloc(8192, 7));
  await truncate(file, 6000);
  const targets = [Buffer.alloc(4096, 1), Buffer.alloc(4096, 1), Buffer.alloc(300_000, 1)];
  await dev.readInto!(0, targets);
  const all = Buffer.concat(targets);
  t.true(all.subarray(0, 6000).every((x) => x === 7));
  t.true(all.subarray(6000).every((x) => x === 0));
  await dev.close();
  await removeDir(dir);
});

test('trim and writeZeroes read back as zeros; the file keeps its size', async (t) => {
  const { dir, file, dev } = await device();
  await dev.write(0, Buffer.alloc(3 * MiB, 0xee));
  await dev.trim(0, MiB);
  await dev.writeZeroes(MiB, MiB, false);
  await dev.writeZeroes(2 * MiB + 512, 1000, true);
  t.true((await dev.read(0, 2 * MiB)).equals(Buffer.alloc(2 * MiB)));
  const tail = await dev.read(2 * MiB, MiB);
  t.true(tail.subarray(0, 512).every((x) => x === 0xee));
  t.true(tail.subarray(512, 1512).every((x) => x === 0));
  t.true(tail.subarray(1512).every((x) => x === 0xee));
  t.is((await stat(file)).size, 8 * MiB);
  await dev.close();
  await removeDir(dir);
});

test('bytes past the end of a shorter file read as zeros', async (t) => {
  const { dir, file, dev } = await device(MiB);
  await truncate(file, 4096);
  t.true((await dev.read(0, 65536)).equals(Buffer.alloc(65536)));
  await dev.close();
  await removeDir(dir);
});

test('a missing file is NOT_FOUND; a closed device refuses I/O', async (t) => {
  const dir = await makeTempDir();
  const err = await t.throwsAsync(openFileDevice(join(dir, 'missing.img'), 'x' as DeviceId, MiB, silentLogger()));
  t.true(isStorageError(err, Code.NOT_FOUND));
  const { dev, dir: d2 } = await device(MiB);
  await dev.close();
  const closed = await t.throwsAsync(dev.read(0, 512));
  t.true(isStorageError(closed, Code.FAILED_PRECONDITION));
  await removeDir(dir);
  await removeDir(d2);
});
