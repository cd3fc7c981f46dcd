/**
 * One cairnd per data directory: two daemons on one pool would corrupt it. The pid file
 * is created exclusively; a stale one (its process is gone) is taken over.
 */
import { openSync, readFileSync, rmSync, writeSync, closeSync } from 'node:fs';
import { Code, StorageError } from '../common/errors.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function acquirePidFile(path: string): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o644);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(readFileSync(path, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new StorageError(Code.FAILED_PRECONDITION, `another cairnd (pid ${pid}) is using this data directory (${path}); stop it first`);
      }
      rmSync(path, { force: true });
    }
  }
  throw new StorageError(Code.ABORTED, `could not take the pid file ${path}; try again`);
}
