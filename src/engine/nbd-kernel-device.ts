/**
 * /dev/nbdX through the kernel's nbd driver, driven over netlink (src/native/nbd-netlink.ts):
 * the `nbd` method of kernel-attach.ts.
 *
 * - Connect: the addon opens a unix socket to the export, this file does the NBD
 *   handshake on it (client-handshake.ts, with plain reads and writes on the fd), then
 *   NBD_CMD_CONNECT hands the fd to the kernel with the export's size and flags, a
 *   per-request timeout and a dead-connection timeout, and lets the kernel pick a free
 *   device. The kernel holds its own reference to the socket, so our fd is closed at once.
 * - The backend identifier `cairn:<volume>` is set on the device (/sys/block/nbdX/backend):
 *   `inUse` checks it, and the kernel refuses a RECONFIGURE that names another one, so a
 *   device re-used for something else after a restart is never given our socket.
 * - Reconnect (after a cairnd restart): a new socket, the same handshake, then
 *   NBD_CMD_RECONFIGURE on the same index. While no connection is alive the kernel holds
 *   I/O for up to the dead-connection timeout instead of failing it; a request that was in
 *   flight on the dead socket is sent again once its per-request timeout expires.
 * - Resize (online expansion): NBD_CMD_RECONFIGURE with only the new size. The kernel
 *   sets the capacity at once on the live device; the export already accepts requests up
 *   to its grown size, so nothing is reconnected.
 * - Disconnect: NBD_CMD_DISCONNECT; the device lets go (its pid file goes) once nothing
 *   holds it open.
 */
import { closeSync, existsSync, read, readFileSync, write } from 'node:fs';
import { promisify } from 'node:util';
import { Code, StorageError, SystemError, fromNodeError } from '../common/errors.js';
import { nbdConnect, nbdDisconnect, nbdReconfigure, nbdResize, unixConnect } from '../native/index.js';
import { negotiateExport, type HandshakeIo, type NegotiatedExport } from './nbd/client-handshake.js';

export interface NbdDeviceTimeouts {
  /** A request unanswered this long is retried on a live connection (or waits for one). */
  timeoutS: number;
  /** With no live connection, I/O waits this long for a reconnect before it fails. */
  deadConnTimeoutS: number;
}

const HANDSHAKE_TIMEOUT_MS = 10_000;
const RELEASE_TIMEOUT_MS = 10_000;
const POLL_MS = 50;
const DEFAULT_BLOCK_BYTES = 4096;

const readAsync = promisify(read);
const writeAsync = promisify(write);

function sysBlock(devicePath: string): string {
  return `/sys/block/${devicePath.slice('/dev/'.length)}`;
}

function indexOf(devicePath: string): number {
  const m = /^\/dev\/nbd(\d+)$/.exec(devicePath);
  if (!m) throw new StorageError(Code.INVALID_ARGUMENT, `${devicePath} is not an nbd device`, { details: { device: devicePath } });
  return Number(m[1]);
}

export function backendId(name: string): string {
  return `cairn:${name}`;
}

/** Whether `devicePath` is connected (has a pid file) and, where the kernel shows it, is `name`'s. */
export function nbdDeviceInUse(devicePath: string, name: string): boolean {
  const dir = sysBlock(devicePath);
  if (!existsSync(`${dir}/pid`)) return false;
  try {
    return readFileSync(`${dir}/backend`, 'utf8').trim() === backendId(name);
  } catch {
    return true; // a kernel without backend identifiers (before 5.19)
  }
}

/** Reads and writes on a blocking socket fd (its timeouts bound each call), on the thread pool. */
function fdIo(fd: number, name: string): HandshakeIo {
  const failed = (err: unknown): StorageError => {
    if ((err as NodeJS.ErrnoException).code === 'EAGAIN') {
      return new StorageError(Code.DEADLINE_EXCEEDED, `the NBD server of export "${name}" did not answer within ${HANDSHAKE_TIMEOUT_MS} ms`, { cause: err, details: { export: name } });
    }
    return fromNodeError(err, `NBD handshake for export "${name}"`, { export: name });
  };
  return {
    async read(n) {
      const buf = Buffer.allocUnsafe(n);
      for (let at = 0; at < n;) {
        const got = await readAsync(fd, buf, at, n - at, null).then((r) => r.bytesRead, (err: unknown) => { throw failed(err); });
        if (got === 0) throw new StorageError(Code.UNAVAILABLE, `the NBD server of export "${name}" closed the connection during the handshake`, { details: { export: name } });
        at += got;
      }
      return buf;
    },
    async write(bytes) {
      for (let at = 0; at < bytes.length;) {
        at += await writeAsync(fd, bytes, at, bytes.length - at, null).then((r) => r.bytesWritten, (err: unknown) => { throw failed(err); });
      }
    },
  };
}

