/**
 * dm-log-writes for power-loss tests (kernel tests, in the VM): a device that passes every
 * write through to a data disk and also records it, in the order it reached stable
 * storage, on a log disk; and a replayer that rebuilds, on a fresh image, the disk as a
 * power loss at a chosen mark would have left it.
 *
 * What the target logs (drivers/md/dm-log-writes.c): a plain write is held back until the
 * next FLUSH completes (it was only in the disk's cache until then); a FLUSH is logged
 * after the writes that completed before it was issued; a FUA write is logged as soon as
 * it completes. A mark (`dmsetup message <dev> 0 mark <label>`) is appended when it is
 * sent. So replaying the log from the start up to a mark yields exactly what a disk that
 * loses its whole volatile cache holds after a power loss at that moment.
 *
 * The log's layout (little-endian; a "sector" is the data disk's logical block size):
 *   sector 0: super = magic u64 (0x6a736677736872), version u64 (1), nr_entries u64,
 *             sectorsize u32;
 *   then nr_entries entries, each one sector of header = sector u64, nr_sectors u64,
 *             flags u64 (1 FLUSH, 2 FUA, 4 DISCARD, 8 MARK, 16 METADATA), data_len u64,
 *             followed (MARK) in the same sector by the label's data_len bytes, or
 *             (a write) by nr_sectors sectors of data. A DISCARD carries no data.
 * nr_entries in the super is rewritten at each FUA entry and each mark, and when the
 * device is removed (which also logs the writes still unflushed, then a mark
 * "dm-log-writes-end").
 */
import { open, type FileHandle } from 'node:fs/promises';
import { dmCreate, dmLoadTable, dmMessage, dmRemove, dmResume } from '../../src/native/index.js';
import { nodePath } from '../../src/pool/dm-kernel.js';
import { makeLoopDevice, type LoopDevice } from './loop-fs.js';

const LOG_MAGIC = 0x6a736677736872n;
const LOG_VERSION = 1n;
export const LOG_FLUSH = 1;
export const LOG_FUA = 2;
export const LOG_DISCARD = 4;
export const LOG_MARK = 8;
const ENTRY_HEADER_BYTES = 32;
const SUPER_BYTES = 28;

/* ------------------------------------------------------------------ the device */

export interface LogWritesDevice {
  /** The dm device's node (/dev/mapper/<name> or /dev/dm-N): make the filesystem here. */
  path: string;
  name: string;
  data: LoopDevice;
  log: LoopDevice;
  /** Appends a mark to the log; resolves once the target has queued it. */
  mark(label: string): Promise<void>;
  /** Removes the dm device (the log is complete and readable at `log.image` afterwards). */
  remove(): Promise<void>;
  /** remove() if still there, and both loop disks with their images. */
  dispose(): Promise<void>;
}

/** A log-writes device over a new data disk of `dataBytes`, logging to a new disk of `logBytes` (both sparse). */
export async function makeLogWritesDevice(name: string, dataBytes: number, logBytes: number): Promise<LogWritesDevice> {
  const data = await makeLoopDevice(dataBytes);
  const log = await makeLoopDevice(logBytes).catch(async (err: unknown) => {
    await data.dispose();
    throw err;
  });
  let removed = false;
  try {
    const info = await dmCreate(name);
    await dmLoadTable(name, [{ startSector: 0, lengthSectors: dataBytes / 512, type: 'log-writes', params: `${data.device} ${log.device}` }]);
    await dmResume(name);
    const path = nodePath(name, info);
    const remove = async (): Promise<void> => {
      if (removed) return;
      await dmRemove(name);
      removed = true;
    };
    return {
      path, name, data, log, remove,
      mark: async (label) => {
        await dmMessage(name, `mark ${label}`);
      },
      dispose: async () => {
        await remove().catch(() => undefined);
        await log.dispose();
        await data.dispose();
      },
    };
  } catch (err) {
    await dmRemove(name).catch(() => undefined);
    await log.dispose();
    await data.dispose();
    throw err;
  }
}

/* ------------------------------------------------------------------ the log */

export interface LogEntry {
  /** Where this entry's data starts in the log file (bytes). */
  dataOffset: number;
  /** Target position and length on the data disk, in bytes. */
  offset: number;
  lengthBytes: number;
  flags: number;
  /** The label, for a MARK. */
  mark?: string;
}

export interface WriteLog {
  sectorBytes: number;
  entries: LogEntry[];
}

/** Reads a file sequentially through a window, so that many small reads cost few syscalls. */
class WindowReader {
  private window = Buffer.alloc(0);
  private windowStart = 0;

  constructor(private readonly fh: FileHandle, private readonly windowBytes = 4 << 20) {}

