// Durability proof (VM only): after a power loss, every write cairnd acknowledged as
// durable is on the disk. The kill -9 tests keep the page cache, so they cannot show this.
//
// Setup: cairnd with the file pool backend, its pool on ext4 made on a dm-log-writes
// device. The file backend on a filesystem is the configuration where durability is the
// most work: a FLUSH is fdatasync of a sparse replica file, so ext4 must write the data and
// commit the block allocations (its journal) and pass a FLUSH to the disk; a FUA write is
// pwrite then fdatasync. (The dm backend writes to a thin device, and the same writer checks
// would apply there; this test covers the path with a filesystem in the middle.)
// dm-log-writes records each write only once it has reached stable storage (after the next
// FLUSH, or at once with FUA), so replaying its log up to a mark rebuilds the disk as a
// power loss at that moment leaves it: nothing that was only in a cache survives. Periodic
// writeback is switched off in the guest while the test runs, so the only way data reaches
// the disk is cairnd's FLUSH and FUA handling.
//
// The verified writer runs against the volume over NBD in two phases, on separate halves
// of it: FLUSH every 40 writes and no FUA, then FUA on every third write and no FLUSH.
// At four points (in the middle of each phase, while writes are in flight, and at its end)
// the test takes the writer's record of what the server promised durable (writes
// acknowledged before an acknowledged FLUSH was sent, and acknowledged FUA writes) and then
// places a mark. Afterwards, for each mark: replay the log onto a fresh image, mount it
// (ext4 recovers its journal as after a real power loss), and read the replica file: every
// promised block must hold its promised generation or a later one, and no block may hold a
// write issued after the mark.
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Daemon } from '../helpers/daemon.js';
import { uniqueTag } from '../helpers/dm-pool.js';
import { makeLogWritesDevice, readWriteLog, replayWriteLog, type LogWritesDevice, type WriteLog } from '../helpers/dm-log-writes.js';
import { verifyDurable, type DurabilityReport } from '../helpers/durability-check.js';
import { run } from '../helpers/run.js';
import { NbdBlockClient, VerifiedWriter } from '../helpers/verified-writer.js';

const MIB = 1024 * 1024;
const DATA_DISK_BYTES = 128 * MIB;
const LOG_DISK_BYTES = 2048 * MIB;
const VOLUME_BYTES = 64 * MIB;
const BLOCK_BYTES = 4096;
const HALF_BLOCKS = VOLUME_BYTES / BLOCK_BYTES / 2;
const WRITES_PER_PHASE = 320;
const WRITEBACK_SYSCTL = '/proc/sys/vm/dirty_writeback_centisecs';

interface Point {
  label: string;
  writer: VerifiedWriter;
  promised: Map<number, number>;
  issuedBefore: number;
}

/** Takes the writer's promises, then marks the log; generations issued once the mark is queued bound the check. */
async function powerLossPoint(lw: LogWritesDevice, label: string, writer: VerifiedWriter): Promise<Point> {
  const promised = writer.durableGenerations();
  await lw.mark(label);
  return { label, writer, promised, issuedBefore: writer.generationsIssued };
}

/** Runs `writes` writes and places a point half-way (writes in flight) and one at the end. */
async function phase(lw: LogWritesDevice, name: string, writer: VerifiedWriter): Promise<Point[]> {
  const running = writer.runFor({ writes: WRITES_PER_PHASE });
  await writer.waitForAcks(WRITES_PER_PHASE / 2, Infinity);
  const mid = await powerLossPoint(lw, `${name}-mid`, writer);
  await running;
  return [mid, await powerLossPoint(lw, `${name}-end`, writer)];
}

