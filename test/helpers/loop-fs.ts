/**
 * Test helper (not a test file): a loop device, optionally with a filesystem on it,
 * mounted in a temp dir. Needs root and /dev/loop-control. Cleanup unmounts, detaches
 * only the loop device it attached, and removes the temp dir.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type LoopFsType = 'xfs' | 'btrfs' | 'ext4';

export interface LoopDevice {
  /** The temp dir holding the image (and the mount point). */
  dir: string;
  image: string;
  /** /dev/loopN */
  device: string;
  dispose(): Promise<void>;
}

export interface LoopFs extends LoopDevice {
  mountPoint: string;
}

const MKFS: Record<LoopFsType, string[]> = {
  xfs: ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'],
  btrfs: ['mkfs.btrfs', '-q', '-f'],
  ext4: ['mkfs.ext4', '-q', '-F'],
};

const MKFS_PACKAGE: Record<LoopFsType, string> = { xfs: 'xfsprogs', btrfs: 'btrfs-progs', ext4: 'e2fsprogs' };

async function hasCommand(name: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${name}`]);
    return true;
  } catch {
    return false;
  }
}

/** Why loop filesystems of `fsType` cannot be made here, or null when they can. */
export async function loopFsUnavailable(fsType?: LoopFsType): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (loop devices): run the tests as root';
  if (!existsSync('/dev/loop-control')) return 'needs loop devices (/dev/loop-control): modprobe loop';
  if (!(await hasCommand('losetup'))) return 'needs losetup: apt-get install util-linux';
  if (fsType && !(await hasCommand(MKFS[fsType][0]!))) return `needs ${MKFS[fsType][0]}: apt-get install ${MKFS_PACKAGE[fsType]}`;
  try {
    await run('losetup', ['-f']);
  } catch {
    return 'needs a free loop device (losetup -f found none)';
  }
  return null;
}

async function detach(device: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    try {
      await run('losetup', ['-d', device]);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A loop device over a new sparse image of `sizeBytes`. */
export async function makeLoopDevice(sizeBytes: number): Promise<LoopDevice> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-loop-'));
  const image = join(dir, 'disk.img');
  const fh = await open(image, 'w');
  await fh.truncate(sizeBytes);
  await fh.close();
  let device: string;
  try {
    device = (await run('losetup', ['-f', '--show', image])).stdout.trim();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    image,
    device,
    dispose: async () => {
      await detach(device);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A fresh `fsType` filesystem on a loop device, mounted at `mountPoint`. */
export async function makeLoopFs(fsType: LoopFsType, sizeBytes = 512 * 1024 * 1024): Promise<LoopFs> {
  const loop = await makeLoopDevice(sizeBytes);
  const mountPoint = join(loop.dir, 'mnt');
  try {
    const [cmd, ...args] = MKFS[fsType];
    await run(cmd!, [...args, loop.device]);
    await mkdir(mountPoint);
    await run('mount', ['-t', fsType, loop.device, mountPoint]);
  } catch (err) {
    await loop.dispose();
    throw err;
  }
  return {
    ...loop,
    mountPoint,
    dispose: async () => {
      for (let i = 0; ; i++) {
        try {
          await run('umount', [mountPoint]);
          break;
        } catch (err) {
          // Leave the device and dir alone rather than rm -rf through a live mount.
          if (i === 20) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      await loop.dispose();
    },
  };
}
