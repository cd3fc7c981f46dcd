// The native file calls on the host's temp filesystem: fallocate, seek, ficlone's
// refusal on a filesystem without reflink, and typed errors for bad input.
import test from 'ava';
import { mkdtemp, open, rm, statfs, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError, SystemError } from '../../src/common/errors.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  blockDeviceSize,
  fallocate,
  ficlone,
  ficloneRange,
  fsThaw,
  punchHole,
  seekData,
  seekHole,
  zeroRange,
} from '../../src/native/index.js';
import { requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const EXT4_MAGIC = 0xef53;
const tmpIsExt4 = (await statfs(tmpdir())).type === EXT4_MAGIC;

async function withFile(fn: (fh: FileHandle, path: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-native-'));
  const path = join(dir, 'f.img');
  const fh = await open(path, 'w+');
  try {
    await fn(fh, path);
  } finally {
    await fh.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function fill(fh: FileHandle, sizeBytes: number, byte: number): Promise<void> {
  await fh.write(Buffer.alloc(sizeBytes, byte), 0, sizeBytes, 0);
  await fh.sync();
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await fh.read(buf, 0, length, offset);
  return buf;
}

test('fallocate PUNCH_HOLE makes the range read as zeros and frees its blocks', async (t) => {
  await withFile(async (fh) => {
    await fill(fh, MiB, 0xab);
    const before = await fh.stat();
    await fallocate(fh.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 128 * 1024, 256 * 1024);
    const after = await fh.stat();
    t.true(after.blocks < before.blocks, `st_blocks ${before.blocks} -> ${after.blocks}`);
    t.is(after.blocks, before.blocks - (256 * 1024) / 512);
    t.is(after.size, MiB);
    t.true((await readAt(fh, 128 * 1024, 256 * 1024)).equals(Buffer.alloc(256 * 1024)));
    t.true((await readAt(fh, 0, 128 * 1024)).equals(Buffer.alloc(128 * 1024, 0xab)));
    t.true((await readAt(fh, 384 * 1024, 640 * 1024)).equals(Buffer.alloc(640 * 1024, 0xab)));
  });
});

test('punchHole and zeroRange read back as zeros and keep the size', async (t) => {
  await withFile(async (fh) => {
    await fill(fh, MiB, 0x5a);
    await punchHole(fh.fd, 0, 4096);
    await zeroRange(fh.fd, 8192, 3 * 4096 + 100);
    t.is((await fh.stat()).size, MiB);
    t.true((await readAt(fh, 0, 4096)).equals(Buffer.alloc(4096)));
    t.true((await readAt(fh, 4096, 4096)).equals(Buffer.alloc(4096, 0x5a)));
    t.true((await readAt(fh, 8192, 3 * 4096 + 100)).equals(Buffer.alloc(3 * 4096 + 100)));
    t.true((await readAt(fh, 8192 + 3 * 4096 + 100, 10)).equals(Buffer.alloc(10, 0x5a)));
  });
});

test('fallocate mode 0 preallocates and grows the file', async (t) => {
  await withFile(async (fh) => {
    await fallocate(fh.fd, 0, 0, MiB);
    const st = await fh.stat();
    t.is(st.size, MiB);
    t.true(st.blocks * 512 >= MiB);
  });
});

test('seekData and seekHole find the data of a sparse file', async (t) => {
  await withFile(async (fh) => {
    await fh.truncate(4 * MiB);
    await fh.write(Buffer.alloc(4096, 1), 0, 4096, MiB);
    await fh.sync();
    t.is(await seekData(fh.fd, 0), MiB);
    t.is(await seekHole(fh.fd, MiB), MiB + 4096);
    t.is(await seekData(fh.fd, 2 * MiB), null);
    t.is(await seekHole(fh.fd, 2 * MiB), 2 * MiB);
    t.is(await seekHole(fh.fd, 5 * MiB), null);
  });
});

requiring(tmpIsExt4 ? undefined : `needs ${tmpdir()} on ext4 (it is not): set TMPDIR to a directory on ext4`, test)(
  'ficlone on ext4 fails with EOPNOTSUPP, EXDEV or EINVAL',
  async (t) => {
    await withFile(async (src, path) => {
      await fill(src, 64 * 1024, 7);
      const dest = await open(`${path}.clone`, 'w');
      try {
        const err = await t.throwsAsync(ficlone(dest.fd, src.fd), { instanceOf: SystemError });
        t.true(['EOPNOTSUPP', 'EXDEV', 'EINVAL'].includes(err!.errnoName), err!.errnoName);
        t.is(err!.syscall, 'ioctl(FICLONE)');
        t.true([Code.UNIMPLEMENTED, Code.INVALID_ARGUMENT].includes(err!.code));
      } finally {
        await dest.close();
      }
    });
  },
);

test('bad arguments are INVALID_ARGUMENT StorageErrors, checked before the native call', async (t) => {
  await withFile(async (fh) => {
    const cases: Array<[string, () => Promise<unknown>]> = [
      ['negative fd', () => fallocate(-1, 0, 0, 4096)],
      ['negative offset', () => fallocate(fh.fd, 0, -4096, 4096)],
      ['zero length', () => fallocate(fh.fd, 0, 0, 0)],
      ['unsafe offset', () => fallocate(fh.fd, 0, 2 ** 60, 4096)],
      ['NaN length', () => punchHole(fh.fd, 0, Number.NaN)],
      ['fractional offset', () => seekData(fh.fd, 1.5)],
      ['fd out of range', () => ficlone(2 ** 40, fh.fd)],
      ['zero-length clone range (the kernel would clone to the end of the file)', () => ficloneRange(fh.fd, fh.fd, 0, 0, 0)],
    ];
    for (const [name, call] of cases) {
      const err = await t.throwsAsync(call(), { instanceOf: StorageError }, name);
      t.is(err?.code, Code.INVALID_ARGUMENT, name);
      t.false(err instanceof SystemError, name);
    }
  });
});

test('an fd that is not open gives a SystemError EBADF naming the call', async (t) => {
  const fd = 1_000_000;
  const err = await t.throwsAsync(fallocate(fd, 0, 0, 4096), { instanceOf: SystemError });
  t.is(err?.errnoName, 'EBADF');
  t.is(err?.errno, 9);
  t.is(err?.syscall, 'fallocate');
  const err2 = await t.throwsAsync(ficlone(fd, fd), { instanceOf: SystemError });
  t.is(err2?.errnoName, 'EBADF');
});

test('block and freeze ioctls on a regular file fail with typed errors', async (t) => {
  await withFile(async (fh) => {
    const size = await t.throwsAsync(blockDeviceSize(fh.fd), { instanceOf: SystemError });
    t.is(size?.errnoName, 'ENOTTY');
    t.is(size?.syscall, 'ioctl(BLKGETSIZE64)');
    t.is(size?.code, Code.INVALID_ARGUMENT);
    const thaw = await t.throwsAsync(fsThaw(fh.fd), { instanceOf: SystemError });
    t.is(thaw?.syscall, 'ioctl(FITHAW)');
  });
});
