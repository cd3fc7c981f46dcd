/**
 * Every filesystem operation the node side of CSI needs, in one place: detecting a
 * filesystem (blkid), making one (only on a blank device), mounting, bind mounts (read-only
 * honoured with a remount), unmounting, mount lookups (from /proc/self/mountinfo, never
 * from `mount` output), online growth and statfs-based usage.
 *
 * Child processes run through runCommand: a failure is a ChildProcessError with the exit
 * code and stderr, its code chosen here (a missing path is NOT_FOUND, a device that
 * already holds a filesystem ALREADY_EXISTS), and an AbortSignal kills the child.
 */
import { constants } from 'node:fs';
import { open, readFile, stat, statfs } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import { blockDeviceSize } from '../native/index.js';
import { runCommand } from './command.js';

export type FsType = 'ext4' | 'xfs';
export const FS_TYPES: readonly FsType[] = ['ext4', 'xfs'];

export interface MountEntry {
  /** "major:minor" of the mounted device. */
  device: string;
  /** The path inside the filesystem that is mounted ("/" unless a bind of a subdirectory). */
  root: string;
  mountPoint: string;
  /** Per-mount options (rw/ro, nosuid, ...). */
  options: string[];
  fsType: string;
  source: string;
}

export interface FilesystemStats {
  totalBytes: number;
  availableBytes: number;
  usedBytes: number;
  totalInodes: number;
  freeInodes: number;
  usedInodes: number;
}

/** What blkid finds on a device: a filesystem type, a partition table, or nothing (blank). */
export interface DeviceContent {
  fsType?: string;
  partitionTable?: string;
}

const BLKID_NOTHING_FOUND = 2;

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Parses /proc/self/mountinfo text (see proc(5)). */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0 || fields.length < sep + 3) continue;
    entries.push({
      device: fields[2]!,
      root: unescapeMountPath(fields[3]!),
      mountPoint: unescapeMountPath(fields[4]!),
      options: fields[5]!.split(','),
      fsType: fields[sep + 1]!,
      source: unescapeMountPath(fields[sep + 2]!),
    });
  }
  return entries;
}

export async function listMounts(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The topmost mount at `path` (the last one listed), or undefined when nothing is mounted there. */
export async function findMount(path: string): Promise<MountEntry | undefined> {
  const target = resolve(path);
  return (await listMounts()).filter((m) => m.mountPoint === target).pop();
}

export async function isMounted(path: string): Promise<boolean> {
  return (await findMount(path)) !== undefined;
}

/** "major:minor" of a block device node, as mountinfo shows it. */
export async function deviceNumber(devicePath: string): Promise<string> {
  const s = await stat(devicePath).catch((err: unknown) => { throw fromNodeError(err, `cannot stat ${devicePath}`, { device: devicePath }); });
  if (!s.isBlockDevice()) throw new StorageError(Code.FAILED_PRECONDITION, `${devicePath} is not a block device`, { details: { device: devicePath } });
  const rdev = Number(s.rdev);
  // Linux's dev_t: major in bits 8-19 (and 32+), minor in bits 0-7 and 20-31.
  const major = Math.floor(rdev / 0x100) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 0x1000) & 0xfff00);
  return `${major}:${minor}`;
}

async function requirePath(path: string, kind: 'directory' | 'block device' | 'any'): Promise<void> {
  let s;
  try {
    s = await stat(path);
  } catch (err) {
    throw fromNodeError(err, `${path} does not exist`, { path });
  }
  if (kind === 'directory' && !s.isDirectory()) throw new StorageError(Code.FAILED_PRECONDITION, `${path} is not a directory`, { details: { path } });
  if (kind === 'block device' && !s.isBlockDevice()) throw new StorageError(Code.FAILED_PRECONDITION, `${path} is not a block device`, { details: { path } });
}

/** What is on `device` (blkid low-level probe, no cache). A blank device gives `{}`. */
export async function detectContent(device: string, signal?: AbortSignal): Promise<DeviceContent> {
  await requirePath(device, 'block device');
  try {
    const { stdout } = await runCommand('blkid', ['-p', '-o', 'export', device], { signal, details: { device } });
    const found: DeviceContent = {};
    for (const line of stdout.split('\n')) {
      const [key, value] = [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)];
      if (key === 'TYPE' && value) found.fsType = value;
      if (key === 'PTTYPE' && value) found.partitionTable = value;
    }
    return found;
  } catch (err) {
    if (err instanceof StorageError && err.details.exitCode === BLKID_NOTHING_FOUND) return {};
    throw err;
  }
}

/** Makes an `fsType` filesystem on `device`, which must hold nothing (ALREADY_EXISTS otherwise). */
export async function makeFilesystem(device: string, fsType: FsType, signal?: AbortSignal): Promise<void> {
  const content = await detectContent(device, signal);
  if (content.fsType || content.partitionTable) {
    throw new StorageError(Code.ALREADY_EXISTS, `${device} already holds ${content.fsType ?? `a ${content.partitionTable} partition table`}: it is never formatted again`,
      { details: { device, fsType: content.fsType ?? null, partitionTable: content.partitionTable ?? null } });
  }
  // -q: quiet. ext4: -F because a whole disk (not a partition) is intended; it was checked blank above.
  const args = fsType === 'ext4' ? ['-q', '-F', device] : ['-q', device];
  await runCommand(`mkfs.${fsType}`, args, { signal, details: { device, fsType } });
}

