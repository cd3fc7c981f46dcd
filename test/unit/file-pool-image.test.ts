// The file pool's xfs-image layout on this machine's host filesystem: devices on an xfs
// image the pool makes and mounts, so snapshots are reflinks even on ext4 (they cost the
// host no space until written); the mount's life across close, a simulated kill -9 and
// reopen; and `auto`, which picks the layout once and records it. Real loop devices, real
// xfs: needs root, losetup and mkfs.xfs.
import test from 'ava';
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { Code, StorageError } from '../../src/common/errors.js';
import { asDeviceId } from '../../src/common/ids.js';
import type { Logger } from '../../src/common/log.js';
import { FileBackend, type FileBackendOptions } from '../../src/pool/file-backend.js';
import { canReflink } from '../../src/pool/file-layout.js';
import { loopFsUnavailable } from '../helpers/loop-fs.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const IMAGE_BYTES = 2048 * MiB;
const hostCanReflink = await canReflink(tmpdir());

interface LogLine { msg: string; [key: string]: unknown }

function capture(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}

async function mountedAt(path: string): Promise<string | undefined> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const line = text.split('\n').find((l) => l.split(' ')[4] === path);
  if (!line) return undefined;
  const fields = line.split(' ');
  return fields[fields.indexOf('-', 6) + 2];
}

/** Unmounts what a test left (a "killed" pool) and removes the dir. */
async function cleanup(dir: string): Promise<void> {
  const xfs = join(dir, 'xfs');
  if (await mountedAt(xfs)) await run('umount', [xfs]);
  await rm(dir, { recursive: true, force: true });
}

async function newDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-xfsimg-'));
  t.teardown(() => cleanup(dir));
  return dir;
}

function openPool(dir: string, log: Logger, options: Partial<FileBackendOptions> = {}): Promise<FileBackend> {
  return FileBackend.open({ dir, log, layout: 'xfs-image', imageSizeBytes: IMAGE_BYTES, ...options });
}

const imageBlocks = async (dir: string): Promise<number> => (await stat(join(dir, 'xfs-pool.img'))).blocks * 512;

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

