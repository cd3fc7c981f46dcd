// Restart safety on the kernel's nbd driver (VM only): a real cairnd (single node, embedded
// store, file pool) stages a volume through the CSI Node service on /dev/nbdX with ext4;
// a writer writes and fsyncs files of known content; cairnd is killed with SIGKILL and
// started again on the same data directory. The same /dev/nbdX gets a new connection
// (NBD_CMD_RECONFIGURE), so the writer only pauses: it finishes without an I/O error,
// every file reads back from the device with its sha256, the kernel logged no I/O error,
// e2fsck finds the filesystem clean, and NodeUnstageVolume after the restart lets the
// device go.
import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { findMount } from '../../src/engine/mounter.js';
import { csiClient, ok, type CsiMessage } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { run } from '../helpers/run.js';

const MIB = 1024 * 1024;
/** Minutes, not seconds: under software emulation a cairnd start takes tens of seconds. */
const WAIT_MS = 10 * 60_000;
const mountCap: CsiMessage = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/**
 * Writes w-0, w-1, ... into `dir` until `stop` exists: each is its number and a newline,
 * then `seed`, written by dd with conv=fsync. The first failed write or fsync ends it with
 * exit code 1 and the file's name on stderr.
 */
const WRITER = `
seed=$1; dir=$2; stop=$3; i=0
while [ ! -e "$stop" ]; do
  { echo "$i"; cat "$seed"; } | dd of="$dir/w-$i" bs=64k iflag=fullblock conv=fsync status=none || { echo "writing w-$i failed" >&2; exit 1; }
  i=$((i+1))
done`;

function written(dir: string): number {
  return readdirSync(dir).filter((f) => f.startsWith('w-')).length;
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let waited = 0; !check(); waited += 200) {
    if (waited > WAIT_MS) throw new Error(`gave up waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test.serial('a cairnd kill -9 under a writer on /dev/nbdX: the same device reconnects, no I/O error, files intact, unstage after', async (t) => {
  // A wide reconnect window: the test proves the mechanism, whatever a start costs here.
  const d = await Daemon.start({ extraArgs: ['--node-name', 'vm-node', '--attach-reconnect-ms', String(WAIT_MS)] });
  const csi = await csiClient(join(d.dataDir, 'csi.sock'));
  const staging = join(d.dataDir, 'staging');
  const work = join(d.dataDir, 'work');
  mkdirSync(staging);
  mkdirSync(work);
  t.teardown(async () => {
    await run('umount', [staging]).catch(() => undefined);
    if (d.running) await csi.node.NodeUnstageVolume!({ volumeId: 'restart', stagingTargetPath: staging }).catch(() => undefined);
    csi.close();
    await d.destroy();
  });

  ok(await csi.controller.CreateVolume!({ name: 'restart', capacityRange: { requiredBytes: String(64 * MIB) }, volumeCapabilities: [mountCap] }));
  const mark = d.logMark();
  ok(await csi.node.NodeStageVolume!({ volumeId: 'restart', stagingTargetPath: staging, volumeCapability: mountCap }));
  const device = String((await d.waitForEvent({ msg: 'volume staged', volume: 'restart' }, { since: mark })).device);
  t.regex(device, /^\/dev\/nbd\d+$/);
  const sysDir = `/sys/block/${device.slice('/dev/'.length)}`;
  t.is(readFileSync(`${sysDir}/backend`, 'utf8').trim(), 'cairn:restart', 'the device carries the volume as its backend identifier');
  t.is((await findMount(staging))?.fsType, 'ext4');

  const seed = join(work, 'seed.bin');
  writeFileSync(seed, Buffer.from(Array.from({ length: 256 * 1024 }, (_, i) => (i * 131 + 7) & 0xff)));
  const stop = join(work, 'stop');
  const writer = execa('sh', ['-c', WRITER, 'writer', seed, staging, stop], { reject: false });
  t.teardown(() => void writer.kill('SIGKILL'));
  await until('the writer to write 4 files', () => written(staging) >= 4 || writer.exitCode !== null);

  // Counted before the kill: nothing here may touch the filesystem while no cairnd serves it
  // (a read would block this process, which has to start the next cairnd).
  const beforeRestart = written(staging);
  await d.crash();
  t.true(existsSync(`${sysDir}/pid`), 'the kernel device outlives cairnd');
  const restartMark = d.logMark();
  await d.launch();
  await d.waitForEvent({ msg: 'nbd device reconnected to its export', volume: 'restart', device }, { since: restartMark, timeoutMs: WAIT_MS });
  await until('the writer to go on after the restart', () => written(staging) >= beforeRestart + 4 || writer.exitCode !== null);
  writeFileSync(stop, '');
  const w = await writer;
  t.is(w.exitCode, 0, `the writer saw no I/O error: ${String(w.stderr)}`);
  t.true(written(staging) >= beforeRestart + 4, 'the writer went on after the restart');

  // Read back from the device, not the page cache.
  await run('sync', []);
  writeFileSync('/proc/sys/vm/drop_caches', '3');
  const seedBytes = readFileSync(seed);
  const files = readdirSync(staging).filter((f) => f.startsWith('w-'));
  for (const f of files) {
    const expected = sha(Buffer.concat([Buffer.from(`${f.slice(2)}\n`), seedBytes]));
    t.is(sha(readFileSync(join(staging, f))), expected, `${f} reads back intact`);
  }
  const kernelLog = (await execa('dmesg', [], { reject: false })).stdout;
  const name = device.slice('/dev/'.length);
  t.false(new RegExp(`I/O error, dev ${name}\\b|Buffer I/O error on dev ${name}\\b|EXT4-fs error \\(device ${name}\\)`).test(kernelLog),
    'the kernel logged no I/O error on the device');

  await run('umount', [staging]);
  const fsck = await execa('e2fsck', ['-fn', device], { reject: false });
  t.is(fsck.exitCode, 0, `e2fsck -fn is clean: ${fsck.stdout}\n${fsck.stderr}`);

  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'restart', stagingTargetPath: staging }));
  t.false(existsSync(`${sysDir}/pid`), 'NodeUnstageVolume after the restart let the device go');
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'restart', stagingTargetPath: staging }));
});
