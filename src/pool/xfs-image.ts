/**
 * The xfs image of a `file` pool in the `xfs-image` layout: `<pool>/xfs-pool.img`, a
 * sparse file on the host filesystem, formatted once with `mkfs.xfs -m reflink=1`,
 * attached to a loop device (`losetup --direct-io=on`, so its data is not cached twice)
 * and mounted with `-o discard` at `<pool>/xfs`, so that a deleted or trimmed device
 * gives its space back to the host file. Devices then live on xfs, where FICLONE works:
 * snapshots are reflinks even when the host filesystem (ext4) cannot share blocks.
 *
 * Crash safety:
 * - The image is formatted under a temp name and renamed into place, so `xfs-pool.img`
 *   is always a whole filesystem; temp images of an interrupted start are removed.
 * - Once mounted, the loop device is detached at once (`losetup -d` on a busy device only
 *   marks it autoclear), so whoever unmounts `<pool>/xfs` also frees the loop device.
 * - At mount time: a mount of this image already at `<pool>/xfs` (left by a kill -9) is
 *   reused; loop devices of the image that nothing mounts (a crash between attach and
 *   mount) are detached; the image is then attached and mounted (xfs replays its log).
 * - `<pool>/xfs-pool.pid` holds the pid of the process that has the image mounted; a
 *   second live process is refused, so two daemons never mount one image.
 */
import { mkdir, open, readdir, readFile, realpath, rename, statfs, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, join } from 'node:path';
import { runCommand } from '../common/command.js';
import { ChildProcessError, Code, StorageError, fromNodeError } from '../common/errors.js';
import { syncDirectory } from '../common/fs-sync.js';
import { acquirePidLock } from '../common/pid-lock.js';
import type { Logger } from '../common/log.js';
import { punchHole } from '../native/index.js';

export const IMAGE_NAME = 'xfs-pool.img';
export const MOUNT_DIR = 'xfs';
const LOCK_NAME = 'xfs-pool.pid';
const TEMP_PREFIX = '.xfs-pool.';
const TEMP_SUFFIX = '.img.tmp';
/** xfs wants at least 300 MiB; below that mkfs.xfs refuses. */
export const MIN_IMAGE_BYTES = 300 * 1024 * 1024;

export interface XfsImageOptions {
  /** The pool directory: the image, its mount point and its pid file live here. */
  poolDir: string;
  log: Logger;
  /** The image's size when it is made; the host filesystem's size by default. Ignored for an existing image. */
  sizeBytes?: number | undefined;
}

export interface FsSpace {
  totalBytes: number;
  freeBytes: number;
}

interface MountEntry {
  mountPoint: string;
  source: string;
  fsType: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The mounts of /proc/self/mountinfo (see proc(5)). */
async function listMounts(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0 || fields.length < sep + 3) continue;
    out.push({ mountPoint: unescape(fields[4]!), fsType: fields[sep + 1]!, source: unescape(fields[sep + 2]!) });
  }
  return out;
}

