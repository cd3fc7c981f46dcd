/**
 * Snapshots taken while writes go on (file pool, `onCut`; src/pool/file-cut-copy.ts): the
 * copy holds the device exactly as it was at the cut, writes issued after the cut complete
 * before the copy is whole (they wait only for the chunks they touch), trims and
 * write-zeroes are held back like writes, and a copy that cannot be filled lets writes go
 * on and leaves no device. On xfs (FICLONERANGE runs) and on ext4 (copied chunks).
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, open, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Code, SystemError } from '../../src/common/errors.js';
import { asDeviceId, type DeviceId } from '../../src/common/ids.js';
import { silentLogger, type Logger } from '../../src/common/log.js';
import type { BlockDevice } from '../../src/pool/backend.js';
import { FileBackend } from '../../src/pool/file-backend.js';
import { CUT_CHUNK_BYTES, CutCopy } from '../../src/pool/file-cut-copy.js';
import { loopFsUnavailable, makeLoopFs } from '../helpers/loop-fs.js';
import { requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const BLOCK = 4096;
const SIZE = 96 * MiB;
const tmpIsExt4 = (await statfs(tmpdir())).type === 0xef53;
const xfsMissing = await loopFsUnavailable('xfs');
const id = (s: string): DeviceId => asDeviceId(s);

function stamped(gen: number, block: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let i = 0; i < BLOCK; i += 8) {
    b.writeUInt32LE(gen, i);
    b.writeUInt32LE(block, i + 4);
  }
  return b;
}

function capture(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  return { log: pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) }), lines };
}

/** Every 16th block of the device but its first and last MiB, stamped with generation 1 (the rest holes). */
const stampedBlocks = Array.from({ length: SIZE / BLOCK / 16 }, (_, i) => i * 16).filter((b) => b * BLOCK >= MiB && b * BLOCK < SIZE - MiB);
/** The first and last MiB: written whole before the cut, trimmed and zeroed after it. */
const EDGE = Buffer.alloc(MiB, 0x77);

async function checkCut(t: ExecutionContext, parent: string, method: 'reflink' | 'copy'): Promise<void> {
  const dir = await mkdtemp(join(parent, 'cairn-cut-'));
  const { log, lines } = capture();
  const pool = await FileBackend.open({ dir, log });
  let dev: BlockDevice | undefined;
  try {
    await pool.create(id('src'), SIZE);
    dev = await pool.open(id('src'));
    for (const b of stampedBlocks) await dev.write(b * BLOCK, stamped(1, b));
    await dev.write(0, EDGE);
    await dev.write(SIZE - MiB, EDGE);
    await dev.flush();

    // The cut: from onCut on, generation 2 goes to every stamped block (in a scattered
    // order), a trim to the first MiB and write-zeroes to the last one.
    const writes: Array<Promise<void>> = [];
    let ackedBeforeWhole = 0;
    let whole = false;
    const order = [...stampedBlocks].sort((a, b) => ((a * 7919) % 1009) - ((b * 7919) % 1009));
    const taking = pool.snapshot(id('src'), id('snap'), {
      copy: true,
      onCut: () => {
        for (const b of order) writes.push(dev!.write(b * BLOCK, stamped(2, b)).then(() => void (whole || ackedBeforeWhole++)));
        writes.push(dev!.trim(0, MiB), dev!.writeZeroes(SIZE - MiB, MiB, false));
      },
    });
    const info = await taking;
    whole = true;
    await Promise.all(writes);
    t.is(info.sizeBytes, SIZE);
    t.true(writes.length > stampedBlocks.length, 'onCut was called');
    t.true(ackedBeforeWhole > 0, 'writes after the cut completed while the copy was still being filled');

    const snap = await pool.open(id('snap'));
    try {
      const copy = await snap.read(0, SIZE);
      for (const b of stampedBlocks) {
        if (!copy.subarray(b * BLOCK, (b + 1) * BLOCK).equals(stamped(1, b))) {
          t.fail(`copy block ${b} is not as it was at the cut`);
          return;
        }
      }
      t.true(copy.subarray(0, MiB).equals(EDGE), 'the trim after the cut stayed out of the copy');
      t.true(copy.subarray(SIZE - MiB).equals(EDGE), 'the write-zeroes after the cut stayed out of the copy');
    } finally {
      await snap.close();
    }
    const now = await dev.read(0, SIZE);
    t.true(now.subarray(0, MiB).equals(Buffer.alloc(MiB)), 'the trim reached the device');
    t.true(now.subarray(SIZE - MiB).equals(Buffer.alloc(MiB)), 'the write-zeroes reached the device');
    t.true(now.subarray(16 * BLOCK * 20, 16 * BLOCK * 20 + BLOCK).equals(stamped(2, 16 * 20)), 'writes after the cut reached the device');
    const filled = lines.find((l) => l.msg === 'snapshot copy filled after its cut');
    t.is(filled?.method, method);
    t.true((filled?.onDemandCalls as number) > 0, 'writes asked for their chunks first');
  } finally {
    await dev?.close();
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  }
}