export interface MountOptions {
  fsType?: string;
  /** mount -o options (e.g. "noatime", "discard"). */
  flags?: readonly string[];
  readonly?: boolean;
  signal?: AbortSignal;
}

/** Mounts `source` at `target` (a directory): NOT_FOUND when either is missing. */
export async function mount(source: string, target: string, options: MountOptions = {}): Promise<void> {
  await requirePath(source, 'any');
  await requirePath(target, 'directory');
  const flags = [...(options.flags ?? []), ...(options.readonly ? ['ro'] : [])];
  const args = [...(options.fsType ? ['-t', options.fsType] : []), ...(flags.length ? ['-o', flags.join(',')] : []), source, target];
  await runCommand('mount', args, { signal: options.signal, details: { source, target } });
}

/**
 * Bind-mounts `source` (a directory, or a device node onto a file) at `target`. Read-only
 * needs a second step: a bind mount takes the flags of its source, so it is remounted ro;
 * when that fails the bind is undone.
 */
export async function bindMount(source: string, target: string, options: { readonly?: boolean; flags?: readonly string[]; signal?: AbortSignal } = {}): Promise<void> {
  await requirePath(source, 'any');
  await requirePath(target, 'any');
  await runCommand('mount', ['--bind', source, target], { signal: options.signal, details: { source, target } });
  const flags = [...(options.flags ?? []), ...(options.readonly ? ['ro'] : [])];
  if (flags.length === 0) return;
  try {
    await runCommand('mount', ['-o', ['remount', 'bind', ...flags].join(','), target], { signal: options.signal, details: { source, target } });
  } catch (err) {
    await runCommand('umount', [target]).catch(() => undefined);
    throw err;
  }
}

/** Unmounts `target`; not an error when nothing is mounted there (or it does not exist). */
export async function unmount(target: string, signal?: AbortSignal): Promise<void> {
  while (await isMounted(target)) {
    await runCommand('umount', [target], { signal, codeFor: () => Code.FAILED_PRECONDITION, details: { target } });
  }
}

/** CAP_SYS_RESOURCE's bit in CapEff (linux/capability.h). */
const CAP_SYS_RESOURCE = 24n;

/** Whether this process has CAP_SYS_RESOURCE, which the kernel wants to grow a mounted ext4 (EXT4_IOC_RESIZE_FS). */
async function hasSysResource(): Promise<boolean> {
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(await readFile('/proc/self/status', 'utf8').catch(() => ''))?.[1];
  return hex !== undefined && ((BigInt(`0x${hex}`) >> CAP_SYS_RESOURCE) & 1n) === 1n;
}

/**
 * Grows the mounted filesystem to its device's size (online): resize2fs or xfs_growfs.
 * Both do nothing when it already fills the device. A failed ext4 growth in a process
 * without CAP_SYS_RESOURCE (a container that drops it) is FAILED_PRECONDITION saying so.
 */
export async function growFilesystem(device: string, mountPoint: string, fsType: string, signal?: AbortSignal): Promise<void> {
  if (fsType === 'xfs') {
    await runCommand('xfs_growfs', [mountPoint], { signal, details: { device, mountPoint } });
  } else if (fsType === 'ext4') {
    try {
      await runCommand('resize2fs', [device], { signal, details: { device } });
    } catch (err) {
      if (!(err instanceof StorageError) || err.code === Code.CANCELLED || await hasSysResource()) throw err;
      throw new StorageError(Code.FAILED_PRECONDITION,
        `cannot grow the ext4 filesystem on ${device} while mounted: cairnd lacks CAP_SYS_RESOURCE, which the kernel requires for that; give its container the capability (a privileged container has it)`,
        { cause: err, details: { device, mountPoint } });
    }
  } else {
    throw new StorageError(Code.INVALID_ARGUMENT, `cannot grow a ${fsType} filesystem`, { details: { fsType } });
  }
}

/** Bytes and inodes of the filesystem mounted at `path` (statfs). */
export async function filesystemStats(path: string): Promise<FilesystemStats> {
  const s = await statfs(path).catch((err: unknown) => { throw fromNodeError(err, `cannot statfs ${path}`, { path }); });
  return {
    totalBytes: s.blocks * s.bsize,
    availableBytes: s.bavail * s.bsize,
    usedBytes: (s.blocks - s.bfree) * s.bsize,
    totalInodes: s.files,
    freeInodes: s.ffree,
    usedInodes: s.files - s.ffree,
  };
}

/** The size in bytes of a block device (BLKGETSIZE64). */
export async function blockDeviceBytes(devicePath: string): Promise<number> {
  const fh = await open(devicePath, constants.O_RDONLY).catch((err: unknown) => { throw fromNodeError(err, `cannot open ${devicePath}`, { device: devicePath }); });
  try {
    return await blockDeviceSize(fh.fd);
  } finally {
    await fh.close();
  }
}