if (prerequisitesMet('file pool xfs-image layout', await loopFsUnavailable('xfs'))) {
  test.serial('a snapshot on the xfs image is a reflink: the host image does not grow, and the snapshot keeps its data', async (t) => {
    const dir = await newDir(t);
    const { log, lines } = capture();
    const pool = await openPool(dir, log);
    t.is(pool.layout, 'xfs-image');
    t.truthy(await mountedAt(join(dir, 'xfs')), 'the image is mounted at <pool>/xfs');
    const src = asDeviceId('src');
    const snap = asDeviceId('snap');
    const info = await pool.create(src, 64 * MiB);
    t.true(info.path.startsWith(join(dir, 'xfs', 'devices')));
    const dev = await pool.open(src);
    const data = Buffer.alloc(32 * MiB, 0xa5);
    await dev.write(0, data);
    await dev.flush();
    const before = await imageBlocks(dir);
    await pool.snapshot(src, snap);
    await dev.flush();
    const after = await imageBlocks(dir);
    t.true(after - before < 4 * MiB, `the host image grew by ${after - before} bytes for a snapshot of 32 MiB of data`);
    t.false(lines.some((l) => l.msg === 'pool filesystem cannot reflink; snapshots are full copies'));

    await dev.write(0, Buffer.alloc(MiB, 0x11));
    await dev.flush();
    const snapDev = await pool.open(snap);
    t.true((await snapDev.read(0, MiB)).equals(data.subarray(0, MiB)), 'the snapshot reads the data as of the snapshot');
    t.true((await snapDev.read(31 * MiB, MiB)).equals(data.subarray(0, MiB)));
    t.true((await dev.read(0, MiB)).equals(Buffer.alloc(MiB, 0x11)), 'the source has its new data');

    const ranges = await snapDev.allocatedRanges!(0, 64 * MiB, 100);
    const allocated = ranges.extents.reduce((n, e) => n + e.lengthBytes, 0);
    t.true(allocated >= 32 * MiB && allocated < 40 * MiB, `SEEK_DATA sees the written 32 MiB (saw ${allocated})`);
    await snapDev.close();
    await dev.close();

    const cap = await pool.capacity();
    const host = await statfs(dir);
    t.true(cap.freeBytes <= host.bavail * host.bsize, 'free bytes never above the host filesystem\'s');
    t.true(cap.totalBytes <= IMAGE_BYTES && cap.totalBytes > IMAGE_BYTES / 2);

    const full = await imageBlocks(dir);
    await pool.delete(src);
    await pool.delete(snap);
    // -o discard gives the space back to the host file when xfs commits the free.
    await waitFor('the host image to shrink after deletes', async () => full - (await imageBlocks(dir)) >= 24 * MiB);
    await pool.close();
    t.is(await mountedAt(join(dir, 'xfs')), undefined, 'close unmounts the image');
    const { stdout } = await run('losetup', ['-j', join(dir, 'xfs-pool.img')]);
    t.is(stdout.trim(), '', 'no loop device is left on the image');
  });

  test.serial('reopen after a kill (the mount left in place) reuses the mount and keeps the devices', async (t) => {
    const dir = await newDir(t);
    const first = await openPool(dir, capture().log);
    await first.create(asDeviceId('keep'), 16 * MiB);
    const dev = await first.open(asDeviceId('keep'));
    await dev.write(4096, Buffer.alloc(4096, 7));
    await dev.close();
    const source = await mountedAt(join(dir, 'xfs'));
    // No close(): as after kill -9, the mount stays.
    const { log, lines } = capture();
    const second = await openPool(dir, log, { imageSizeBytes: undefined });
    t.is(await mountedAt(join(dir, 'xfs')), source, 'the same loop device stays mounted');
    t.true(lines.some((l) => l.msg === 'xfs pool image already mounted; reused'));
    const again = await second.open(asDeviceId('keep'));
    t.true((await again.read(4096, 4096)).equals(Buffer.alloc(4096, 7)));
    await again.close();
    await second.close();
    t.is(await mountedAt(join(dir, 'xfs')), undefined);

    const third = await openPool(dir, capture().log);
    t.deepEqual((await third.list()).map((d) => d.id), ['keep'], 'an unmounted image is mounted again with its devices');
    await third.close();
  });

  test.serial('a pool refuses a mount point that holds another filesystem', async (t) => {
    const dir = await newDir(t);
    await mkdir(join(dir, 'xfs'));
    await run('mount', ['-t', 'tmpfs', 'tmpfs', join(dir, 'xfs')]);
    t.teardown(() => run('umount', [join(dir, 'xfs')]).then(() => undefined, () => undefined));
    const err = await t.throwsAsync(openPool(dir, capture().log), { instanceOf: StorageError });
    t.is(err?.code, Code.FAILED_PRECONDITION);
    t.regex(err?.message ?? '', /not the pool's image.*unmount it/);
  });

  const onExt4 = hostCanReflink ? test.skip : test.serial;
  onExt4('auto picks xfs-image where the host filesystem cannot reflink, records it and follows the record', async (t) => {
    const dir = await newDir(t);
    const { log, lines } = capture();
    const pool = await openPool(dir, log, { layout: 'auto' });
    t.is(pool.layout, 'xfs-image');
    t.like(lines.find((l) => l.msg === 'file pool layout chosen'), { layout: 'xfs-image', reason: 'the pool filesystem cannot reflink' });
    t.like(JSON.parse(await readFile(join(dir, 'layout.json'), 'utf8')), { layout: 'xfs-image' });
    await pool.close();
    const reopened = await openPool(dir, capture().log, { layout: 'auto' });
    t.is(reopened.layout, 'xfs-image');
    await reopened.close();
    const err = await t.throwsAsync(FileBackend.open({ dir, log: capture().log, layout: 'direct' }), { instanceOf: StorageError });
    t.is(err?.code, Code.FAILED_PRECONDITION);
    t.regex(err?.message ?? '', /uses the xfs-image layout/);
  });

  test.serial('an existing direct pool with devices and no record stays direct under auto', async (t) => {
    const dir = await newDir(t);
    await mkdir(join(dir, 'devices'));
    await writeFile(join(dir, 'devices', 'old.img'), Buffer.alloc(4096, 1));
    const { log, lines } = capture();
    const pool = await FileBackend.open({ dir, log, layout: 'auto' });
    t.is(pool.layout, 'direct');
    t.like(lines.find((l) => l.msg === 'file pool layout chosen'), { layout: 'direct', reason: 'the pool has devices made in the direct layout' });
    t.deepEqual((await pool.list()).map((d) => d.id), ['old']);
    await pool.close();
    t.is(await mountedAt(join(dir, 'xfs')), undefined, 'nothing was mounted');
    const err = await t.throwsAsync(FileBackend.open({ dir, log: capture().log, layout: 'xfs-image' }), { instanceOf: StorageError });
    t.is(err?.code, Code.FAILED_PRECONDITION);
  });

  test.serial('on tmpfs the pool works; where the kernel refuses O_DIRECT there (before Linux 6.6) the loop device goes without direct I/O and a warning says so', async (t) => {
    const dir = await newDir(t);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=2100m', 'cairn-test-tmpfs', dir]);
    t.teardown(async () => {
      if (await mountedAt(join(dir, 'xfs'))) await run('umount', [join(dir, 'xfs')]);
      await run('umount', [dir]);
    });
    const { log, lines } = capture();
    const pool = await openPool(dir, log);
    t.is(pool.layout, 'xfs-image');
    t.truthy(await mountedAt(join(dir, 'xfs')));
    const directRefused = await open(join(dir, 'probe'), fsConstants.O_CREAT | fsConstants.O_RDWR | fsConstants.O_DIRECT).then(
      async (h) => (await h.close(), false),
      () => true,
    );
    t.is(lines.some((l) => l.msg.startsWith('loop device without direct I/O')), directRefused, `O_DIRECT on this tmpfs ${directRefused ? 'refused: the fallback is logged' : 'accepted: no fallback'}`);
    const id = asDeviceId('on-tmpfs');
    await pool.create(id, 8 * MiB);
    const dev = await pool.open(id);
    await dev.write(MiB, Buffer.alloc(MiB, 0x5c));
    await dev.flush();
    t.true((await dev.read(MiB, MiB)).equals(Buffer.alloc(MiB, 0x5c)));
    await dev.close();
    await pool.close();
  });
}
