/**
 * The kernel's nbd driver over generic netlink (native/src/nbd-netlink.cc): CONNECT a
 * /dev/nbdX to a socket on which the NBD handshake is done, RECONFIGURE it with a new
 * socket after its server died or with a new size (`nbdResize`), DISCONNECT it; and
 * `unixConnect`, the socket the caller negotiates on before handing it over (see the .cc
 * file for why the addon opens it).
 *
 * Where the kernel has no nbd driver every netlink call throws an UNAVAILABLE SystemError
 * (errnoName ENOENT, syscall "netlink(CTRL_CMD_GETFAMILY nbd)"); other failures are
 * SystemError with the command as syscall ("netlink(NBD_CMD_CONNECT)") and the kernel's
 * errno (EPERM without CAP_SYS_ADMIN, EBUSY for a device in use, EINVAL for a bad size or
 * a device whose backend identifier differs on RECONFIGURE).
 */
import { Code, StorageError, SystemError } from '../common/errors.js';
import { callNative } from './native-errors.js';
import { checkCString, checkFd, checkPositive, checkUint } from './native-args.js';
import { nativeAddon, type NbdConnectConfig, type NbdReconfigureConfig } from './native-addon.js';

export type { NbdConnectConfig, NbdReconfigureConfig };

/** sun_path of struct sockaddr_un, minus the NUL. */
const SOCKET_PATH_MAX_BYTES = 107;
/** The kernel caps the nbd block size at the page size. */
const BLOCK_SIZE_MAX = 4096;
const BACKEND_MAX_BYTES = 255;

export const NBD_UNAVAILABLE = 'the kernel has no nbd driver';

async function nbdCall<T>(call: () => Promise<T>, details: Record<string, unknown>): Promise<T> {
  try {
    return await callNative(call, details);
  } catch (err) {
    if (err instanceof SystemError && err.errnoName === 'ENOENT' && err.syscall.includes('CTRL_CMD_GETFAMILY')) {
      throw new SystemError(Code.UNAVAILABLE, `${NBD_UNAVAILABLE} (no generic netlink family "nbd"): modprobe nbd, or attach through nbdfuse`, err,
        { cause: err, details });
    }
    throw err;
  }
}

function checkIndex(index: number, allowAny: boolean): number {
  if (allowAny && index === -1) return index;
  if (!Number.isInteger(index) || index < 0 || index > 0x7fffffff) {
    throw new StorageError(Code.INVALID_ARGUMENT, `nbd device index must be a non-negative integer${allowAny ? ' or -1 (any free device)' : ''}`, { details: { index } });
  }
  return index;
}

function checkCommon(c: { fd: number; timeoutS: number; deadConnTimeoutS: number; backend: string }): void {
  checkFd(c.fd);
  checkUint(c.timeoutS, 'timeoutS');
  checkUint(c.deadConnTimeoutS, 'deadConnTimeoutS');
  checkCString(c.backend, 'backend', 0, BACKEND_MAX_BYTES);
}

/**
 * A blocking unix stream socket connected to `path` whose reads and writes fail with
 * EAGAIN after `timeoutMs`. The caller owns the fd (fs.close it).
 */
export async function unixConnect(path: string, timeoutMs: number): Promise<number> {
  checkCString(path, 'path', 1, SOCKET_PATH_MAX_BYTES);
  checkPositive(timeoutMs, 'timeoutMs');
  return callNative(() => nativeAddon().unixConnect(path, timeoutMs), { path });
}

/** Connects a /dev/nbdX (index -1: a free one the kernel picks) to `config.fd`; returns its index. */
export async function nbdConnect(config: NbdConnectConfig): Promise<number> {
  checkCommon(config);
  checkIndex(config.index, true);
  checkPositive(config.sizeBytes, 'sizeBytes');
  const bs = config.blockSizeBytes;
  if (!Number.isInteger(bs) || bs < 512 || bs > BLOCK_SIZE_MAX || (bs & (bs - 1)) !== 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `blockSizeBytes must be a power of two from 512 to ${BLOCK_SIZE_MAX}`, { details: { blockSizeBytes: bs } });
  }
  checkUint(config.serverFlags, 'serverFlags');
  checkUint(config.clientFlags, 'clientFlags');
  return nbdCall(() => nativeAddon().nbdConnect({ ...config }), { index: config.index, backend: config.backend });
}

/**
 * Gives a connected device a new socket in place of a dead one. The kernel ignores the
 * socket (and still succeeds) when no connection of the device is dead.
 */
export async function nbdReconfigure(config: NbdReconfigureConfig): Promise<void> {
  checkCommon(config);
  checkIndex(config.index, false);
  await nbdCall(() => nativeAddon().nbdReconfigure({ ...config }), { index: config.index, backend: config.backend });
}

/**
 * Resizes a connected device (NBD_CMD_RECONFIGURE with a size and no socket): the kernel
 * sets the new capacity at once and tells the block layer, so a mounted filesystem can
 * grow onto it. `backend` must be the device's identifier (EINVAL otherwise).
 */
export async function nbdResize(index: number, sizeBytes: number, backend: string): Promise<void> {
  checkIndex(index, false);
  checkPositive(sizeBytes, 'sizeBytes');
  checkCString(backend, 'backend', 0, BACKEND_MAX_BYTES);
  await nbdCall(() => nativeAddon().nbdResize(index, sizeBytes, backend), { index, sizeBytes, backend });
}

/** Disconnects the device; the kernel lets it go once nothing has it open. */
export async function nbdDisconnect(index: number): Promise<void> {
  checkIndex(index, false);
  await nbdCall(() => nativeAddon().nbdDisconnect(index), { index });
}
