/**
 * Where a test daemon's file pool keeps its device files: `<data dir>/pool/devices` in the
 * direct layout, `<data dir>/pool/xfs/devices` in the xfs-image layout (docs/pool-file.md).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export function poolDeviceDirs(dataDir: string): string[] {
  return [join(dataDir, 'pool', 'xfs', 'devices'), join(dataDir, 'pool', 'devices')];
}

/** The device file `name` in whichever layout holds it (the xfs-image one when neither does yet). */
export function poolDeviceFile(dataDir: string, name: string): string {
  const dirs = poolDeviceDirs(dataDir);
  return dirs.map((d) => join(d, name)).find((p) => existsSync(p)) ?? join(dirs[0]!, name);
}

/** The pool's own xfs image mount (xfs-image layout): not a volume's leftover. */
export function isPoolImageMount(mountPoint: string): boolean {
  return mountPoint.endsWith('/pool/xfs');
}

/** A `losetup -l -O NAME,BACK-FILE` line of the pool's own xfs image: not a volume's leftover. */
export function isPoolImageLoop(line: string): boolean {
  return line.trimEnd().endsWith('/pool/xfs-pool.img');
}