/** The file a loop device reads, from sysfs; undefined when it is not a bound loop device. */
async function loopBackingFile(device: string): Promise<string | undefined> {
  const name = basename(device);
  if (!/^loop\d+$/.test(name)) return undefined;
  try {
    return (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8')).trim().replace(/ \(deleted\)$/, '');
  } catch {
    return undefined;
  }
}

export async function spaceOf(path: string, what: string): Promise<FsSpace> {
  try {
    const fs = await statfs(path);
    return { totalBytes: fs.blocks * fs.bsize, freeBytes: fs.bavail * fs.bsize };
  } catch (err) {
    throw fromNodeError(err, `statfs ${what}`, { path });
  }
}

/**
 * Punches the whole file and syncs it, so that xfs frees its blocks (and discards them to
 * the host image) now: an unlinked file's blocks are freed later, by background inode
 * inactivation and a log commit that may be 30 s away. Shared (reflinked) blocks stay
 * with the other file. Not an error when the file is missing.
 */
export async function releaseBlocks(path: string): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r+');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  try {
    const { size } = await fh.stat();
    if (size > 0) await punchHole(fh.fd, 0, size);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A missing tool, with the package that has it. */
function toolError(err: unknown, tool: string, pkg: string): unknown {
  if (err instanceof StorageError && err.code === Code.FAILED_PRECONDITION && !(err instanceof ChildProcessError)) {
    return new StorageError(Code.FAILED_PRECONDITION, `${tool} not found: install ${pkg} (scripts/install-deps.sh does)`, { cause: err, details: { tool } });
  }
  return err;
}

export class XfsImage {
  readonly imagePath: string;
  readonly mountPoint: string;
  private unmounted = false;

  private constructor(private readonly poolDir: string, private readonly log: Logger, private readonly releaseLock: () => void) {
    this.imagePath = join(poolDir, IMAGE_NAME);
    this.mountPoint = join(poolDir, MOUNT_DIR);
  }

  /** Makes the image if it is missing and mounts it (or reuses the mount a crash left). */
  static async mount(options: XfsImageOptions): Promise<XfsImage> {
    const lockPath = join(options.poolDir, LOCK_NAME);
    const release = acquirePidLock(lockPath, {
      what: 'the xfs pool lock',
      held: (pid) => `another process (pid ${pid}) has this pool's xfs image mounted (${lockPath}); stop it, or give this cairnd its own --pool-dir`,
    });
    const image = new XfsImage(options.poolDir, options.log, release);
    try {
      await image.ensureImage(options.sizeBytes);
      await image.ensureMounted();
    } catch (err) {
      release();
      throw err;
    }
    return image;
  }

  /** The host filesystem under the image: what the image can still grow into. */
  hostSpace(): Promise<FsSpace> {
    return spaceOf(this.poolDir, 'the file pool\'s host filesystem');
  }

  /** What xfs inside the image reports. */
  imageSpace(): Promise<FsSpace> {
    return spaceOf(this.mountPoint, 'the file pool\'s xfs image');
  }

  /** Unmounts the image (which frees its autoclear loop device) and releases the pool lock. */
  async unmount(): Promise<void> {
    if (this.unmounted) return;
    if (await this.mountedHere()) {
      await runCommand('umount', [this.mountPoint], { details: { path: this.mountPoint } }).catch((err: unknown) => {
        throw new StorageError(Code.FAILED_PRECONDITION, `cannot unmount the pool's xfs image at ${this.mountPoint}: close what still uses it (fuser -vm ${this.mountPoint}) and run umount ${this.mountPoint}`, { cause: err, details: { path: this.mountPoint } });
      });
    }
    this.unmounted = true;
    this.releaseLock();
    this.log.info({ pool: this.poolDir, image: this.imagePath }, 'xfs pool image unmounted');
  }

  private async ensureImage(sizeBytes: number | undefined): Promise<void> {
    try {
      for (const name of await readdir(this.poolDir)) {
        if (!name.startsWith(TEMP_PREFIX) || !name.endsWith(TEMP_SUFFIX)) continue;
        await unlink(join(this.poolDir, name)).catch(() => undefined);
        this.log.warn({ pool: this.poolDir, file: name }, 'stale temp file removed');
      }
    } catch (err) {
      throw fromNodeError(err, 'read the pool directory', { pool: this.poolDir });
    }
    if (await open(this.imagePath, 'r').then((fh) => fh.close().then(() => true), () => false)) return;

    const host = await this.hostSpace();
    const size = Math.floor((sizeBytes ?? host.totalBytes) / 4096) * 4096;
    if (size < MIN_IMAGE_BYTES) {
      throw new StorageError(Code.INVALID_ARGUMENT, `the pool's xfs image would be ${size} bytes; xfs needs at least ${MIN_IMAGE_BYTES}: give a larger --file-pool-size`, { details: { sizeBytes: size } });
    }
    const started = Date.now();
    const temp = join(this.poolDir, `${TEMP_PREFIX}${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
    try {
      const fh = await open(temp, 'wx', 0o600);
      await fh.truncate(size).finally(() => fh.close());
      await runCommand('mkfs.xfs', ['-q', '-m', 'reflink=1', temp], { details: { image: temp } }).catch((err: unknown) => {
        throw toolError(err, 'mkfs.xfs', 'xfsprogs');
      });
      const synced = await open(temp, 'r');
      await synced.sync().finally(() => synced.close());
      await rename(temp, this.imagePath);
      await syncDirectory(this.poolDir);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw err instanceof StorageError ? err : fromNodeError(err, 'make the pool\'s xfs image', { image: this.imagePath });
    }
    this.log.info({ pool: this.poolDir, image: this.imagePath, sizeBytes: size, ms: Date.now() - started }, 'xfs pool image made');
  }

  /** The mount at our mount point; refuses one that is not of our image. */
  private async mountedHere(): Promise<boolean> {
    const here = (await listMounts()).filter((m) => m.mountPoint === this.mountPoint).pop();
    if (!here) return false;
    const backing = await loopBackingFile(here.source);
    if (here.fsType === 'xfs' && backing !== undefined && backing === (await realpath(this.imagePath))) return true;
    throw new StorageError(Code.FAILED_PRECONDITION, `${this.mountPoint} has ${here.source} (${here.fsType}) mounted, not the pool's image ${this.imagePath}: unmount it`, {
      details: { path: this.mountPoint, source: here.source },
    });
  }

  /**
   * A loop device on the image, with direct I/O where the filesystem under it allows it
   * (tmpfs, for one, refuses O_DIRECT: losetup then says "Invalid argument"). Without it
   * the image's pages are cached twice, which costs memory and nothing else.
   */
  private async attachLoop(): Promise<string> {
    const attach = async (direct: boolean): Promise<string> =>
      (await runCommand('losetup', ['-f', '--show', ...(direct ? ['--direct-io=on'] : []), this.imagePath], { details: { image: this.imagePath } })).stdout.trim();
    let firstErr: unknown;
    try {
      return await attach(true);
    } catch (err) {
      firstErr = err;
    }
    try {
      const device = await attach(false);
      this.log.warn({ pool: this.poolDir, image: this.imagePath, device, err: firstErr }, 'loop device without direct I/O: the filesystem under the pool refuses O_DIRECT; the image is cached twice');
      return device;
    } catch (err) {
      throw new StorageError(Code.FAILED_PRECONDITION, `cannot attach a loop device to ${this.imagePath}: cairnd needs CAP_SYS_ADMIN, /dev/loop-control and losetup (util-linux)`, { cause: toolError(err, 'losetup', 'util-linux') });
    }
  }

  private async ensureMounted(): Promise<void> {
    await mkdir(this.mountPoint, { recursive: true }).catch((err: unknown) => {
      throw fromNodeError(err, 'make the xfs mount point', { path: this.mountPoint });
    });
    if (await this.mountedHere()) {
      this.log.info({ pool: this.poolDir, image: this.imagePath }, 'xfs pool image already mounted; reused');
      return;
    }
    const started = Date.now();
    await this.detachStaleLoops();
    const device = await this.attachLoop();
    try {
      await runCommand('mount', ['-t', 'xfs', '-o', 'discard', device, this.mountPoint], { details: { device, path: this.mountPoint } });
    } catch (err) {
      await runCommand('losetup', ['-d', device]).catch(() => undefined);
      throw new StorageError(Code.FAILED_PRECONDITION, `cannot mount the pool's xfs image ${this.imagePath} at ${this.mountPoint}: see the cause; xfs_repair ${this.imagePath} if the image is damaged`, { cause: err, details: { device } });
    }
    // On a mounted device this only marks it autoclear: unmounting then frees it.
    await runCommand('losetup', ['-d', device]).catch((err: unknown) => {
      this.log.warn({ pool: this.poolDir, device, err }, 'loop device not set to autoclear; it stays after unmount');
    });
    this.log.info({ pool: this.poolDir, image: this.imagePath, device, ms: Date.now() - started }, 'xfs pool image mounted');
  }

  /** Detaches loop devices of our image that nothing mounts (a crash between attach and mount). */
  private async detachStaleLoops(): Promise<void> {
    let listed: string;
    try {
      listed = (await runCommand('losetup', ['-j', this.imagePath, '-n', '-O', 'NAME'])).stdout;
    } catch (err) {
      throw toolError(err, 'losetup', 'util-linux');
    }
    const mounted = new Set((await listMounts()).map((m) => m.source));
    for (const device of listed.split('\n').map((l) => l.trim()).filter(Boolean)) {
      if (mounted.has(device)) {
        throw new StorageError(Code.FAILED_PRECONDITION, `the pool's xfs image ${this.imagePath} is mounted elsewhere through ${device}: unmount it (findmnt ${device})`, { details: { device } });
      }
      await runCommand('losetup', ['-d', device]).catch(() => undefined);
      this.log.warn({ pool: this.poolDir, device }, 'stale loop device of the xfs pool image detached');
    }
  }
}
