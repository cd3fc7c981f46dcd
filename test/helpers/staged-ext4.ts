/**
 * For integration tests that stage volumes as ext4 (nbdfuse + loop) and freeze them: what
 * they need on the machine, and the check that a filesystem is not frozen.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { etcdMissingReason } from './etcd.js';
import { combine, missingCommands, missingRoot } from './prereq.js';

/** Why staged ext4 volumes on several daemons (etcd) cannot run here; undefined when they can. */
export async function stagedExt4OnEtcdMissing(): Promise<string | undefined> {
  return combine(
    missingRoot('loop devices, FUSE, mounts and FIFREEZE'),
    existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
    await missingCommands('nbdfuse', 'losetup', 'mkfs.ext4', 'fsfreeze'),
    await etcdMissingReason(),
  );
}

/** A synced write into `dir`: it completes only once the filesystem is thawed (on a frozen ext4 it waits). */
export async function syncedWrite(dir: string, name: string, timeoutMs = 120_000): Promise<{ exitCode: number | undefined; why: string }> {
  const path = join(dir, name);
  const w = await execa('sh', ['-c', `echo written > ${path} && sync -f ${path}`], { reject: false, timeout: timeoutMs });
  return { exitCode: w.exitCode, why: `${w.stderr}${w.timedOut ? ' (still blocked: frozen)' : ''}` };
}
