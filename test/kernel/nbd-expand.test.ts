// Online expansion on the kernel's nbd driver (VM only): a real cairnd (single node,
// embedded store, file pool) stages ext4 on /dev/nbdX through the CSI Node service; with a
// writer fsyncing files, ControllerExpandVolume then NodeExpandVolume grow the volume, the
// device (netlink RECONFIGURE with the new size) and the mounted ext4 (resize2fs, which
// needs CAP_SYS_RESOURCE: the guest has every capability). df shows the new size, a file
// that fits only in the new space reads back from the device, the writer saw no error,
// the kernel logged none, and e2fsck finds the filesystem clean. A block volume's device
// grows the same way.
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statfsSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { csiClient, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { run } from '../helpers/run.js';

const MIB = 1024 * 1024;
const mountCap: CsiMessage = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
const blockCap: CsiMessage = { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Writes w-0, w-1, ... into `dir` with dd conv=fsync until `stop` exists; the first failure exits 1. */
const WRITER = `
dir=$1; stop=$2; i=0
while [ ! -e "$stop" ]; do
  echo "file $i" | dd of="$dir/w-$i" conv=fsync status=none || { echo "writing w-$i failed" >&2; exit 1; }
  i=$((i+1))
done`;

async function writeSynced(path: string, data: Buffer): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function growBoth(csi: CsiTestClient, volumeId: string, extra: CsiMessage, bytes: number): Promise<number> {
  const range = { requiredBytes: String(bytes) };
  ok(await csi.controller.ControllerExpandVolume!({ volumeId, capacityRange: range }));
  return Number(ok(await csi.node.NodeExpandVolume!({ volumeId, capacityRange: range, ...extra })).capacityBytes);
}

test.serial('ext4 on /dev/nbdX grows online under a writer: df shows it, the new space holds data, e2fsck clean; a block volume grows too', async (t) => {
  const d = await Daemon.start({ extraArgs: ['--node-name', 'vm-node'] });
  const csi = await csiClient(join(d.dataDir, 'csi.sock'));
  const staging = join(d.dataDir, 'staging');
  const blockStaging = join(d.dataDir, 'block-staging');
  const work = join(d.dataDir, 'work');
  for (const dir of [staging, blockStaging, work]) mkdirSync(dir);
  t.teardown(async () => {
    await run('umount', [staging]).catch(() => undefined);
    await csi.node.NodeUnstageVolume!({ volumeId: 'grow', stagingTargetPath: staging }).catch(() => undefined);
    await csi.node.NodeUnstageVolume!({ volumeId: 'grow-block', stagingTargetPath: blockStaging }).catch(() => undefined);
    csi.close();
    await d.destroy();
  });

  ok(await csi.controller.CreateVolume!({ name: 'grow', capacityRange: { requiredBytes: String(64 * MIB) }, volumeCapabilities: [mountCap] }));
  const mark = d.logMark();
  ok(await csi.node.NodeStageVolume!({ volumeId: 'grow', stagingTargetPath: staging, volumeCapability: mountCap }));
  const device = String((await d.waitForEvent({ msg: 'volume staged', volume: 'grow' }, { since: mark })).device);
  t.regex(device, /^\/dev\/nbd\d+$/);
  const name = device.slice('/dev/'.length);
  const before = statfsSync(staging);

  const stop = join(work, 'stop');
  const writer = execa('sh', ['-c', WRITER, 'writer', staging, stop], { reject: false });
  t.teardown(() => void writer.kill('SIGKILL'));
  t.is(await growBoth(csi, 'grow', { volumePath: staging, stagingTargetPath: staging, volumeCapability: mountCap }, 192 * MIB), 192 * MIB);
  t.is(Number(readFileSync(`/sys/block/${name}/size`, 'utf8').trim()) * 512, 192 * MIB, 'the kernel device has the new size');
  writeFileSync(stop, '');
  const w = await writer;
  t.is(w.exitCode, 0, `the writer saw no I/O error: ${String(w.stderr)}`);

  const df = Number((await run('df', ['-B1', '--output=size', staging])).split('\n')[1]!.trim());
  t.true(df > before.blocks * before.bsize + 100 * MIB, `df shows the new size: ${before.blocks * before.bsize} -> ${df}`);
  const big = randomBytes(before.bavail * before.bsize + 16 * MIB);
  await writeSynced(join(staging, 'big'), big);
  writeFileSync('/proc/sys/vm/drop_caches', '3');
  t.is(sha(readFileSync(join(staging, 'big'))), sha(big), 'a file that fits only in the new space reads back from the device');
  t.true(readdirSync(staging).filter((f) => f.startsWith('w-')).length > 0);
  ok(await csi.node.NodeExpandVolume!({ volumeId: 'grow', volumePath: staging, capacityRange: { requiredBytes: String(192 * MIB) } })); // again: OK

  const kernelLog = (await execa('dmesg', [], { reject: false })).stdout;
  t.false(new RegExp(`I/O error, dev ${name}\\b|Buffer I/O error on dev ${name}\\b|EXT4-fs error \\(device ${name}\\)`).test(kernelLog), 'the kernel logged no I/O error on the device');
  await run('umount', [staging]);
  const fsck = await execa('e2fsck', ['-fn', device], { reject: false });
  t.is(fsck.exitCode, 0, `e2fsck -fn is clean: ${fsck.stdout}\n${fsck.stderr}`);
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'grow', stagingTargetPath: staging }));

  ok(await csi.controller.CreateVolume!({ name: 'grow-block', capacityRange: { requiredBytes: String(32 * MIB) }, volumeCapabilities: [blockCap] }));
  const blockMark = d.logMark();
  ok(await csi.node.NodeStageVolume!({ volumeId: 'grow-block', stagingTargetPath: blockStaging, volumeCapability: blockCap }));
  const blockDevice = String((await d.waitForEvent({ msg: 'volume staged', volume: 'grow-block' }, { since: blockMark })).device);
  t.is(await growBoth(csi, 'grow-block', { volumePath: blockDevice, stagingTargetPath: blockStaging, volumeCapability: blockCap }, 64 * MIB), 64 * MIB);
  t.is(Number((await run('blockdev', ['--getsize64', blockDevice])).trim()), 64 * MIB);
  const tail = randomBytes(MIB);
  const fh = await open(blockDevice, 'r+');
  try {
    await fh.write(tail, 0, MIB, 63 * MIB);
    await fh.sync();
  } finally {
    await fh.close();
  }
  writeFileSync('/proc/sys/vm/drop_caches', '3');
  const back = Buffer.alloc(MIB);
  const rh = await open(blockDevice, 'r');
  try {
    await rh.read(back, 0, MIB, 63 * MIB);
  } finally {
    await rh.close();
  }
  t.is(sha(back), sha(tail), 'bytes at the new end read back');
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'grow-block', stagingTargetPath: blockStaging }));
});