  async bytes(offset: number, length: number): Promise<Buffer> {
    if (offset < this.windowStart || offset + length > this.windowStart + this.window.length) {
      const buf = Buffer.alloc(Math.max(length, this.windowBytes));
      const { bytesRead } = await this.fh.read(buf, 0, buf.length, offset);
      if (bytesRead < length) throw new Error(`the write log ends at byte ${offset + bytesRead}, inside an entry that needs ${offset + length}`);
      this.window = buf.subarray(0, bytesRead);
      this.windowStart = offset;
    }
    return this.window.subarray(offset - this.windowStart, offset - this.windowStart + length);
  }
}

/** Parses the log (super and entry headers; data stays in the file). Throws on a malformed log. */
export async function readWriteLog(logPath: string): Promise<WriteLog> {
  const fh = await open(logPath, 'r');
  try {
    const r = new WindowReader(fh);
    const sup = await r.bytes(0, SUPER_BYTES);
    if (sup.readBigUInt64LE(0) !== LOG_MAGIC) throw new Error(`${logPath} is not a dm-log-writes log (magic 0x${sup.readBigUInt64LE(0).toString(16)})`);
    if (sup.readBigUInt64LE(8) !== LOG_VERSION) throw new Error(`dm-log-writes log version ${sup.readBigUInt64LE(8)} is not 1`);
    const count = Number(sup.readBigUInt64LE(16));
    const sectorBytes = sup.readUInt32LE(24);
    if (sectorBytes < 512 || (sectorBytes & (sectorBytes - 1)) !== 0) throw new Error(`dm-log-writes log sector size ${sectorBytes}`);
    const entries: LogEntry[] = [];
    let at = sectorBytes;
    for (let i = 0; i < count; i++) {
      const h = await r.bytes(at, sectorBytes);
      const sector = Number(h.readBigUInt64LE(0));
      const sectors = Number(h.readBigUInt64LE(8));
      const flags = Number(h.readBigUInt64LE(16));
      const dataLen = Number(h.readBigUInt64LE(24));
      at += sectorBytes;
      const entry: LogEntry = { dataOffset: at, offset: sector * sectorBytes, lengthBytes: sectors * sectorBytes, flags };
      if (flags & LOG_MARK) entry.mark = h.subarray(ENTRY_HEADER_BYTES, ENTRY_HEADER_BYTES + dataLen).toString('latin1');
      else if (!(flags & LOG_DISCARD)) at += entry.lengthBytes;
      entries.push(entry);
    }
    const { size } = await fh.stat();
    if (at > size) throw new Error(`the write log ends at byte ${size}, inside an entry that needs ${at}`);
    return { sectorBytes, entries };
  } finally {
    await fh.close();
  }
}

export interface ReplayStats {
  entries: number;
  writes: number;
  flushes: number;
  fua: number;
  discards: number;
  bytes: number;
}

const ZEROS = Buffer.alloc(1 << 20);

/**
 * Applies the log's entries before the mark `untilMark` to `targetPath` (a file or device
 * that held zeros, as the data disk did when logging began): writes are written, discards
 * zeroed. Throws when the log has no such mark.
 */
export async function replayWriteLog(logPath: string, log: WriteLog, targetPath: string, untilMark: string): Promise<ReplayStats> {
  const end = log.entries.findIndex((e) => e.mark === untilMark);
  if (end < 0) throw new Error(`the write log has no mark "${untilMark}" (marks: ${log.entries.filter((e) => e.mark !== undefined).map((e) => e.mark).join(', ')})`);
  const stats: ReplayStats = { entries: end, writes: 0, flushes: 0, fua: 0, discards: 0, bytes: 0 };
  const src = await open(logPath, 'r');
  const dst = await open(targetPath, 'r+');
  try {
    const r = new WindowReader(src);
    for (const e of log.entries.slice(0, end)) {
      if (e.flags & LOG_FLUSH) stats.flushes++;
      if (e.flags & LOG_FUA) stats.fua++;
      if (e.flags & LOG_DISCARD) {
        stats.discards++;
        for (let done = 0; done < e.lengthBytes; done += ZEROS.length) {
          await dst.write(ZEROS, 0, Math.min(ZEROS.length, e.lengthBytes - done), e.offset + done);
        }
      } else if (e.lengthBytes > 0) {
        stats.writes++;
        stats.bytes += e.lengthBytes;
        await dst.write(await r.bytes(e.dataOffset, e.lengthBytes), 0, e.lengthBytes, e.offset);
      }
    }
    await dst.sync();
  } finally {
    await dst.close();
    await src.close();
  }
  return stats;
}
