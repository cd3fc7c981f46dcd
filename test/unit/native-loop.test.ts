// The native calls that need a real block device or a reflink filesystem: a loop-mounted
// xfs (reflink=1) for FICLONE and FIFREEZE/FITHAW, a raw loop device for the block
// ioctls. Without root or loop devices: skipped with the reason, or failed under CI=true.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Code, SystemError } from '../../src/common/errors.js';
import { blockDeviceSize, blockDiscard, blockFlush, ficlone, fsFreeze, fsThaw, loopSetSizeLimit } from '../../src/native/index.js';
import { loopFsUnavailable, makeLoopDevice, makeLoopFs, type LoopFs } from '../helpers/loop-fs.js';
import { requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const xfsMissing = await loopFsUnavailable('xfs');
const loopMissing = await loopFsUnavailable();
const xfsTest = requiring(xfsMissing, test.serial);
const loopTest = requiring(loopMissing, test);

/** A thread of this process in uninterruptible sleep on a superblock's write lock (what a frozen filesystem does to writers). */
function threadBlockedOnFreeze(): boolean {
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const state = stat.charAt(stat.lastIndexOf(')') + 2);
      const wchan = readFileSync(`/proc/self/task/${tid}/wchan`, 'utf8');
      if (state === 'D' && /percpu_rwsem|sb_start_write|rwsem_down_read/.test(wchan)) return true;
    } catch {
      // the thread ended while we looked
    }
  }
  return false;
}

/** Polls `check` (every 10 ms, up to 10 s) for an event; returns whether it happened. */
async function eventually(check: () => boolean): Promise<boolean> {
  for (let i = 0; i < 1000 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  return check();
}

let fs: LoopFs | undefined;
if (xfsMissing === null) {
  test.before(async () => {
    fs = await makeLoopFs('xfs');
  });
  test.after.always(async () => {
    await fs?.dispose();
  });
}

xfsTest('ficlone on xfs with reflink shares the data, and later writes do not leak', async (t) => {
  const src = join(fs!.mountPoint, 'src.img');
  const dst = join(fs!.mountPoint, 'dst.img');
  const original = Buffer.alloc(4 * MiB, 0x11);
  await writeFile(src, original);
  const s = await open(src, 'r+');
  const d = await open(dst, 'w');
  try {
    await ficlone(d.fd, s.fd);
    await s.write(Buffer.alloc(MiB, 0x22), 0, MiB, MiB);
    await s.sync();
  } finally {
    await s.close();
    await d.close();
  }
  t.true((await readFile(dst)).equals(original));
  t.is((await stat(dst)).size, 4 * MiB);
  t.is((await readFile(src))[MiB], 0x22);
});

xfsTest('fsFreeze blocks writers until fsThaw; double freeze is EBUSY', async (t) => {
  const dir = await open(fs!.mountPoint, 'r');
  let written = false;
  let writer: Promise<void> | undefined;
  try {
    await fsFreeze(dir.fd);
    try {
      const again = await t.throwsAsync(fsFreeze(dir.fd), { instanceOf: SystemError });
      t.is(again?.errnoName, 'EBUSY');
      t.is(again?.syscall, 'ioctl(FIFREEZE)');
      writer = writeFile(join(fs!.mountPoint, 'during-freeze'), 'x').then(() => {
        written = true;
      });
      // The event that proves it: the writer's thread sleeps in the kernel on the frozen
      // filesystem's write lock (not a guess that 300 ms were enough for it to get there).
      t.true(await eventually(threadBlockedOnFreeze), 'no thread of this process waits on the frozen filesystem');
      t.false(written, 'a write completed on a frozen filesystem');
    } finally {
      await fsThaw(dir.fd);
    }
    await writer;
    t.true(written);
    const thawAgain = await t.throwsAsync(fsThaw(dir.fd), { instanceOf: SystemError });
    t.is(thawAgain?.errnoName, 'EINVAL');
  } finally {
    await dir.close();
  }
});

loopTest('blockDeviceSize, blockFlush and blockDiscard on a loop device', async (t) => {
  const loop = await makeLoopDevice(16 * MiB);
  try {
    const dev = await open(loop.device, 'r+');
    try {
      t.is(await blockDeviceSize(dev.fd), 16 * MiB);
      await dev.write(Buffer.alloc(2 * MiB, 0x33), 0, 2 * MiB, 0);
      await blockFlush(dev.fd);
      const allocated = (await stat(loop.image)).blocks * 512;
      t.true(allocated >= 2 * MiB, `image allocated ${allocated}`);
      await blockDiscard(dev.fd, 0, MiB);
      const back = Buffer.alloc(2 * MiB);
      await dev.read(back, 0, 2 * MiB, 0);
      t.true(back.subarray(0, MiB).equals(Buffer.alloc(MiB)));
      t.true(back.subarray(MiB).equals(Buffer.alloc(MiB, 0x33)));
      const err = await t.throwsAsync(blockDiscard(dev.fd, 1, 4096), { instanceOf: SystemError });
      t.is(err?.errnoName, 'EINVAL');
      t.is(err?.code, Code.INVALID_ARGUMENT);
    } finally {
      await dev.close();
    }
  } finally {
    await loop.dispose();
  }
});

loopTest('loopSetSizeLimit sets a bound loop device\'s size, down and back up within its file; a non-loop fd is refused', async (t) => {
  const loop = await makeLoopDevice(8 * MiB);
  t.teardown(() => loop.dispose());
  const fh = await open(loop.device, 'r');
  t.teardown(() => fh.close());
  await loopSetSizeLimit(fh.fd, 4 * MiB);
  t.is(await blockDeviceSize(fh.fd), 4 * MiB);
  await loopSetSizeLimit(fh.fd, 6 * MiB);
  t.is(await blockDeviceSize(fh.fd), 6 * MiB);
  t.is(readFileSync(`/sys/block/${loop.device.slice('/dev/'.length)}/loop/sizelimit`, 'utf8').trim(), String(6 * MiB));
  const file = await open(loop.image, 'r');
  t.teardown(() => file.close());
  const err = await t.throwsAsync(loopSetSizeLimit(file.fd, MiB), { instanceOf: SystemError });
  t.is(err?.syscall, 'ioctl(LOOP_GET_STATUS64)');
});
