/**
 * `cairnctl volume attach/detach` on a host kernel without the nbd driver: the fallback
 * through nbdfuse and a loop device, logged as such. (The /dev/nbdX path runs in the
 * kernel-test VM, test/kernel/daemon-dm.test.ts.) Needs root, nbdfuse, losetup and FUSE.
 */
import test from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AttachmentMessage } from '../../src/cli/api-client.js';
import { Daemon } from '../helpers/daemon.js';
import { combine, missingCommands, missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const missing = combine(
  missingRoot('loop devices and FUSE mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'losetup'),
);
// With an nbd driver the daemon attaches through /dev/nbdX: that path runs in the kernel VM.
const fsTest = onlyWhere(!existsSync('/sys/module/nbd'), 'this kernel has the nbd driver; test/kernel covers /dev/nbdX', requiring(missing, test.serial));

fsTest('attach falls back to nbdfuse + loop without an nbd driver; detach is clean', async (t) => {
  const d = await Daemon.start({ extraArgs: ['--pool-backend', 'file'] });
  t.teardown(() => d.destroy());
  await d.ctl(['volume', 'create', 'att', '--size', '64MiB']);
  const a = await d.ctlJson<AttachmentMessage>(['volume', 'attach', 'att']);
  t.is(a.method, 'nbdfuse-loop');
  t.regex(a.devicePath, /^\/dev\/loop\d+$/);
  t.true(d.events().some((e) => e.msg === 'kernel has no nbd driver: volumes attach through nbdfuse and a loop device'));
  const again = await d.ctlJson<AttachmentMessage>(['volume', 'attach', 'att']);
  t.is(again.devicePath, a.devicePath, 'attach is idempotent');

  const mnt = mkdtempSync('/tmp/cairn-att-');
  t.teardown(() => rmSync(mnt, { recursive: true, force: true }));
  await run('mkfs.ext4', ['-q', '-F', a.devicePath]);
  await run('mount', [a.devicePath, mnt]);
  writeFileSync(join(mnt, 'hello.txt'), 'through the kernel\n');
  await run('umount', [mnt]);
  const plain = await d.ctl(['volume', 'detach', 'att']);
  t.is(plain.exitCode, 0, plain.stderr);
  t.is(plain.stdout, 'volume att detached');
  const loops = await run('losetup', ['-a']);
  t.false(loops.includes(`${a.devicePath}:`), 'the loop device is gone');
  t.is((await d.ctl(['volume', 'detach', 'att'])).exitCode, 0, 'detach is idempotent');

  const b = await d.ctlJson<AttachmentMessage>(['volume', 'attach', 'att']);
  await run('mount', [b.devicePath, mnt]);
  t.is(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'through the kernel\n');
  await run('umount', [mnt]);
  await d.ctl(['volume', 'detach', 'att']);
});
