/**
 * A kernel block device for an NBD export on a kernel without the nbd driver: nbdfuse
 * shows the export as a file, and a loop device (direct I/O) makes a block device of it.
 * Teardown order matters: umount, losetup -d, fusermount3 -u, then the server may stop.
 */
import { execa, type ResultPromise } from 'execa';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './run.js';

export interface Attached {
  device: string;
  mountPoint: string;
  mount(fsType?: string): Promise<void>;
  umount(): Promise<void>;
  detach(): Promise<void>;
}

export async function attachViaFuse(uri: string): Promise<Attached> {
  const dir = mkdtempSync('/tmp/cairn-fuse-');
  const fuseDir = join(dir, 'fuse');
  const mountPoint = join(dir, 'mnt');
  await run('mkdir', ['-p', fuseDir, mountPoint]);
  const fuse: ResultPromise = execa('nbdfuse', [fuseDir, uri], { reject: false });
  const file = join(fuseDir, 'nbd');
  for (let i = 0; i < 100 && !existsSync(file); i++) {
    if (fuse.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!existsSync(file)) {
    fuse.kill('SIGTERM');
    const r = await fuse;
    throw new Error(`nbdfuse did not show the export: ${r.stderr}`);
  }
  const device = await run('losetup', ['-f', '--show', '--direct-io=on', file]);
  let mounted = false;
  let detached = false;
  return {
    device,
    mountPoint,
    async mount(fsType?: string) {
      await run('mount', [...(fsType ? ['-t', fsType] : []), device, mountPoint]);
      mounted = true;
    },
    async umount() {
      if (!mounted) return;
      await run('umount', [mountPoint]);
      mounted = false;
    },
    async detach() {
      if (detached) return;
      detached = true;
      if (mounted) await run('umount', [mountPoint]).catch(() => run('umount', ['-l', mountPoint]));
      mounted = false;
      await run('losetup', ['-d', device]).catch(() => undefined);
      await run('fusermount3', ['-u', fuseDir]).catch(() => undefined);
      fuse.kill('SIGTERM');
      await fuse;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
