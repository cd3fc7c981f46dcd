/**
 * Copies one device file into another for a snapshot: FICLONE (a reflink, instant and
 * sharing every block) where the filesystem can, else a sparse copy that visits only the
 * data ranges (SEEK_DATA/SEEK_HOLE) and leaves all-zero chunks as holes.
 */
import type { FileHandle } from 'node:fs/promises';
import { SystemError } from '../common/errors.js';
import { ficlone, seekData, seekHole } from '../native/index.js';

const CHUNK_BYTES = 1 << 20;
/** What FICLONE answers where the filesystem (or the pair of files) cannot share blocks. */
export const NO_REFLINK_ERRNOS: ReadonlySet<string> = new Set(['EOPNOTSUPP', 'ENOTSUP', 'EXDEV', 'EINVAL', 'ENOTTY', 'ENOSYS']);

export type CopyMethod = 'reflink' | 'copy';

/**
 * Makes `dest` (empty, open for writing) a copy of the first `sizeBytes` of `src`.
 * Returns how it was done. Does not sync `dest`.
 */
export async function cloneOrCopy(src: FileHandle, dest: FileHandle, sizeBytes: number): Promise<CopyMethod> {
  try {
    await ficlone(dest.fd, src.fd);
    return 'reflink';
  } catch (err) {
    if (!(err instanceof SystemError) || !NO_REFLINK_ERRNOS.has(err.errnoName)) throw err;
  }
  await copySparse(src, dest, sizeBytes);
  return 'copy';
}

/** Copies the data ranges of `src` into `dest`, which ends up exactly `sizeBytes` long. */
export async function copySparse(src: FileHandle, dest: FileHandle, sizeBytes: number): Promise<void> {
  await dest.truncate(sizeBytes);
  const buf = Buffer.allocUnsafe(CHUNK_BYTES);
  let pos = 0;
  while (pos < sizeBytes) {
    const start = await seekData(src.fd, pos);
    if (start === null || start >= sizeBytes) break;
    const end = Math.min((await seekHole(src.fd, start)) ?? sizeBytes, sizeBytes);
    await copyRange(src, dest, start, end, buf);
    pos = end;
  }
}

/** Copies [start, end) of `src` into `dest` at the same offsets through `buf`; all-zero pieces stay holes. */
export async function copyRange(src: FileHandle, dest: FileHandle, start: number, end: number, buf: Buffer): Promise<void> {
  for (let at = start; at < end; ) {
    const want = Math.min(buf.length, end - at);
    const { bytesRead } = await src.read(buf, 0, want, at);
    if (bytesRead === 0) return;
    const chunk = buf.subarray(0, bytesRead);
    if (!isZero(chunk)) await writeAll(dest, chunk, at);
    at += bytesRead;
  }
}

async function writeAll(dest: FileHandle, data: Buffer, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await dest.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

const ZEROS = Buffer.alloc(CHUNK_BYTES);

function isZero(chunk: Buffer): boolean {
  return chunk.equals(ZEROS.subarray(0, chunk.length));
}
