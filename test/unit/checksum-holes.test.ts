import test from 'ava';
import { createHash } from 'node:crypto';
import { checksumRegions } from '../../src/replica/checksum.js';
import type { AllocatedRanges, BlockDevice } from '../../src/pool/backend.js';

const REGION = 64 * 1024;

/** A device of `regions` regions whose bytes are `bytes`, reporting `extents` as its data; counts reads. */
function fakeDevice(bytes: Buffer, extents: AllocatedRanges['extents'] | undefined): BlockDevice & { reads: number[] } {
  const dev = {
    reads: [] as number[],
    sizeBytes: bytes.length,
    read: async (offset: number, length: number) => {
      dev.reads.push(offset);
      return Buffer.from(bytes.subarray(offset, offset + length));
    },
    ...(extents ? {
      allocatedRanges: async (offset: number, lengthBytes: number) => ({
        extents: extents.filter((e) => e.offset < offset + lengthBytes && e.offset + e.lengthBytes > offset), endOffset: offset + lengthBytes,
      }),
    } : {}),
  };
  return dev as unknown as BlockDevice & { reads: number[] };
}

test('regions the device reports as holes are not read, and their digests are those of zeros', async (t) => {
  const bytes = Buffer.alloc(8 * REGION);
  bytes.fill(7, 2 * REGION + 100, 2 * REGION + 5000);
  bytes.fill(9, 5 * REGION, 6 * REGION + 10);
  const extents = [{ offset: 2 * REGION, lengthBytes: 4096 * 2 }, { offset: 5 * REGION, lengthBytes: REGION + 4096 }];
  const sparse = fakeDevice(bytes, extents);
  const digests = await checksumRegions(sparse, 0, bytes.length, REGION);
  const expected = Array.from({ length: 8 }, (_, i) => createHash('sha256').update(bytes.subarray(i * REGION, (i + 1) * REGION)).digest());
  t.deepEqual(digests, expected);
  t.deepEqual(sparse.reads, [2 * REGION, 5 * REGION, 6 * REGION], 'only regions with data were read');
  const plain = fakeDevice(bytes, undefined);
  t.deepEqual(await checksumRegions(plain, 0, bytes.length, REGION), expected);
  t.is(plain.reads.length, 8, 'a device that cannot tell is read in full');
});
