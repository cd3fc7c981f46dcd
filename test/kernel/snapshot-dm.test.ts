// Snapshot and restore on the dm backend through /dev/nbdX (VM only; issue 12): cairnd on a
// dm pool, a volume attached with `cairnctl volume attach`, ext4 with files fsynced and a
// writer still appending; `cairnctl snapshot create`; more writes; `cairnctl snapshot
// restore` into a new volume, attached on another /dev/nbdX and mounted (journal replay):
// every file fsynced before the snapshot is there with its sha256, nothing written after it
// is, and e2fsck -fn is clean. What a storage engineer checks with dmsetup: the snapshot is a
// thin device of the same pool sharing the volume's blocks (the pool's used data did not grow
// by what the volume holds), the restored volume is a thin device of that pool too, and after
// the deletes the pool has no thin device left and no data block in use.
import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type { SnapshotMessage, VolumeMessage } from '../../src/cli/api-client.js';
import type { DeviceId } from '../../src/common/ids.js';
import { poolNames, thinName } from '../../src/pool/dm-layout.js';
import { poolTag } from '../../src/pool/dm-recover.js';
import { Daemon } from '../helpers/daemon.js';
import { removePoolDevices } from '../helpers/dm-pool.js';
import { makeLoopDevice } from '../helpers/loop-fs.js';
import { run } from '../helpers/run.js';

const MIB = 1024 * 1024;
const SECTOR = 512;
const VOLUME_BYTES = 128 * MIB;
/** Files written and fsynced before the snapshot: 6 x 4 MiB of data the snapshot must share with the volume. */
const PRE_FILES = 6;
const PRE_FILE_BYTES = 4 * MIB;
/** Minutes, not seconds: under software emulation every step is slow (nothing is timed here). */
const WAIT_MS = 10 * 60_000;

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** `length` bytes that differ per seed and per 512-byte sector (cheap under emulation). */
function content(seed: number, length: number): Buffer {
  const buf = Buffer.alloc(length, (seed * 29 + 3) & 0xff);
  for (let at = 0, i = 0; at + 8 <= length; at += SECTOR, i++) {
    buf.writeUInt32LE(seed >>> 0, at);
    buf.writeUInt32LE(i, at + 4);
  }
  return buf;
}

async function writeSynced(path: string, data: Buffer): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes w-0, w-1, ... into `dir` until `stop` exists: each is its number and a newline,
 * then `seed`, written by dd with conv=fsync. `log` (outside the volume) gets "start i"
 * before and "done i" after each file, so the test knows which files were fsynced when.
 */
const WRITER = `
seed=$1; dir=$2; stop=$3; log=$4; i=0
while [ ! -e "$stop" ]; do
  echo "start $i" >> "$log"
  { echo "$i"; cat "$seed"; } | dd of="$dir/w-$i" bs=64k iflag=fullblock conv=fsync status=none || { echo "writing w-$i failed" >&2; exit 1; }
  echo "done $i" >> "$log"
  i=$((i+1))
done`;