requiring(tmpIsExt4 ? undefined : `needs ${tmpdir()} on ext4 (it is not): set TMPDIR to a directory on ext4`, test)(
  'ext4: the copy is the device at the cut, filled by copies while writes, trims and write-zeroes go on',
  (t) => checkCut(t, tmpdir(), 'copy'),
);

requiring(xfsMissing, test.serial)(
  'xfs: the copy is the device at the cut, filled by FICLONERANGE runs while writes, trims and write-zeroes go on',
  async (t) => {
    const fs = await makeLoopFs('xfs');
    try {
      await checkCut(t, fs.mountPoint, 'reflink');
    } finally {
      await fs.dispose();
    }
  },
);

test('a copy that cannot be filled lets writes go on and fails with the cause', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-cut-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const src = await open(join(dir, 'src'), 'w+');
  const dest = await open(join(dir, 'dest'), 'w+');
  await src.truncate(8 * CUT_CHUNK_BYTES);
  await dest.truncate(8 * CUT_CHUNK_BYTES);
  const readOnly = await open(join(dir, 'dest'), 'r');
  try {
    const copy = new CutCopy(src, readOnly, 8 * CUT_CHUNK_BYTES);
    const wait = copy.before(3 * CUT_CHUNK_BYTES, BLOCK);
    t.truthy(wait, 'a write to a chunk not filled waits');
    await wait;
    const err = await t.throwsAsync(copy.fill(), { instanceOf: SystemError });
    t.is(err?.errnoName, 'EBADF');
    t.is(copy.before(5 * CUT_CHUNK_BYTES, BLOCK), undefined, 'after the failure, writes go ahead');
  } finally {
    await Promise.all([src.close(), dest.close(), readOnly.close()]);
  }
});

test('a failed fill leaves no snapshot device; the source keeps every write', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-cut-'));
  const pool = await FileBackend.open({ dir, log: silentLogger() });
  t.teardown(async () => {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  });
  await pool.create(id('src'), 4 * MiB);
  const dev = await pool.open(id('src'));
  try {
    // onCut throwing is a failure after the cut: the copy must not stay.
    const err = await t.throwsAsync(pool.snapshot(id('src'), id('snap'), { onCut: () => { throw new SystemError(Code.INTERNAL, 'boom', { errno: 5, errnoName: 'EIO', syscall: 'test' }); } }));
    t.is((err as SystemError).errnoName, 'EIO');
    await t.throwsAsync(pool.inspect(id('snap')), { message: /not found/ });
    await dev.write(0, stamped(3, 0));
    t.true((await dev.read(0, BLOCK)).equals(stamped(3, 0)), 'writes go ahead once the attempt failed');
  } finally {
    await dev.close();
  }
});
