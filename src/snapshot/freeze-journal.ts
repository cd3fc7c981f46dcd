/**
 * A record on disk of the filesystems cairnd has frozen, so that a freeze outlives nothing:
 * one small file per frozen volume, written (and fsynced) before FIFREEZE and removed after
 * FITHAW. A cairnd killed with SIGKILL between the two leaves its file; the next start thaws
 * what the files name (`thawLeftovers`), once the staged volumes are served again (a thaw may
 * write to the device, which only a running engine serves). A file whose
 * filesystem is no longer frozen (FITHAW says EINVAL) or no longer mounted is just removed.
 */
import { mkdir, open, readdir, readFile, rm, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { Code, isStorageError, SystemError } from '../common/errors.js';
import type { Logger } from '../common/log.js';

export interface FrozenRecord {
  volume: string;
  mountPoint: string;
  frozenAt: string;
}

export class FreezeJournal {
  constructor(private readonly dir: string, private readonly log: Logger) {}

  private path(volume: string): string {
    return join(this.dir, `${encodeURIComponent(volume)}.json`);
  }

  /** Writes the record durably (temp file, fsync, rename, fsync of the directory). */
  async record(volume: string, mountPoint: string): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const path = this.path(volume);
    const tmp = `${path}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify({ volume, mountPoint, frozenAt: new Date().toISOString() } satisfies FrozenRecord));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    const dir = await open(this.dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async clear(volume: string): Promise<void> {
    await rm(this.path(volume), { force: true });
  }

  /** Thaws every filesystem a previous cairnd froze and did not thaw; returns how many it thawed. */
  async thawLeftovers(thawAt: (mountPoint: string) => Promise<void>): Promise<number> {
    let names: string[];
    try {
      names = (await readdir(this.dir)).filter((n) => n.endsWith('.json'));
    } catch {
      return 0;
    }
    let thawed = 0;
    for (const name of names) {
      const path = join(this.dir, name);
      let record: FrozenRecord;
      try {
        record = JSON.parse(await readFile(path, 'utf8')) as FrozenRecord;
      } catch (err) {
        this.log.warn({ err, path }, 'freeze record unreadable; removing it');
        await rm(path, { force: true });
        continue;
      }
      try {
        await thawAt(record.mountPoint);
        thawed++;
        this.log.warn({ volume: record.volume, target: record.mountPoint, frozenAt: record.frozenAt }, 'filesystem left frozen by a previous cairnd thawed');
      } catch (err) {
        // EINVAL: not frozen (its thaw had happened); NOT_FOUND: nothing there any more.
        const settled = (err instanceof SystemError && err.errnoName === 'EINVAL') || isStorageError(err, Code.NOT_FOUND);
        if (!settled) {
          this.log.error({ err, volume: record.volume, target: record.mountPoint }, 'filesystem left frozen by a previous cairnd could not be thawed');
          continue;
        }
      }
      await rm(path, { force: true });
    }
    return thawed;
  }
}
