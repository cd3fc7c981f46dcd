/**
 * A writer process for tests that do I/O the way an application in a pod does: through a
 * mounted volume or a published block device node, in the kernel's path (not over NBD
 * from the test). dd writes 64 KiB records one after another, each with O_DIRECT and an
 * fsync, until stop(); the first failed write ends it with status 3.
 *
 * - `{ dir }`: record i is the file `<dir>/f<i>`;
 * - `{ device, firstRecord, records }`: record i goes to the device at 64 KiB slot
 *   `firstRecord + i % records` (the writer wraps around, so a slot holds its last record).
 *
 * Every record's content is recordContent(kind, i), so mismatches() can check everything
 * acknowledged without keeping copies. Progress is read from a count file the script
 * renames into place after each acknowledged record.
 *
 *   const w = DdWriter.start({ dir: target }, controlDir);
 *   await w.waitWritten(10);
 *   ... restart, move, modify ...
 *   const { exitCode } = await w.stop();
 *   t.deepEqual(await w.mismatches(), []);
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';

export const RECORD_BYTES = 64 * 1024;

export type DdTarget = { dir: string } | { device: string; firstRecord: number; records: number };

export interface DdWriterResult {
  exitCode: number | undefined;
  /** Records acknowledged (written and fsynced). */
  written: number;
  stderr: string;
}

/** What record i holds: its own line repeated, 64 KiB. */
export function recordContent(kind: 'file' | 'block', i: number): Buffer {
  const line = Buffer.from(`cairn writer ${kind} ${i}\n`);
  return Buffer.concat(Array.from({ length: Math.ceil(RECORD_BYTES / line.length) }, () => line)).subarray(0, RECORD_BYTES);
}

const FILE_SCRIPT = `i=0
while [ ! -e "$2/stop" ]; do
  yes "cairn writer file $i" | head -c 65536 | dd of="$1/f$i" bs=64k count=1 iflag=fullblock oflag=direct conv=fsync status=none || exit 3
  i=$((i+1)); echo "$i" > "$2/count.tmp"; mv "$2/count.tmp" "$2/count"
done`;

const DEVICE_SCRIPT = `i=0
while [ ! -e "$2/stop" ]; do
  yes "cairn writer block $i" | head -c 65536 | dd of="$1" bs=64k seek=$(($3 + i % $4)) count=1 iflag=fullblock oflag=direct conv=fsync,notrunc status=none || exit 3
  i=$((i+1)); echo "$i" > "$2/count.tmp"; mv "$2/count.tmp" "$2/count"
done`;

export class DdWriter {
  /** The count once stopped (the control dir may be gone). */
  private final: number | undefined;
  private stopped: Promise<DdWriterResult> | undefined;

  private constructor(private readonly target: DdTarget, private readonly control: string, private readonly ownsControl: boolean, private readonly child: ResultPromise) {}

  /** Starts the writer; `controlDir` (default: a new one under /tmp, removed by stop) holds its stop and count files, off the volume. */
  static start(target: DdTarget, controlDir?: string): DdWriter {
    const control = controlDir ?? mkdtempSync('/tmp/cairn-ddw-');
    const args = 'dir' in target
      ? ['-c', FILE_SCRIPT, 'writer', target.dir, control]
      : ['-c', DEVICE_SCRIPT, 'writer', target.device, control, String(target.firstRecord), String(target.records)];
    return new DdWriter(target, control, controlDir === undefined, execa('bash', args, { reject: false }));
  }

  /** Records acknowledged so far. */
  written(): number {
    if (this.final !== undefined) return this.final;
    try {
      return Number(readFileSync(join(this.control, 'count'), 'utf8')) || 0;
    } catch {
      return 0;
    }
  }

  /** Until `count` records are acknowledged; rejects when the writer ends first (with its stderr) or after `timeoutMs`. */
  async waitWritten(count: number, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.written() < count) {
      if (this.child.exitCode !== null) throw new Error(`the writer ended (status ${this.child.exitCode}) after ${this.written()} records: ${(await this.child).stderr}`);
      if (Date.now() > deadline) throw new Error(`the writer acknowledged ${this.written()} of ${count} records in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Tells the writer to stop after the record in hand and waits for it (again: the same result). */
  stop(): Promise<DdWriterResult> {
    this.stopped ??= (async () => {
      writeFileSync(join(this.control, 'stop'), '');
      const r = await this.child;
      this.final = this.written();
      if (this.ownsControl) rmSync(this.control, { recursive: true, force: true });
      return { exitCode: r.exitCode ?? undefined, written: this.final, stderr: String(r.stderr) };
    })();
    return this.stopped;
  }

  /** The records that do not read back as written (after stop): "f3" or "slot 17 (record 145)". */
  async mismatches(): Promise<string[]> {
    const written = this.written();
    const bad: string[] = [];
    if ('dir' in this.target) {
      for (let i = 0; i < written; i++) {
        let data: Buffer | undefined;
        try {
          data = readFileSync(join(this.target.dir, `f${i}`));
        } catch {
          data = undefined;
        }
        if (!data?.equals(recordContent('file', i))) bad.push(`f${i}`);
      }
      return bad;
    }
    const { device, firstRecord, records } = this.target;
    const fh = await open(device, 'r');
    try {
      for (let slot = 0; slot < Math.min(records, written); slot++) {
        const last = slot + Math.floor((written - 1 - slot) / records) * records;
        const data = Buffer.alloc(RECORD_BYTES);
        await fh.read(data, 0, RECORD_BYTES, (firstRecord + slot) * RECORD_BYTES);
        if (!data.equals(recordContent('block', last))) bad.push(`slot ${slot} (record ${last})`);
      }
    } finally {
      await fh.close();
    }
    return bad;
  }
}
