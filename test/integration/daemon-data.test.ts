/**
 * Data on a cairnd volume through real clients: a filesystem through nbdfuse + loop, and
 * flushed data across a kill -9. Needs root, loop devices and FUSE.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ExportMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { Daemon } from '../helpers/daemon.js';
import { attachViaFuse } from '../helpers/fuse-attach.js';
import { combine, missingCommands, missingRoot, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const fsTest = requiring(combine(missingRoot('loop devices and FUSE mounts'), await missingCommands('nbdfuse', 'losetup')), test.serial);

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function writeFiles(dir: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (let i = 0; i < 20; i++) {
    const name = `file-${i}.bin`;
    const data = randomBytes(1000 + i * 37_001);
    writeFileSync(join(dir, name), data);
    sums.set(name, createHash('sha256').update(data).digest('hex'));
  }
  const big = randomBytes(16 * 1024 * 1024);
  writeFileSync(join(dir, 'big.bin'), big);
  sums.set('big.bin', createHash('sha256').update(big).digest('hex'));
  return sums;
}

function assertFiles(t: { deepEqual: (a: unknown, b: unknown, m?: string) => void }, dir: string, sums: Map<string, string>, when: string): void {
  const got = new Map([...sums.keys()].map((name) => [name, sha256(join(dir, name))]));
  t.deepEqual([...got.entries()], [...sums.entries()], `every file's sha256 matches ${when}`);
}

fsTest('ext4 on a cairnd volume: write, freeze, thaw, remount and survive a restart', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  await d.ctl(['volume', 'create', 'fs', '--size', '256MiB']);
  const { uri } = await d.ctlJson<ExportMessage>(['volume', 'export', 'fs']);

  let dev = await attachViaFuse(uri);
  t.teardown(() => dev.detach());
  await run('mkfs.ext4', ['-q', '-F', dev.device]);
  await dev.mount('ext4');
  const sums = writeFiles(dev.mountPoint);

  await run('fsfreeze', ['-f', dev.mountPoint]);
  try {
    await run('fsfreeze', ['-u', dev.mountPoint]);
  } catch (err) {
    await run('fsfreeze', ['-u', dev.mountPoint]).catch(() => undefined);
    throw err;
  }
  writeFileSync(join(dev.mountPoint, 'after-thaw.txt'), 'written after the thaw\n');
  sums.set('after-thaw.txt', createHash('sha256').update('written after the thaw\n').digest('hex'));

  await dev.umount();
  await dev.mount('ext4');
  assertFiles(t, dev.mountPoint, sums, 'after a remount');
  await dev.detach();

  await d.restart();
  const volume = await d.ctlJson<VolumeMessage>(['volume', 'inspect', 'fs']);
  t.is(volume.export?.uri, uri, 'the export is back after the restart, at the same URI');
  dev = await attachViaFuse(uri);
  await run('e2fsck', ['-f', '-n', dev.device]);
  await dev.mount('ext4');
  assertFiles(t, dev.mountPoint, sums, 'after a cairnd restart');
  await dev.detach();
});

test.serial('flushed writes survive kill -9 of cairnd', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  await d.ctl(['volume', 'create', 'crash', '--size', '64MiB']);
  const { uri } = await d.ctlJson<ExportMessage>(['volume', 'export', 'crash']);

  // qemu-io's default is write-through: each write is acknowledged only after FUA or a flush.
  const writes: [number, number, number][] = [[0x11, 0, 1 << 20], [0x22, 5 << 20, 4 << 20], [0x33, 63 << 20, 1 << 20], [0x44, (40 << 20) + 12345 * 512, 4096]];
  await run('qemu-io', ['-f', 'raw', ...writes.flatMap(([p, off, len]) => ['-c', `write -P ${p} ${off} ${len}`]), '-c', 'flush', uri]);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -z 20M 1M', '-c', 'flush', uri]);
  await d.crash();

  await d.launch();
  const reads = writes.flatMap(([p, off, len]) => ['-c', `read -P ${p} ${off} ${len}`]);
  const out = await run('qemu-io', ['-f', 'raw', ...reads, '-c', 'read -P 0 20M 1M', uri]);
  t.notRegex(out, /Pattern verification failed/);
  t.is(out.match(/^read \d+\/\d+ bytes/gm)?.length, writes.length + 1, 'every read ran');
  t.true(d.events().some((e) => e.msg === 'cairnd started'), 'cairnd logged its start');
});
