/**
 * A lock file holding its owner's pid, for "one process at a time" on a directory: the
 * daemon's data directory (one cairnd per pool: two would corrupt it) and the file pool's
 * xfs image (one process mounts it). The file is created exclusively; one whose process is
 * gone is taken over.
 */
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { Code, StorageError, fromNodeError } from './errors.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface PidLockText {
  /** What the lock is, for errors: "the pid file". */
  what: string;
  /** The FAILED_PRECONDITION message when a live process `pid` holds it. */
  held(pid: number): string;
}

/** Takes the lock at `path`; returns its release. FAILED_PRECONDITION while another live process holds it. */
export function acquirePidLock(path: string, text: PidLockText): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o644);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fromNodeError(err, `take ${text.what}`, { path });
      const pid = Number(readFileSync(path, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new StorageError(Code.FAILED_PRECONDITION, text.held(pid), { details: { path, pid } });
      }
      rmSync(path, { force: true });
    }
  }
  throw new StorageError(Code.ABORTED, `could not take ${text.what} ${path}; try again`, { details: { path } });
}
