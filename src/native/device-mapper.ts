/**
 * Device-mapper ioctls over /dev/mapper/control. Each call opens the control node, runs
 * one ioctl off the event loop (retrying with a bigger buffer on DM_BUFFER_FULL_FLAG)
 * and closes it. Where the kernel has no device-mapper every call throws
 * DeviceMapperUnavailableError (UNAVAILABLE); a missing named device is a NOT_FOUND
 * SystemError (ENXIO); other failures are SystemError with the ioctl's name as syscall.
 */
import { Code, StorageError, SystemError } from '../common/errors.js';
import { DeviceMapperUnavailableError, fromDeviceMapperError } from './native-errors.js';
import { checkCString, checkUint } from './native-args.js';
import { nativeAddon, type DmDeviceInfo, type DmListEntry, type DmStatus, type DmTarget, type DmVersion } from './native-addon.js';

export type { DmDeviceInfo, DmListEntry, DmStatus, DmTarget, DmVersion };

/** DM_NAME_LEN and DM_UUID_LEN minus the NUL; DM_MAX_TYPE_NAME likewise. */
const NAME_MAX_BYTES = 127;
const UUID_MAX_BYTES = 128;
const TYPE_MAX_BYTES = 15;

async function dmCall<T>(call: () => Promise<T>, details: Record<string, unknown>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw fromDeviceMapperError(err, details);
  }
}

function checkName(name: string): string {
  checkCString(name, 'name', 1, NAME_MAX_BYTES);
  if (name.includes('/') || name === '.' || name === '..') {
    throw new StorageError(Code.INVALID_ARGUMENT, 'a device-mapper name must not contain "/" or be "." or ".."', { details: { name } });
  }
  return name;
}

function checkTarget(target: DmTarget, index: number): void {
  checkUint(target.startSector, `targets[${index}].startSector`);
  checkUint(target.lengthSectors, `targets[${index}].lengthSectors`);
  checkCString(target.type, `targets[${index}].type`, 1, TYPE_MAX_BYTES);
  checkCString(target.params, `targets[${index}].params`, 0, (1 << 20) - 1);
}

/** The kernel's device-mapper ioctl interface version (DM_VERSION). */
export async function dmVersion(): Promise<DmVersion> {
  return dmCall(() => nativeAddon().dmVersion(), {});
}

/**
 * Creates a device with no table (DM_DEV_CREATE); returns its dev numbers and state. A
 * taken name or uuid is ALREADY_EXISTS (the kernel answers EBUSY, kept as errnoName).
 */
export async function dmCreate(name: string, options: { uuid?: string } = {}): Promise<DmDeviceInfo> {
  checkName(name);
  const uuid = options.uuid ?? '';
  checkCString(uuid, 'uuid', 0, UUID_MAX_BYTES);
  try {
    return await dmCall(() => nativeAddon().dmCreate(name, uuid), { name, uuid });
  } catch (err) {
    if (err instanceof SystemError && err.errnoName === 'EBUSY') {
      throw new SystemError(Code.ALREADY_EXISTS, `a device-mapper device named "${name}" (or with its uuid) already exists`, err, { cause: err, details: { name, uuid } });
    }
    throw err;
  }
}

/** Loads a table into the inactive slot (DM_TABLE_LOAD); dmResume makes it live. */
export async function dmLoadTable(name: string, targets: readonly DmTarget[]): Promise<void> {
  checkName(name);
  targets.forEach(checkTarget);
  await dmCall(() => nativeAddon().dmLoadTable(name, targets), { name, targets: targets.length });
}

export interface DmSuspendOptions {
  /** Do not flush pending I/O (DM_NOFLUSH_FLAG): it is requeued for after resume. */
  noFlush?: boolean;
  /** Do not freeze the filesystem on the device (DM_SKIP_LOCKFS_FLAG). */
  noLockfs?: boolean;
}

/** Suspends the device (DM_DEV_SUSPEND with DM_SUSPEND_FLAG). */
export async function dmSuspend(name: string, options: DmSuspendOptions = {}): Promise<void> {
  checkName(name);
  await dmCall(() => nativeAddon().dmSuspend(name, options.noFlush ?? false, options.noLockfs ?? false), { name });
}

/** Resumes the device, swapping in an inactive table if one was loaded. */
export async function dmResume(name: string): Promise<void> {
  checkName(name);
  await dmCall(() => nativeAddon().dmResume(name), { name });
}

/** Removes the device (DM_DEV_REMOVE); `deferred` removes it once its last opener closes. */
export async function dmRemove(name: string, options: { deferred?: boolean } = {}): Promise<void> {
  checkName(name);
  await dmCall(() => nativeAddon().dmRemove(name, options.deferred ?? false), { name });
}

/**
 * Sends a message to the target at `sector` (DM_TARGET_MSG), e.g. "create_thin 0" to a
 * thin-pool. Returns the target's reply, or null when it gave none.
 */
export async function dmMessage(name: string, message: string, sector = 0): Promise<string | null> {
  checkName(name);
  checkCString(message, 'message', 1, (1 << 20) - 1);
  checkUint(sector, 'sector');
  return dmCall(() => nativeAddon().dmMessage(name, sector, message), { name, message });
}

/**
 * The device's state and its targets (DM_TABLE_STATUS): each target's status line, or
 * with `table` its table line.
 */
export async function dmStatus(name: string, options: { table?: boolean } = {}): Promise<DmStatus> {
  checkName(name);
  return dmCall(() => nativeAddon().dmStatus(name, options.table ?? false), { name });
}

/** Every device-mapper device: name and dev numbers (DM_LIST_DEVICES). */
export async function dmList(): Promise<DmListEntry[]> {
  return dmCall(() => nativeAddon().dmList(), {});
}

/**
 * Whether this kernel offers device-mapper. False only for DeviceMapperUnavailableError;
 * other failures (EACCES without root) are thrown, since they need an operator's fix.
 */
export async function isDeviceMapperAvailable(): Promise<boolean> {
  try {
    await dmVersion();
    return true;
  } catch (err) {
    if (err instanceof DeviceMapperUnavailableError) return false;
    throw err;
  }
}
