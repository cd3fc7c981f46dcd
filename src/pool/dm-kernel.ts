/**
 * The dm pool's calls into the kernel, over the native bindings (no dmsetup): make a device
 * with a table or bring an existing one to that table, remove it, find its node, read a
 * disk's size. Every step that fails undoes what it made, so no half-made device stays.
 */
import { existsSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { Code, StorageError, SystemError, fromNodeError, isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { blockDeviceSize, dmCreate, dmLoadTable, dmRemove, dmResume, dmStatus, dmSuspend, type DmStatus, type DmTarget } from '../native/index.js';
import { SECTOR_BYTES } from './dm-layout.js';

const REMOVE_ATTEMPTS = 20;
const REMOVE_RETRY_MS = 50;

/** The device's status, or undefined when there is no dm device of that name. */
export async function findDevice(name: string, table = false): Promise<DmStatus | undefined> {
  try {
    return await dmStatus(name, { table });
  } catch (err) {
    if (err instanceof SystemError && err.errnoName === 'ENXIO') return undefined;
    throw err;
  }
}

/** "major:minor", as tables name devices. */
export function devNumber(info: { major: number; minor: number }): string {
  return `${info.major}:${info.minor}`;
}

function sameShape(a: readonly DmTarget[], b: readonly DmTarget[]): boolean {
  return a.length === b.length && a.every((t, i) => t.type === b[i]!.type && t.startSector === b[i]!.startSector && t.lengthSectors === b[i]!.lengthSectors);
}

/**
 * Makes device `name` live with `targets`. A new device is created, loaded and resumed; if
 * any step fails it is removed again. An existing device (cairnd restarted, the kernel kept
 * it) is reloaded only when its table's shape differs, and resumed if it was suspended.
 */
export async function ensureDevice(name: string, targets: DmTarget[], log: Logger): Promise<DmStatus> {
  const existing = await findDevice(name, true);
  if (!existing) {
    await dmCreate(name, { uuid: `CAIRN-${name}` });
    try {
      await dmLoadTable(name, targets);
      await dmResume(name);
    } catch (err) {
      await removeDevice(name, log).catch((e: unknown) => log.error({ dm: name, err: e }, 'half-made dm device could not be removed'));
      throw err;
    }
    log.debug({ dm: name }, 'dm device created');
    return dmStatus(name, { table: true });
  }
  if (!existing.activePresent || !sameShape(existing.targets, targets)) {
    await reloadDevice(name, targets, { noLockfs: true });
    log.info({ dm: name }, 'dm device reloaded with its recorded table');
  } else if (existing.suspended) {
    await dmResume(name);
    log.info({ dm: name }, 'suspended dm device resumed');
  }
  return dmStatus(name, { table: true });
}

/** Loads `targets` into the inactive slot, then suspends and resumes to swap them in. */
export async function reloadDevice(name: string, targets: DmTarget[], options: { noLockfs?: boolean } = {}): Promise<void> {
  await dmLoadTable(name, targets);
  await dmSuspend(name, { noLockfs: options.noLockfs ?? false });
  await dmResume(name);
}

/**
 * Removes the device. Not an error when it does not exist. EBUSY (a brief opener such as
 * blkid) is retried a few times; a device that stays open is UNAVAILABLE.
 */
export async function removeDevice(name: string, log: Logger): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await dmRemove(name);
      log.debug({ dm: name }, 'dm device removed');
      return;
    } catch (err) {
      if (err instanceof SystemError && err.errnoName === 'ENXIO') return;
      if (!(err instanceof SystemError && err.errnoName === 'EBUSY') || attempt >= REMOVE_ATTEMPTS) throw err;
      await new Promise((r) => setTimeout(r, REMOVE_RETRY_MS));
    }
  }
}

/**
 * The path of a dm device's node: /dev/mapper/<name> where udev made one, else the
 * /dev/dm-<minor> node devtmpfs makes for every dm device. FAILED_PRECONDITION without either.
 */
export function nodePath(name: string, info: { minor: number }): string {
  const mapper = `/dev/mapper/${name}`;
  if (existsSync(mapper)) return mapper;
  const dm = `/dev/dm-${info.minor}`;
  if (existsSync(dm)) return dm;
  throw new StorageError(Code.FAILED_PRECONDITION, 'dm device has no node in /dev: mount devtmpfs on /dev or run udev', { details: { dm: name, minor: info.minor } });
}

/** A block device's size in sectors and its "major:minor". INVALID_ARGUMENT when it is not a block device. */
export async function inspectDisk(path: string): Promise<{ sizeSectors: number; dev: string }> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw fromNodeError(err, 'stat pool disk', { disk: path });
  }
  if (!st.isBlockDevice()) throw new StorageError(Code.INVALID_ARGUMENT, 'a dm pool disk must be a block device', { details: { disk: path } });
  const fh = await open(path, 'r').catch((err: unknown) => {
    throw fromNodeError(err, 'open pool disk', { disk: path });
  });
  try {
    const bytes = await blockDeviceSize(fh.fd);
    return { sizeSectors: Math.floor(bytes / SECTOR_BYTES), dev: devOf(st.rdev) };
  } finally {
    await fh.close();
  }
}

/** Linux's dev_t encoding (new_encode_dev) as "major:minor". */
function devOf(rdev: number): string {
  const high = Math.floor(rdev / 2 ** 32);
  const low = rdev % 2 ** 32;
  const major = ((low >>> 8) & 0xfff) | ((high & ~0xfff) >>> 0);
  const minor = (low & 0xff) | ((low >>> 12) & ~0xff & 0xfffff);
  return `${major}:${minor}`;
}

/** True when `err` is the kernel saying a thin id is taken (create) or unknown (delete). */
export function isErrno(err: unknown, ...names: string[]): boolean {
  return isStorageError(err) && err instanceof SystemError && names.includes(err.errnoName);
}

/** fdatasync of a block device node: writes back its page cache (whoever dirtied it) and flushes the device. */
export async function syncDevice(path: string): Promise<void> {
  try {
    const fh = await open(path, 'r');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw fromNodeError(err, 'sync block device', { path });
  }
}