/**
 * A socket fd to `socketPath` in the transmission phase of export `name`, and what the
 * server said; the caller closes the fd.
 */
export async function openNegotiatedSocket(socketPath: string, name: string): Promise<{ fd: number; exp: NegotiatedExport }> {
  const fd = await unixConnect(socketPath, HANDSHAKE_TIMEOUT_MS);
  try {
    return { fd, exp: await negotiateExport(fdIo(fd, name), name) };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** The server's preferred block size where the kernel can take it (a power of two, 512 to 4096). */
function blockSize(exp: NegotiatedExport): number {
  const p = exp.blockSizes?.preferred ?? DEFAULT_BLOCK_BYTES;
  return p >= 512 && p <= DEFAULT_BLOCK_BYTES && (p & (p - 1)) === 0 ? p : DEFAULT_BLOCK_BYTES;
}

/** Connects a free /dev/nbdX to export `name` on `socketPath`; returns the device path. */
export async function connectNbdDevice(name: string, socketPath: string, t: NbdDeviceTimeouts): Promise<string> {
  const { fd, exp } = await openNegotiatedSocket(socketPath, name);
  let index: number;
  try {
    index = await nbdConnect({
      fd, index: -1, sizeBytes: exp.sizeBytes, blockSizeBytes: blockSize(exp), serverFlags: exp.transmissionFlags, clientFlags: 0,
      timeoutS: t.timeoutS, deadConnTimeoutS: t.deadConnTimeoutS, backend: backendId(name),
    });
  } finally {
    closeSync(fd); // the kernel holds its own reference to the socket
  }
  return `/dev/nbd${index}`;
}

/** Gives `devicePath` (still connected, its server gone) a new connection to export `name`. */
export async function reconnectNbdDevice(name: string, devicePath: string, socketPath: string, t: NbdDeviceTimeouts): Promise<void> {
  const index = indexOf(devicePath);
  const { fd } = await openNegotiatedSocket(socketPath, name);
  try {
    await nbdReconfigure({ fd, index, timeoutS: t.timeoutS, deadConnTimeoutS: t.deadConnTimeoutS, backend: backendId(name) });
  } finally {
    closeSync(fd);
  }
}

/** The size export `name` on `socketPath` advertises to a client connecting now: its volume's current size. */
export async function exportSizeBytes(socketPath: string, name: string): Promise<number> {
  const { fd, exp } = await openNegotiatedSocket(socketPath, name);
  closeSync(fd);
  return exp.sizeBytes;
}

/** Sets the size of connected device `devicePath` (export `name`'s) to `sizeBytes`, online. */
export async function resizeNbdDevice(name: string, devicePath: string, sizeBytes: number): Promise<void> {
  await nbdResize(indexOf(devicePath), sizeBytes, backendId(name));
}

/** Whether `err` says the export's socket could not be reached (nothing serves it). */
export function isExportUnreachable(err: unknown): boolean {
  return err instanceof SystemError && err.syscall.startsWith('connect(') && ['ENOENT', 'ECONNREFUSED'].includes(err.errnoName);
}

/** Disconnects `devicePath` and waits until the kernel lets it go (the caller unmounted it). */
export async function disconnectNbdDevice(devicePath: string): Promise<void> {
  await nbdDisconnect(indexOf(devicePath));
  const pid = `${sysBlock(devicePath)}/pid`;
  for (let waited = 0; existsSync(pid); waited += POLL_MS) {
    if (waited >= RELEASE_TIMEOUT_MS) {
      throw new StorageError(Code.UNAVAILABLE, `${devicePath} is still connected after NBD_CMD_DISCONNECT: is it still mounted or open?`, { details: { device: devicePath } });
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
