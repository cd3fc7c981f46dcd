/**
 * The dm-log-writes replayer (test/helpers/dm-log-writes.ts) on hand-made logs in the
 * kernel's format: replay stops at the named mark, writes land where the entry says,
 * discards zero, and a log that is not one is refused. The power-loss kernel test runs it
 * on logs the real target wrote.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LOG_DISCARD, LOG_FLUSH, LOG_FUA, LOG_MARK, readWriteLog, replayWriteLog } from '../helpers/dm-log-writes.js';

const SECTOR = 512;

interface Entry { sector?: number; sectors?: number; flags: number; data?: Buffer; mark?: string }

function header(e: Entry): Buffer {
  const h = Buffer.alloc(SECTOR);
  h.writeBigUInt64LE(BigInt(e.sector ?? 0), 0);
  h.writeBigUInt64LE(BigInt(e.sectors ?? (e.data ? e.data.length / SECTOR : 0)), 8);
  h.writeBigUInt64LE(BigInt(e.flags), 16);
  h.writeBigUInt64LE(BigInt(e.mark?.length ?? 0), 24);
  if (e.mark) h.write(e.mark, 32, 'latin1');
  return h;
}

function logOf(entries: Entry[], magic = 0x6a736677736872n): Buffer {
  const sup = Buffer.alloc(SECTOR);
  sup.writeBigUInt64LE(magic, 0);
  sup.writeBigUInt64LE(1n, 8);
  sup.writeBigUInt64LE(BigInt(entries.length), 16);
  sup.writeUInt32LE(SECTOR, 24);
  return Buffer.concat([sup, ...entries.flatMap((e) => [header(e), ...(e.data && !(e.flags & LOG_DISCARD) ? [e.data] : [])])]);
}

const fill = (byte: number, sectors: number): Buffer => Buffer.alloc(sectors * SECTOR, byte);

test('replays up to the mark: writes in place, discards zeroed, later entries left out', async (t) => {
  const dir = mkdtempSync('/tmp/cairn-lw-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const logPath = join(dir, 'log');
  writeFileSync(logPath, logOf([
    { sector: 0, flags: 0, data: fill(0xaa, 2) },
    { sector: 4, flags: 0, data: fill(0xbb, 3) },
    { flags: LOG_FLUSH },
    { sector: 1, sectors: 1, flags: LOG_DISCARD },
    { sector: 8, flags: LOG_FUA, data: fill(0xcc, 1) },
    { flags: LOG_MARK, mark: 'first' },
    { sector: 0, flags: LOG_FUA, data: fill(0xdd, 1) },
    { flags: LOG_MARK, mark: 'second' },
  ]));
  const log = await readWriteLog(logPath);
  t.is(log.entries.length, 8);
  t.deepEqual(log.entries.filter((e) => e.mark).map((e) => e.mark), ['first', 'second']);

  const image = join(dir, 'img');
  writeFileSync(image, fill(0x11, 16));
  const stats = await replayWriteLog(logPath, log, image, 'first');
  t.deepEqual(stats, { entries: 5, writes: 3, flushes: 1, fua: 1, discards: 1, bytes: 6 * SECTOR });
  const expected = Buffer.concat([fill(0xaa, 1), fill(0, 1), fill(0x11, 2), fill(0xbb, 3), fill(0x11, 1), fill(0xcc, 1), fill(0x11, 7)]);
  t.true(readFileSync(image).equals(expected));

  await replayWriteLog(logPath, log, image, 'second');
  t.is(readFileSync(image)[0], 0xdd);
  await t.throwsAsync(replayWriteLog(logPath, log, image, 'third'), { message: /no mark "third"/ });
});

test('refuses a file that is not a dm-log-writes log, and a log cut short', async (t) => {
  const dir = mkdtempSync('/tmp/cairn-lw-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bad = join(dir, 'bad');
  writeFileSync(bad, logOf([], 0x1234n));
  await t.throwsAsync(readWriteLog(bad), { message: /not a dm-log-writes log/ });
  const short = join(dir, 'short');
  writeFileSync(short, logOf([{ sector: 0, flags: 0, data: fill(1, 4) }]).subarray(0, 3 * SECTOR));
  await t.throwsAsync(readWriteLog(short), { message: /ends at byte/ });
});
