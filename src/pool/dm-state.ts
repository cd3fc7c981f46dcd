/**
 * What the dm pool must remember across restarts and reboots, in `<pool dir>/dm-pool.json`:
 * its tag (the dm names), block size, metadata slice, disks in order, and for every device
 * its thin id, size, origin and state. The kernel's thin-pool metadata holds the blocks;
 * this file holds what cairnd needs to stack the devices again. It is written atomically
 * (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
 * version, never a torn one.
 *
 * Device states make each multi-step change restartable: `creating` is written before the
 * thin is made in the kernel, `deleting` before it is removed; `DmBackend.open` finishes
 * either one.
 */
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import type { DeviceId } from '../common/ids.js';
import type { DiskExtent } from './dm-layout.js';
import { syncDirectory } from '../common/fs-sync.js';

export const STATE_FILE = 'dm-pool.json';
const STATE_VERSION = 1;

export type DmDeviceState = 'creating' | 'ready' | 'deleting';

export interface DmDeviceRecord {
  thinId: number;
  sizeBytes: number;
  /** The device this one is a snapshot of, if any (it may since have been deleted). */
  origin?: DeviceId;
  /** A snapshot copy nothing writes: not counted against the overcommit limit. Absent: false. */
  copy?: boolean;
  state: DmDeviceState;
  createdAt: string;
}

export interface DmPoolState {
  version: number;
  tag: string;
  blockSectors: number;
  metadataSectors: number;
  disks: DiskExtent[];
  nextThinId: number;
  devices: Record<string, DmDeviceRecord>;
}

export function newPoolState(tag: string, blockSectors: number, metadataSectors: number, disks: DiskExtent[]): DmPoolState {
  return { version: STATE_VERSION, tag, blockSectors, metadataSectors, disks, nextThinId: 1, devices: {} };
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === 'ENOENT';
}

function corrupt(path: string, why: string): StorageError {
  return new StorageError(Code.DATA_LOSS, `the dm pool state file is unreadable: ${why}`, { details: { path } });
}

function checkState(path: string, value: unknown): DmPoolState {
  const s = value as Partial<DmPoolState> | null;
  if (!s || typeof s !== 'object') throw corrupt(path, 'not an object');
  if (s.version !== STATE_VERSION) throw corrupt(path, `version ${String(s.version)}, this cairnd reads ${STATE_VERSION}`);
  if (typeof s.tag !== 'string' || !Array.isArray(s.disks) || s.disks.length === 0) throw corrupt(path, 'no tag or no disks');
  if (!Number.isSafeInteger(s.blockSectors) || !Number.isSafeInteger(s.metadataSectors) || !Number.isSafeInteger(s.nextThinId)) {
    throw corrupt(path, 'bad block size, metadata size or next thin id');
  }
  if (!s.devices || typeof s.devices !== 'object') throw corrupt(path, 'no devices');
  return s as DmPoolState;
}

/** The pool's state, or undefined when the directory has none (a new pool). */
export async function loadPoolState(dir: string): Promise<DmPoolState | undefined> {
  const path = join(dir, STATE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw fromNodeError(err, 'read dm pool state', { path });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw corrupt(path, 'not JSON');
  }
  return checkState(path, parsed);
}

/** Writes the state atomically: temp file, fsync, rename over the old one, fsync the directory. */
export async function savePoolState(dir: string, state: DmPoolState): Promise<void> {
  const path = join(dir, STATE_FILE);
  const temp = `${path}.${process.pid}.tmp`;
  try {
    await mkdir(dir, { recursive: true });
    const fh = await open(temp, 'w', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify(state, null, 2)}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, path);
    await syncDirectory(dir);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw fromNodeError(err, 'write dm pool state', { path });
  }
}
