/**
 * The one declaration of the native addon's surface (native/src/*.cc) with exact types,
 * and its loader. Nothing else imports the `.node` file: callers use the checked
 * wrappers in file-ops.ts, block-ops.ts, device-mapper.ts and nbd-netlink.ts
 * (re-exported by index.ts), which validate arguments and turn native failures into SystemError.
 *
 * Conventions of the raw functions: every call that can block returns a promise and runs
 * on libuv's thread pool; a failed system call rejects with an Error carrying `errno`
 * (positive), `code` (the errno name, e.g. "EOPNOTSUPP") and `syscall` (e.g.
 * "ioctl(FICLONE)"); a bad argument throws a TypeError synchronously. Byte offsets,
 * lengths and sector numbers are JS numbers: they stay below 2^53, which the addon checks.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Code, StorageError } from '../common/errors.js';

export interface DmVersion {
  major: number;
  minor: number;
  patch: number;
}

/** One line of a device-mapper table (or of its status). */
export interface DmTarget {
  startSector: number;
  lengthSectors: number;
  /** The target type, e.g. "linear", "thin-pool", "thin". */
  type: string;
  /** The table line's parameters on load/table, the target's status line on status. */
  params: string;
}

export interface DmDeviceInfo {
  name: string;
  uuid: string;
  major: number;
  minor: number;
  openCount: number;
  eventNr: number;
  targetCount: number;
  suspended: boolean;
  readOnly: boolean;
  /** The device has a live table. */
  activePresent: boolean;
  /** A table was loaded but not yet made live by resume. */
  inactivePresent: boolean;
}

export interface DmStatus extends DmDeviceInfo {
  targets: DmTarget[];
}

export interface DmListEntry {
  name: string;
  major: number;
  minor: number;
}

/** What NBD_CMD_CONNECT sends (linux/nbd-netlink.h); the kernel picks a free device for index -1. */
export interface NbdConnectConfig {
  /** A connected socket on which the NBD handshake is done; the kernel takes its own reference. */
  fd: number;
  index: number;
  sizeBytes: number;
  blockSizeBytes: number;
  /** The transmission flags the server sent. */
  serverFlags: number;
  clientFlags: number;
  /** Per-request timeout, seconds (0: the kernel's default). */
  timeoutS: number;
  /** How long I/O waits for RECONFIGURE once no connection is alive, seconds (0: it fails at once). */
  deadConnTimeoutS: number;
  /** NBD_ATTR_BACKEND_IDENTIFIER ('' for none): shown in /sys/block/nbdX/backend, required to match on RECONFIGURE. */
  backend: string;
}

/** What NBD_CMD_RECONFIGURE sends: a new socket for a configured device whose connection died. */
export interface NbdReconfigureConfig {
  fd: number;
  index: number;
  timeoutS: number;
  deadConnTimeoutS: number;
  backend: string;
}

export interface NativeAddon {
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  ficlone(destFd: number, srcFd: number): Promise<void>;
  ficloneRange(destFd: number, srcFd: number, srcOffset: number, length: number, destOffset: number): Promise<void>;
  /** lseek(SEEK_DATA): the next data offset at or after `offset`, null when none. */
  seekData(fd: number, offset: number): Promise<number | null>;
  /** lseek(SEEK_HOLE): the next hole at or after `offset` (EOF counts), null past EOF. */
  seekHole(fd: number, offset: number): Promise<number | null>;
  fsFreeze(dirFd: number): Promise<void>;
  fsThaw(dirFd: number): Promise<void>;
  blockDeviceSize(fd: number): Promise<number>;
  blockDiscard(fd: number, offset: number, length: number): Promise<void>;
  blockFlush(fd: number): Promise<void>;
  /** LOOP_GET_STATUS64, then LOOP_SET_STATUS64 with lo_sizelimit changed: the bound loop device's new size. */
  loopSetSizeLimit(fd: number, sizeLimitBytes: number): Promise<void>;
  dmVersion(): Promise<DmVersion>;
  dmCreate(name: string, uuid: string): Promise<DmDeviceInfo>;
  dmLoadTable(name: string, targets: readonly DmTarget[]): Promise<void>;
  dmSuspend(name: string, noFlush: boolean, noLockfs: boolean): Promise<void>;
  dmResume(name: string): Promise<void>;
  dmRemove(name: string, deferred: boolean): Promise<void>;
  dmMessage(name: string, sector: number, message: string): Promise<string | null>;
  dmStatus(name: string, table: boolean): Promise<DmStatus>;
  dmList(): Promise<DmListEntry[]>;
  /** A blocking unix stream socket connected to `path`, with send/receive timeouts; the caller closes the fd. */
  unixConnect(path: string, timeoutMs: number): Promise<number>;
  /** NBD_CMD_CONNECT; resolves with the device index. */
  nbdConnect(config: NbdConnectConfig): Promise<number>;
  nbdReconfigure(config: NbdReconfigureConfig): Promise<void>;
  /** NBD_CMD_RECONFIGURE with only NBD_ATTR_SIZE_BYTES (and the backend identifier, which must match). */
  nbdResize(index: number, sizeBytes: number, backend: string): Promise<void>;
  nbdDisconnect(index: number): Promise<void>;
}

/** Linux ABI values (linux/falloc.h); checked against the addon's at load. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

const ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/cairn_native.node', import.meta.url));

let loaded: NativeAddon | undefined;

/** The addon, loaded on first use. FAILED_PRECONDITION when it was not built. */
export function nativeAddon(): NativeAddon {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  let addon: NativeAddon;
  try {
    addon = require(ADDON_PATH) as NativeAddon;
  } catch (err) {
    const notBuilt = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND';
    throw new StorageError(
      notBuilt ? Code.FAILED_PRECONDITION : Code.INTERNAL,
      notBuilt
        ? 'native addon is not built: run npm install (or npx node-gyp rebuild --directory native --nodedir=/usr)'
        : `native addon failed to load: ${(err as Error).message}`,
      { cause: err, details: { path: ADDON_PATH } },
    );
  }
  if (
    addon.FALLOC_FL_KEEP_SIZE !== FALLOC_FL_KEEP_SIZE ||
    addon.FALLOC_FL_PUNCH_HOLE !== FALLOC_FL_PUNCH_HOLE ||
    addon.FALLOC_FL_ZERO_RANGE !== FALLOC_FL_ZERO_RANGE
  ) {
    throw new StorageError(Code.INTERNAL, 'native addon disagrees with the FALLOC_FL_* values', { details: { path: ADDON_PATH } });
  }
  loaded = addon;
  return addon;
}
