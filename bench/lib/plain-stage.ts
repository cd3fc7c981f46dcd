/**
 * The reference peer of NodeStage/NodePublish: what a hostpath-style driver does with a
 * file of the same size on the same filesystem, in plain Linux commands.
 *
 * - create: a sparse file (`truncate -s`); delete: `rm`.
 * - stage: `losetup -f --show FILE`, then for a mount volume `mkfs.ext4 -q -F` and
 *   `mount -t ext4` at the staging directory; a block volume is the loop device alone.
 * - publish: mount: `mkdir` the target and `mount --bind` the staging directory onto it;
 *   block: create the target file and bind-mount the loop device node onto it.
 * - unpublish: `umount` the target and remove it; unstage: `umount` (mount) and `losetup -d`.
 */
import { mkdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { run } from '../../test/helpers/run.js';

export interface PlainVolume {
  file: string;
  block: boolean;
  loop?: string;
  staging?: string;
  target?: string;
}

export async function plainCreate(file: string, sizeBytes: number, block: boolean): Promise<PlainVolume> {
  await run('truncate', ['-s', String(sizeBytes), file]);
  return { file, block };
}

export async function plainStage(v: PlainVolume, staging: string): Promise<void> {
  v.loop = await run('losetup', ['-f', '--show', v.file]);
  if (v.block) return;
  await run('mkfs.ext4', ['-q', '-F', v.loop]);
  await run('mount', ['-t', 'ext4', v.loop, staging]);
  v.staging = staging;
}

export async function plainPublish(v: PlainVolume, target: string): Promise<void> {
  if (v.block) await writeFile(target, '');
  else await mkdir(target);
  await run('mount', ['--bind', v.block ? v.loop! : v.staging!, target]);
  v.target = target;
}

export async function plainUnpublish(v: PlainVolume): Promise<void> {
  if (!v.target) return;
  await run('umount', [v.target]);
  if (v.block) await rm(v.target);
  else await rmdir(v.target);
  v.target = undefined;
}

export async function plainUnstage(v: PlainVolume): Promise<void> {
  if (v.staging) await run('umount', [v.staging]);
  v.staging = undefined;
  if (v.loop) await run('losetup', ['-d', v.loop]);
  v.loop = undefined;
}

export async function plainDelete(v: PlainVolume): Promise<void> {
  await rm(v.file, { force: true });
}
