// A dm-pool volume served over NBD by this process and attached on /dev/nbdX, with ext4
// mounted and a writer running (VM only):
// - snapshot: fsfreeze, snapshot, thaw; the snapshot mounted read-only holds exactly what
//   the filesystem held at the freeze;
// - growth: a disk joins the pool while the volume is mounted and written.
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { KernelAttacher } from '../../src/engine/kernel-attach.js';
import { NbdExportServer } from '../../src/engine/nbd/export-server.js';
import type { BlockDevice } from '../../src/pool/backend.js';
import { MIB, dev, log, makePool, type TestPool } from '../helpers/dm-pool.js';
import { run } from '../helpers/run.js';

interface Mounted {
  pool: TestPool;
  mnt: string;
  device: string;
}

/** A volume of `volumeMiB` on a pool of `diskMiB` disks, ext4 on /dev/nbdX, mounted. */
async function mountedVolume(t: ExecutionContext, diskMiB: number[], volumeMiB: number): Promise<Mounted> {
  const pool = await makePool(t, diskMiB.map((m) => m * MIB), { overcommitRatio: 8 });
  await pool.backend.create(dev('vol'), volumeMiB * MIB);
  const device: BlockDevice = await pool.backend.open(dev('vol'));
  const server = new NbdExportServer({ name: 'vol', device, log });
  const sock = join(pool.dir, 'vol.sock');
  await server.listen(sock);
  const attacher = new KernelAttacher({ log, runDir: join(pool.dir, 'attach') });
  const { devicePath } = await attacher.attach('vol', sock);
  const mnt = join(pool.dir, 'mnt');
  mkdirSync(mnt);
  t.teardown(async () => {
    await run('umount', [mnt]).catch(() => undefined);
    await attacher.detachAll();
    await server.close();
    await device.close();
  });
  t.regex(devicePath, /^\/dev\/nbd\d+$/);
  await run('mkfs.ext4', ['-q', '-F', devicePath]);
  await run('mount', ['-t', 'ext4', devicePath, mnt]);
  return { pool, mnt, device: devicePath };
}

/**
 * A shell loop writing 256 KiB files w-0, w-1, ... into `dir` until killed: the file's number,
 * then one random 256 KiB block made once (/dev/urandom is slow under emulation).
 */
function startWriter(dir: string): ResultPromise {
  const seed = join(dir, '..', 'seed.bin');
  return execa('sh', ['-c', `head -c 262144 /dev/urandom > "${seed}"; i=0; while :; do { echo "$i"; cat "${seed}"; } > "${dir}/w-$i"; i=$((i+1)); done`], { reject: false });
}

async function waitForFiles(dir: string, count: number): Promise<void> {
  while ((await readdir(dir)).filter((f) => f.startsWith('w-')).length < count) await new Promise((r) => setTimeout(r, 100));
}

async function sums(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of (await readdir(dir)).filter((n) => n.startsWith('w-')).sort()) {
    out.set(f, createHash('sha256').update(await readFile(join(dir, f))).digest('hex'));
  }
  return out;
}

test.serial('snapshot of a mounted volume under a writer: fsfreeze, snapshot, thaw; the snapshot holds the frozen state', async (t) => {
  const m = await mountedVolume(t, [256], 128);
  const writer = startWriter(m.mnt);
  t.teardown(() => void writer.kill('SIGKILL'));
  await waitForFiles(m.mnt, 8);
  let frozen: Map<string, string>;
  await run('fsfreeze', ['-f', m.mnt]);
  try {
    frozen = await sums(m.mnt);
    await m.pool.backend.snapshot(dev('vol'), dev('vol-snap'));
  } finally {
    await run('fsfreeze', ['-u', m.mnt]);
  }
  await waitForFiles(m.mnt, frozen.size + 4);
  writer.kill('SIGKILL');
  await writer;
  t.true(frozen.size >= 8);

  const snap = await m.pool.backend.inspect(dev('vol-snap'));
  const snapMnt = join(m.pool.dir, 'snap');
  mkdirSync(snapMnt);
  await run('mount', ['-t', 'ext4', '-o', 'ro', snap.path, snapMnt]);
  t.teardown(() => run('umount', [snapMnt]).then(() => undefined, () => undefined));
  const inSnapshot = await sums(snapMnt);
  t.deepEqual([...inSnapshot.entries()], [...frozen.entries()], 'the snapshot has exactly the files and bytes of the frozen filesystem');
  const live = await sums(m.mnt);
  t.true(live.size > frozen.size, 'the live volume went on after the thaw');
});

test.serial('growth: a disk joins the pool while the volume is mounted and written', async (t) => {
  const m = await mountedVolume(t, [32], 160);
  const writer = startWriter(m.mnt);
  t.teardown(() => void writer.kill('SIGKILL'));
  await waitForFiles(m.mnt, 4);
  const before = await m.pool.backend.capacity();
  const grown = await m.pool.backend.addDisk(await m.pool.addLoopDisk(128 * MIB));
  t.true(grown.totalBytes > before.totalBytes + 120 * MIB);
  // Write past what the pool held before it grew.
  await waitForFiles(m.mnt, Math.ceil(before.totalBytes / (256 * 1024)) + 16);
  writer.kill('SIGKILL');
  await writer;
  await run('sync', []);
  const written = await sums(m.mnt);
  await run('umount', [m.mnt]);
  await run('mount', ['-t', 'ext4', m.device, m.mnt]);
  const reread = await sums(m.mnt);
  t.deepEqual([...reread.entries()], [...written.entries()], 'every file reads back after a remount');
  t.is((await m.pool.backend.poolStatus()).mode, 'rw');
});