/** Replays the log up to the point's mark onto a fresh image, mounts it and checks the replica file. */
async function checkPoint(t: ExecutionContext, log: WriteLog, logPath: string, replica: string, p: Point): Promise<DurabilityReport> {
  const dir = await mkdtemp('/tmp/cairn-replay-');
  const image = join(dir, 'disk.img');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  let loop = '';
  let mounted = false;
  try {
    await (await open(image, 'w')).close();
    await run('truncate', ['-s', String(DATA_DISK_BYTES), image]);
    const stats = await replayWriteLog(logPath, log, image, p.label);
    loop = await run('losetup', ['-f', '--show', image]);
    await run('mount', ['-t', 'ext4', loop, mnt]);
    mounted = true;
    const fh = await open(join(mnt, replica), 'r');
    try {
      const report = await verifyDurable(p.writer, p.promised, p.issuedBefore, async (offset, length) => {
        const buf = Buffer.alloc(length);
        await fh.read(buf, 0, length, offset);
        return buf;
      });
      t.log(`${p.label}: replayed ${JSON.stringify(stats)}; ${JSON.stringify({ ...report, mismatches: undefined })}`);
      return report;
    } finally {
      await fh.close();
    }
  } finally {
    if (mounted) await run('umount', [mnt]);
    if (loop) await run('losetup', ['-d', loop]);
    await rm(dir, { recursive: true, force: true });
  }
}

test.serial('power loss after FLUSH and FUA: every write cairnd promised durable is on the replayed disk', async (t) => {
  const cleanup: (() => Promise<unknown>)[] = [];
  t.teardown(async () => {
    for (const step of cleanup.reverse()) await step().catch((err: unknown) => t.log(`cleanup: ${String(err)}`));
  });
  const writeback = readFileSync(WRITEBACK_SYSCTL, 'utf8').trim();
  writeFileSync(WRITEBACK_SYSCTL, '0');
  cleanup.push(async () => writeFileSync(WRITEBACK_SYSCTL, writeback));

  const lw = await makeLogWritesDevice(`cairn-${uniqueTag()}-lw`, DATA_DISK_BYTES, LOG_DISK_BYTES);
  cleanup.push(() => lw.dispose());
  await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', lw.path]);
  const mnt = join(lw.data.dir, 'mnt');
  mkdirSync(mnt);
  await run('mount', ['-t', 'ext4', lw.path, mnt]);
  let mounted = true;
  cleanup.push(async () => mounted && run('umount', [mnt]));

  const d = await Daemon.start({ extraArgs: ['--pool-backend', 'file', '--pool-dir', join(mnt, 'pool')] });
  cleanup.push(() => d.destroy());
  const api = d.client();
  cleanup.push(async () => api.close());
  await api.createVolume('vol', VOLUME_BYTES);
  const exported = await api.exportVolume('vol');
  const images = readdirSync(join(mnt, 'pool/devices')).filter((f) => f.endsWith('.img'));
  t.is(images.length, 1, `one replica file in the pool: ${images.join(', ')}`);
  const replica = join('pool/devices', images[0]!);

  const nbd = await NbdBlockClient.connectUri(exported.uri, { ioTimeoutMs: 0 });
  cleanup.push(() => nbd.close());
  const common = { blockBytes: BLOCK_BYTES, queueDepth: 16, blockCount: HALF_BLOCKS };
  const flushing = new VerifiedWriter(nbd, { ...common, firstBlock: 0, flushEveryWrites: 40, fuaEveryWrites: 0 });
  const fua = new VerifiedWriter(nbd, { ...common, firstBlock: HALF_BLOCKS, flushEveryWrites: 0, fuaEveryWrites: 3 });
  const points = [...await phase(lw, 'flush', flushing), ...await phase(lw, 'fua', fua)];
  for (const w of [flushing, fua]) t.is(w.stats().errors, 0, `no NBD errors: ${w.stats().errorDetails.join('; ')}`);
  t.true(flushing.stats().flushesAcked >= WRITES_PER_PHASE / 40 - 1, 'the FLUSH phase flushed');

  // Everything after the last mark is irrelevant: stop, unmount, and remove the dm device,
  // which completes the log.
  await nbd.close();
  await d.stop();
  await run('umount', [mnt]);
  mounted = false;
  await lw.remove();

  const log = await readWriteLog(lw.log.image);
  const reports: [string, DurabilityReport][] = [];
  for (const p of points) reports.push([p.label, await checkPoint(t, log, lw.log.image, replica, p)]);
  for (const [label, report] of reports) {
    t.true(report.blocksPromised > 0, `${label}: the writer was promised something`);
    t.is(report.mismatchCount, 0, `${label}: promised writes missing or wrong after the power loss: ${JSON.stringify(report.mismatches)}`);
  }
});
