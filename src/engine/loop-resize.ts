/**
 * Growing a loop device whose backing file is larger than the volume: the nbdfuse file of
 * the growable export view (nbd/handshake.ts, GROWABLE_EXPORT_BYTES). The loop device is
 * set up with a size limit equal to the volume's size, and growth raises that limit with
 * LOOP_SET_STATUS64; the kernel changes the capacity of the live device, so a mounted
 * filesystem can grow onto it at once. `losetup -c` (LOOP_SET_CAPACITY) would not do:
 * it rereads the backing file's size, which for nbdfuse never changes.
 */
import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import { loopSetSizeLimit } from '../native/index.js';

/**
 * Raises loop device `devicePath`'s size limit to `sizeBytes` (never lowers it). The
 * backing file must be at least that large: a file of a volume attached before the
 * growable view existed is as large as the volume was, and is FAILED_PRECONDITION.
 */
export async function growLoopDevice(volume: string, devicePath: string, backingFile: string, sizeBytes: number): Promise<void> {
  const fileBytes = (await stat(backingFile).catch((err: unknown) => {
    throw fromNodeError(err, `cannot stat the file behind ${devicePath}`, { volume, device: devicePath, file: backingFile });
  })).size;
  if (fileBytes < sizeBytes) {
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${volume}" was attached (nbdfuse, ${fileBytes} bytes) before its device could grow online: unstage and stage it again to use ${sizeBytes} bytes`,
      { details: { volume, device: devicePath, fileBytes, sizeBytes } });
  }
  const fh = await open(devicePath, constants.O_RDONLY).catch((err: unknown) => { throw fromNodeError(err, `cannot open ${devicePath}`, { volume, device: devicePath }); });
  try {
    await loopSetSizeLimit(fh.fd, sizeBytes);
  } finally {
    await fh.close();
  }
}