/** The highest index the writer's log has for `what` (start or done); -1 when none. */
function lastLogged(log: string, what: 'start' | 'done'): number {
  if (!existsSync(log)) return -1;
  let last = -1;
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const [verb, n] = line.split(' ');
    if (verb === what && n !== undefined) last = Math.max(last, Number(n));
  }
  return last;
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let waited = 0; !check(); waited += 200) {
    if (waited > WAIT_MS) throw new Error(`gave up waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** dmsetup as an operator runs it (no udev in the guest). */
async function dmsetup(args: string[]): Promise<string> {
  const r = await execa('dmsetup', args, { reject: false, env: { DM_DISABLE_UDEV: '1' } });
  if (r.exitCode !== 0) throw new Error(`dmsetup ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}`);
  return r.stdout.trim();
}

/** The names `dmsetup ls` shows that start with `prefix`. */
async function dmNames(prefix: string): Promise<string[]> {
  const out = await dmsetup(['ls']);
  return out.split('\n').map((l) => l.split(/\s+/)[0] ?? '').filter((n) => n.startsWith(prefix)).sort();
}

/** `dmsetup status <pool>`: 0 <len> thin-pool <tid> <usedMeta>/<totalMeta> <usedData>/<totalData> ... */
async function poolUsedDataBlocks(pool: string): Promise<number> {
  const f = (await dmsetup(['status', pool])).split(/\s+/);
  if (f[2] !== 'thin-pool') throw new Error(`${pool} is not a thin-pool: ${f.join(' ')}`);
  return Number(f[5]!.split('/')[0]);
}

/** `dmsetup table <pool>`: 0 <len> thin-pool <meta> <data> <blockSectors> ... */
async function poolBlockBytes(pool: string): Promise<number> {
  const f = (await dmsetup(['table', pool])).split(/\s+/);
  return Number(f[5]) * SECTOR;
}

/** `dmsetup table <thin>`: 0 <len> thin <pool major:minor> <thin id>. */
async function thinTableOf(name: string): Promise<{ sizeBytes: number; pool: string; thinId: number }> {
  const f = (await dmsetup(['table', name])).split(/\s+/);
  if (f[2] !== 'thin') throw new Error(`${name} is not a thin device: ${f.join(' ')}`);
  return { sizeBytes: Number(f[1]) * SECTOR, pool: f[3]!, thinId: Number(f[4]) };
}

/** `dmsetup status <thin>`: 0 <len> thin <mapped sectors> <highest mapped sector>. */
async function thinMappedBytes(name: string): Promise<number> {
  const f = (await dmsetup(['status', name])).split(/\s+/);
  return Number(f[3]) * SECTOR;
}

async function majorMinor(name: string): Promise<string> {
  return dmsetup(['info', '-c', '--noheadings', '-o', 'major,minor', '--separator', ':', name]);
}

async function ctlJson<T>(d: Daemon, args: string[]): Promise<T> {
  const r = await d.ctl(['-o', 'json', ...args]);
  if (r.exitCode !== 0) throw new Error(`cairnctl ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

async function attach(d: Daemon, name: string): Promise<string> {
  const r = await d.ctl(['volume', 'attach', name]);
  if (r.exitCode !== 0) throw new Error(`cairnctl volume attach ${name} failed: ${r.stderr}`);
  return r.stdout.trim();
}

test.serial('dm pool, /dev/nbdX: a snapshot under a writer restores every file fsynced before it, none written after; it is a thin snapshot sharing blocks; deletes leave the pool empty', async (t) => {
  const disk = await makeLoopDevice(512 * MIB);
  const d = await Daemon.start({ extraArgs: ['--pool-devices', disk.device] });
  const tag = poolTag(join(d.dataDir, 'pool'));
  const names = poolNames(tag);
  const work = join(d.dataDir, 'work');
  const mnt = join(d.dataDir, 'mnt');
  const mntRestored = join(d.dataDir, 'mnt-restored');
  for (const dir of [work, mnt, mntRestored]) mkdirSync(dir);
  const stop = join(work, 'stop');
  const running: { writer?: ReturnType<typeof execa> } = {};
  t.teardown(async () => {
    writeFileSync(stop, '');
    running.writer?.kill('SIGKILL');
    await running.writer?.catch(() => undefined);
    for (const m of [mntRestored, mnt]) await run('umount', [m]).catch(() => undefined);
    await d.stop().catch(() => undefined);
    await removePoolDevices(tag);
    await disk.dispose();
    await d.destroy();
  });
  const client = d.client();
  t.teardown(() => client.close());
  t.is((await client.status()).pool.backend, 'dm', 'auto chose the dm backend');

  // The volume, on /dev/nbdX, ext4, files fsynced, a writer appending.
  await client.createVolume('vol', VOLUME_BYTES);
  const device = await attach(d, 'vol');
  t.regex(device, /^\/dev\/nbd\d+$/);
  await run('mkfs.ext4', ['-q', '-F', device]);
  await run('mount', ['-t', 'ext4', device, mnt]);
  const before = new Map<string, string>();
  for (let i = 0; i < PRE_FILES; i++) {
    const data = content(100 + i, PRE_FILE_BYTES);
    await writeSynced(join(mnt, `pre-${i}`), data);
    before.set(`pre-${i}`, sha(data));
  }
  const seed = join(work, 'seed.bin');
  const seedBytes = content(7, 256 * 1024);
  writeFileSync(seed, seedBytes);
  const writerLog = join(work, 'writer.log');
  const writer = execa('sh', ['-c', WRITER, 'writer', seed, mnt, stop, writerLog], { reject: false });
  running.writer = writer;
  await until('the writer to fsync 3 files', () => lastLogged(writerLog, 'done') >= 2 || writer.exitCode !== null);
  const wFile = (i: number): Buffer => Buffer.concat([Buffer.from(`${i}\n`), seedBytes]);

  // The snapshot, while the writer appends.
  const volumeThin = thinName(names, (await client.getVolume('vol')).replicas[0]!.deviceId as DeviceId);
  const doneBefore = lastLogged(writerLog, 'done');
  const snap = await ctlJson<SnapshotMessage>(d, ['snapshot', 'create', 's1', '--volume', 'vol']);
  const startedBy = lastLogged(writerLog, 'start');
  t.is(snap.name, 's1');
  t.true(snap.readyToUse, 'the snapshot is ready to use');
  t.is(snap.copies.length, 1, 'one copy: the volume has one replica');
  t.log(`writer: w-0..w-${doneBefore} fsynced before the snapshot call, w-${startedBy} the last started when it returned; writes paused ${snap.pauseUs} µs`);

  // dmsetup: the copy is a thin device of the same pool, the volume's size, sharing its blocks.
  const snapThin = thinName(names, snap.id as DeviceId);
  t.true((await dmNames(names.prefix)).includes(snapThin), `dmsetup ls shows the snapshot's thin device ${snapThin}`);
  const poolDev = await majorMinor(names.pool);
  const snapTable = await thinTableOf(snapThin);
  const volTable = await thinTableOf(volumeThin);
  t.is(snapTable.pool, poolDev, 'the snapshot is a thin device of the volume\'s pool');
  t.is(snapTable.sizeBytes, VOLUME_BYTES, 'the snapshot has the volume\'s size');
  t.not(snapTable.thinId, volTable.thinId, 'the snapshot has its own thin id');
  const snapMapped = await thinMappedBytes(snapThin);
  const volMapped = await thinMappedBytes(volumeThin);
  const poolUsed = (await poolUsedDataBlocks(names.pool)) * await poolBlockBytes(names.pool);
  // Only these two thin devices are in the pool: every block mapped by both is counted once
  // in the pool's used data. A copy would make the pool hold both in full.
  const sharedBytes = volMapped + snapMapped - poolUsed;
  t.log(`volume maps ${volMapped} B, snapshot ${snapMapped} B, pool data used ${poolUsed} B: ${sharedBytes} B shared`);
  t.true(snapMapped >= PRE_FILES * PRE_FILE_BYTES, 'the snapshot maps the files written before it');
  t.true(sharedBytes >= 0.9 * PRE_FILES * PRE_FILE_BYTES, `the snapshot shares the volume's blocks: ${sharedBytes} B shared of ${snapMapped} B mapped`);

  // Writes after the snapshot: new files, one overwritten file; the writer goes on.
  for (let i = 0; i < 3; i++) await writeSynced(join(mnt, `after-${i}`), content(200 + i, MIB));
  await writeSynced(join(mnt, 'pre-0'), content(300, PRE_FILE_BYTES));
  await until('the writer to fsync 2 more files after the snapshot', () => lastLogged(writerLog, 'done') >= startedBy + 2 || writer.exitCode !== null);
  writeFileSync(stop, '');
  const w = await writer;
  t.is(w.exitCode, 0, `the writer saw no I/O error: ${String(w.stderr)}`);
  const doneAfter = lastLogged(writerLog, 'done');

  // Restore into a new volume, attach it on another /dev/nbdX, mount it (journal replay).
  const restored = await ctlJson<VolumeMessage>(d, ['snapshot', 'restore', 's1', 'vol-r']);
  t.is(restored.sizeBytes, VOLUME_BYTES);
  const restoredThin = thinName(names, restored.replicas[0]!.deviceId as DeviceId);
  t.is((await thinTableOf(restoredThin)).pool, poolDev, 'the restored volume is a thin device of the same pool');
  const restoredDevice = await attach(d, 'vol-r');
  t.regex(restoredDevice, /^\/dev\/nbd\d+$/);
  t.not(restoredDevice, device, 'the restored volume has its own nbd device');
  await run('mount', ['-t', 'ext4', restoredDevice, mntRestored]);
  for (const [file, sum] of before) t.is(sha(readFileSync(join(mntRestored, file))), sum, `${file} is there as it was at the snapshot`);
  for (let i = 0; i <= doneBefore; i++) t.is(sha(readFileSync(join(mntRestored, `w-${i}`))), sha(wFile(i)), `w-${i}, fsynced before the snapshot, is there`);
  const present = new Set(readdirSync(mntRestored));
  for (let i = 0; i < 3; i++) t.false(present.has(`after-${i}`), `after-${i}, written after the snapshot, is not there`);
  for (let i = startedBy + 1; i <= doneAfter; i++) t.false(present.has(`w-${i}`), `w-${i}, started after the snapshot, is not there`);
  // The volume itself kept its later writes.
  t.is(sha(readFileSync(join(mnt, 'pre-0'))), sha(content(300, PRE_FILE_BYTES)), 'the volume has pre-0 as overwritten after the snapshot');
  await run('umount', [mntRestored]);
  const fsck = await execa('e2fsck', ['-fn', restoredDevice], { reject: false });
  t.is(fsck.exitCode, 0, `e2fsck -fn of the restored volume is clean: ${fsck.stdout}\n${fsck.stderr}`);

  // Deletes: the snapshot first (both volumes stay), then the volumes; the pool ends empty.
  await run('umount', [mnt]);
  await client.detachVolume('vol-r');
  await client.detachVolume('vol');
  const del = await d.ctl(['snapshot', 'delete', 's1']);
  t.is(del.exitCode, 0, `cairnctl snapshot delete: ${del.stderr}`);
  const afterSnapDelete = await dmNames(names.prefix);
  t.false(afterSnapDelete.includes(snapThin), 'the snapshot\'s thin device is gone');
  t.true(afterSnapDelete.includes(volumeThin) && afterSnapDelete.includes(restoredThin), 'the volume and the restored volume stay');
  await client.deleteVolume('vol-r', false);
  await client.deleteVolume('vol', false);
  t.deepEqual(await dmNames(names.prefix), [names.data, names.meta, names.pool].sort(), 'dmsetup ls shows only the pool\'s own devices');
  t.is(await poolUsedDataBlocks(names.pool), 0, 'no data block of the pool is in use');
});
