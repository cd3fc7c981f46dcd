import test from 'ava';
import { thinAllocatedRanges, toExtents, type ThinMapping } from '../../src/pool/dm-extents.js';

const KiB = 1024;
const BLOCK = 64 * KiB;

/** A pool whose metadata snapshot holds `lines` for every device; records the messages sent. */
function fakePool(lines: string[], opts: { snapshotLeftReserved?: boolean; dumpFails?: boolean } = {}): ThinMapping & { messages: string[] } {
  let reserved = opts.snapshotLeftReserved === true;
  const messages: string[] = [];
  return {
    messages,
    async message(text) {
      messages.push(text);
      if (text === 'reserve_metadata_snap') {
        if (reserved) throw new Error('EBUSY');
        reserved = true;
      } else if (text === 'release_metadata_snap') reserved = false;
    },
    async dump(_thinId, onLine) {
      if (!reserved) throw new Error('no metadata snapshot');
      if (opts.dumpFails) throw new Error('thin_dump failed');
      for (const l of lines) onLine(l);
    },
  };
}

const DUMP = [
  '<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="3000">',
  '  <device dev_id="7" mapped_blocks="9" transaction="2" creation_time="0" snap_time="1">',
  '    <single_mapping origin_block="0" data_block="5" time="0"/>',
  '    <range_mapping origin_begin="1" data_begin="9" length="2" time="0"/>',
  '    <single_mapping origin_block="10" data_block="40" time="1"/>',
  '    <range_mapping origin_begin="100" data_begin="50" length="5" time="1"/>',
  '  </device>',
  '</superblock>',
];

test('the thin mapping becomes merged byte extents clipped to the range, with the snapshot released', async (t) => {
  const pool = fakePool(DUMP);
  const all = await thinAllocatedRanges(pool, 7, BLOCK, 0, 200 * BLOCK, 100);
  t.deepEqual(all.extents, [
    { offset: 0, lengthBytes: 3 * BLOCK },
    { offset: 10 * BLOCK, lengthBytes: BLOCK },
    { offset: 100 * BLOCK, lengthBytes: 5 * BLOCK },
  ]);
  t.is(all.endOffset, 200 * BLOCK);
  t.deepEqual(pool.messages, ['reserve_metadata_snap', 'release_metadata_snap']);
  const inside = await thinAllocatedRanges(pool, 7, BLOCK, 2 * BLOCK + 100, 100 * BLOCK, 100);
  t.deepEqual(inside.extents, [
    { offset: 2 * BLOCK + 100, lengthBytes: BLOCK - 100 },
    { offset: 10 * BLOCK, lengthBytes: BLOCK },
    { offset: 100 * BLOCK, lengthBytes: 2 * BLOCK + 100 },
  ]);
});

test('at most maxExtents; endOffset says where to ask again', async (t) => {
  const first = await thinAllocatedRanges(fakePool(DUMP), 7, BLOCK, 0, 200 * BLOCK, 2);
  t.deepEqual(first.extents.map((e) => e.offset), [0, 10 * BLOCK]);
  t.is(first.endOffset, 100 * BLOCK);
  const rest = await thinAllocatedRanges(fakePool(DUMP), 7, BLOCK, first.endOffset, 200 * BLOCK - first.endOffset, 2);
  t.deepEqual(rest.extents, [{ offset: 100 * BLOCK, lengthBytes: 5 * BLOCK }]);
  t.is(rest.endOffset, 200 * BLOCK);
  t.deepEqual(toExtents([], 0, 10, 1), { extents: [], endOffset: 10 });
});

test('a snapshot left reserved by a crash is released and taken again; a failed dump still releases it', async (t) => {
  const stale = fakePool(DUMP, { snapshotLeftReserved: true });
  t.is((await thinAllocatedRanges(stale, 7, BLOCK, 0, 200 * BLOCK, 100)).extents.length, 3);
  t.deepEqual(stale.messages, ['reserve_metadata_snap', 'release_metadata_snap', 'reserve_metadata_snap', 'release_metadata_snap']);
  const failing = fakePool(DUMP, { dumpFails: true });
  await t.throwsAsync(thinAllocatedRanges(failing, 7, BLOCK, 0, BLOCK, 10), { message: 'thin_dump failed' });
  t.deepEqual(failing.messages, ['reserve_metadata_snap', 'release_metadata_snap']);
});
