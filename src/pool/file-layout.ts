/**
 * Which layout a `file` pool directory uses, decided once and recorded in
 * `<pool>/layout.json`:
 * - `direct`: device files in `<pool>/devices` on the host filesystem (snapshots are
 *   reflinks where it can, full copies elsewhere);
 * - `xfs-image`: device files on an xfs image the pool keeps (see xfs-image.ts), so
 *   snapshots are reflinks on any host filesystem.
 *
 * `auto` follows the record; without one, a pool that already has devices in
 * `<pool>/devices` (made before layouts existed) stays `direct`, and an empty one is
 * probed: FICLONE between two small temp files in the pool directory works -> `direct`,
 * it does not -> `xfs-image` (`direct` where the image would be below xfs's minimum size,
 * 300 MiB: a tiny test filesystem). An explicit layout that contradicts the record is refused.
 */
import { open, readdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Code, StorageError, SystemError, fromNodeError } from '../common/errors.js';
import { syncDirectory } from '../common/fs-sync.js';
import type { Logger } from '../common/log.js';
import { ficlone } from '../native/index.js';
import { NO_REFLINK_ERRNOS } from './file-copy.js';
import { MIN_IMAGE_BYTES, spaceOf } from './xfs-image.js';

export const FILE_LAYOUTS = ['auto', 'direct', 'xfs-image'] as const;
export type FileLayoutChoice = (typeof FILE_LAYOUTS)[number];
export type FileLayout = Exclude<FileLayoutChoice, 'auto'>;

const RECORD_NAME = 'layout.json';

interface LayoutRecord {
  layout: FileLayout;
  reason: string;
  decidedAt: string;
}

async function readRecord(dir: string): Promise<LayoutRecord | undefined> {
  const path = join(dir, RECORD_NAME);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromNodeError(err, 'read the file pool layout record', { path });
  }
  const record = (() => {
    try {
      return JSON.parse(text) as Partial<LayoutRecord>;
    } catch {
      return undefined;
    }
  })();
  if (record?.layout !== 'direct' && record?.layout !== 'xfs-image') {
    throw new StorageError(Code.FAILED_PRECONDITION, `${path} is not a layout record: write {"layout":"direct"} or {"layout":"xfs-image"} into it, whichever the pool was made with`, { details: { path } });
  }
  return record as LayoutRecord;
}

async function writeRecord(dir: string, record: LayoutRecord): Promise<void> {
  const path = join(dir, RECORD_NAME);
  const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, `${JSON.stringify(record)}\n`, { mode: 0o644, flush: true });
    await rename(temp, path);
    await syncDirectory(dir);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw fromNodeError(err, 'write the file pool layout record', { path });
  }
}

/** Whether `<dir>/devices` holds device files of a pool made before layouts were recorded. */
async function hasDirectDevices(dir: string): Promise<boolean> {
  try {
    return (await readdir(join(dir, 'devices'))).some((n) => !n.startsWith('.') && n.endsWith('.img'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw fromNodeError(err, 'read the file pool directory', { pool: dir });
  }
}

/** Whether the filesystem of `dir` can reflink: FICLONE between two small temp files there. */
export async function canReflink(dir: string): Promise<boolean> {
  const base = join(dir, `.reflink-probe.${randomBytes(6).toString('hex')}`);
  const [a, b] = [`${base}.a.tmp`, `${base}.b.tmp`];
  try {
    const src = await open(a, 'wx+', 0o600);
    try {
      await src.write(Buffer.alloc(4096, 0x5a), 0, 4096, 0);
      await src.sync();
      const dest = await open(b, 'wx', 0o600);
      try {
        await ficlone(dest.fd, src.fd);
        return true;
      } catch (err) {
        if (err instanceof SystemError && NO_REFLINK_ERRNOS.has(err.errnoName)) return false;
        throw err;
      } finally {
        await dest.close();
      }
    } finally {
      await src.close();
    }
  } catch (err) {
    throw fromNodeError(err, 'probe whether the pool filesystem can reflink', { pool: dir });
  } finally {
    await unlink(a).catch(() => undefined);
    await unlink(b).catch(() => undefined);
  }
}

/** The layout of the pool at `dir` (which exists), recording the decision when it is new. */
export async function resolveLayout(dir: string, requested: FileLayoutChoice, log: Logger, imageSizeBytes?: number): Promise<FileLayout> {
  const record = await readRecord(dir);
  if (record) {
    if (requested !== 'auto' && requested !== record.layout) {
      throw new StorageError(Code.FAILED_PRECONDITION, `the file pool at ${dir} uses the ${record.layout} layout (${join(dir, RECORD_NAME)}), not ${requested}: use --file-pool-layout auto or ${record.layout}, or a new, empty --pool-dir for the ${requested} layout`, {
        details: { pool: dir, layout: record.layout, requested },
      });
    }
    return record.layout;
  }
  let layout: FileLayout;
  let reason: string;
  if (await hasDirectDevices(dir)) {
    if (requested === 'xfs-image') {
      throw new StorageError(Code.FAILED_PRECONDITION, `the file pool at ${dir} already has devices in the direct layout: keep --file-pool-layout auto or direct here, or give a new, empty --pool-dir for xfs-image`, {
        details: { pool: dir, requested },
      });
    }
    [layout, reason] = ['direct', 'the pool has devices made in the direct layout'];
  } else if (requested !== 'auto') {
    [layout, reason] = [requested, 'asked for'];
  } else if (await canReflink(dir)) {
    [layout, reason] = ['direct', 'the pool filesystem can reflink'];
  } else if ((imageSizeBytes ?? (await spaceOf(dir, 'pool directory')).totalBytes) < MIN_IMAGE_BYTES) {
    [layout, reason] = ['direct', `the pool filesystem cannot reflink, but an xfs image needs at least ${MIN_IMAGE_BYTES} bytes`];
  } else {
    [layout, reason] = ['xfs-image', 'the pool filesystem cannot reflink'];
  }
  await writeRecord(dir, { layout, reason, decidedAt: new Date().toISOString() });
  log.info({ pool: dir, layout, reason }, 'file pool layout chosen');
  return layout;
}
