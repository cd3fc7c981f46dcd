/**
 * The CSI Node service of a real cairnd (role all, embedded store) across its own restarts
 * and what operators see of it, on this host's attach path (nbdfuse + loop):
 * - a graceful stop (SIGTERM, as a DaemonSet rolling update sends) with a staged, mounted
 *   volume and a real writer process (dd, O_DIRECT + fsync) running across the stop and
 *   the restart: no I/O error, every byte reads back, and unstage leaves nothing behind;
 * - publication: a volume published to another node is refused with the holder's name, one
 *   published read-only here is mounted read-only;
 * - `cairnctl volume inspect` and `volume list` show the publication and this node's
 *   staging (state, path, device, attach method).
 */
import test, { type ExecutionContext } from 'ava';
import { execa, type ResultPromise } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { findMount, listMounts } from '../../src/engine/mounter.js';
import { csiClient, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { combine, missingCommands, missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const NODE = 'node-r';
const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'dd', 'bash'),
);
const nodeTest = onlyWhere(!existsSync('/sys/module/nbd'), 'this kernel has the nbd driver; test/kernel covers /dev/nbdX', requiring(missing, test.serial));

let daemon: Daemon | undefined;
let csi: CsiTestClient;
let root: string;

function mountCap(mode = 'SINGLE_NODE_WRITER'): CsiMessage {
  return { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode } };
}

async function start(): Promise<Daemon> {
  if (daemon) return daemon;
  daemon = await Daemon.start({ extraArgs: ['--node-name', NODE] });
  csi = await csiClient(join(daemon.dataDir, 'csi.sock'));
  root = mkdtempSync('/tmp/cairn-csi-rst-');
  return daemon;
}

async function create(name: string, sizeMiB: number): Promise<void> {
  const r = await daemon!.ctl(['volume', 'create', name, '--size', `${sizeMiB}MiB`]);
  if (r.exitCode !== 0) throw new Error(`volume create ${name}: ${r.stderr}`);
}

/** Restarts cairnd (SIGTERM or kill -9 first, or neither when it is stopped) with a new CSI client; the state change runs in between. */
async function restart(how: 'stop' | 'none', between: () => Promise<void> = async () => undefined): Promise<number | undefined> {
  csi.close();
  const code = how === 'stop' ? await daemon!.stop() : undefined;
  await between();
  await daemon!.launch();
  csi = await csiClient(join(daemon!.dataDir, 'csi.sock'));
  return code;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Processes whose command line mentions `text` (an attachment's nbdfuse and nbdkit). */
function processesMentioning(text: string): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text);
    } catch {
      return false;
    }
  }).map(Number);
}

async function loopsUnder(dir: string): Promise<string[]> {
  return (await run('losetup', ['-n', '-O', 'NAME,BACK-FILE', '-l'])).split('\n').filter((l) => l.includes(dir));
}

async function assertNothingLeft(t: ExecutionContext, d: Daemon): Promise<void> {
  const mounts = (await listMounts()).filter((m) => m.mountPoint.startsWith(root) || m.mountPoint.startsWith(d.dataDir));
  t.deepEqual(mounts.map((m) => m.mountPoint), [], 'no mount left');
  t.deepEqual(await loopsUnder(d.dataDir), [], 'no loop device left');
  t.deepEqual(processesMentioning(join(d.dataDir, 'attach')), [], 'no nbdfuse or nbdkit left');
}

test.after.always(async () => {
  csi?.close();
  if (root) {
    // A failed test may leave mounts: take them away before the directories go.
    for (const m of (await listMounts()).filter((e) => e.mountPoint.startsWith(root)).reverse()) await run('umount', ['-l', m.mountPoint]).catch(() => undefined);
  }
  if (daemon) {
    for (const line of await loopsUnder(daemon.dataDir).catch(() => [])) await run('losetup', ['-d', line.split(/\s+/)[0]!]).catch(() => undefined);
    for (const pid of processesMentioning(join(daemon.dataDir, 'attach'))) process.kill(pid, 'SIGKILL');
    await daemon.destroy();
  }
  if (root) rmSync(root, { recursive: true, force: true });
});

/** What writer file f<i> holds: its own line repeated, 64 KiB. */
function writerContent(i: number): Buffer {
  const line = Buffer.from(`cairn writer file ${i}\n`);
  return Buffer.concat(Array.from({ length: Math.ceil(65536 / line.length) }, () => line)).subarray(0, 65536);
}

/**
 * A writer process: dd writes f0, f1, ... (64 KiB each, O_DIRECT, fsync) into `dir` until
 * `stopFile` exists; any failed write ends it with that exit status.
 */
function startWriter(dir: string, stopFile: string): ResultPromise {
  const script = `i=0
while [ ! -e "$2" ]; do
  yes "cairn writer file $i" | head -c 65536 | dd of="$1/f$i" bs=64k count=1 iflag=fullblock oflag=direct conv=fsync status=none || exit 3
  i=$((i+1))
done
echo "$i"`;
  return execa('bash', ['-c', script, 'writer', dir, stopFile], { reject: false });
}

function countFiles(dir: string): number {
  return readdirSync(dir).filter((f) => /^f\d+$/.test(f)).length;
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 50));
}

nodeTest('SIGTERM and restart with a dd writer running through the mount: no I/O error, every byte back, unstage leaves nothing', async (t) => {
  const d = await start();
  await create('rst-term', 64);
  const staging = join(root, 'term-staging');
  const target = join(root, 'term-target');
  mkdirSync(staging);
  ok(await csi.node.NodeStageVolume!({ volumeId: 'rst-term', stagingTargetPath: staging, volumeCapability: mountCap() }));
  ok(await csi.node.NodePublishVolume!({ volumeId: 'rst-term', stagingTargetPath: staging, targetPath: target, volumeCapability: mountCap() }));
  const before = randomBytes(MiB);
  writeFileSync(join(target, 'before'), before);
  await run('sync', []);

  const stopFile = join(root, 'term-stop');
  const writer = startWriter(target, stopFile);
  await until(() => countFiles(target) >= 10 || writer.exitCode !== null);
  t.is(await restart('stop'), 0, 'cairnd stopped cleanly on SIGTERM');
  const atRestart = countFiles(target);
  // The writer goes on through the restarted daemon (it would have ended with status 3 on an I/O error).
  await until(() => countFiles(target) >= atRestart + 20 || writer.exitCode !== null);
  writeFileSync(stopFile, '');
  const result = await writer;
  t.is(result.exitCode, 0, `the writer saw no I/O error: ${result.stderr}`);
  const written = Number(result.stdout);
  t.true(written >= atRestart + 20, 'the writer went on after the restart');
  for (let i = 0; i < written; i++) {
    if (!readFileSync(join(target, `f${i}`)).equals(writerContent(i))) t.fail(`f${i} differs`);
  }
  t.is(sha(readFileSync(join(target, 'before'))), sha(before), 'the file written before the stop reads back');
  const fh = await open(join(target, 'after'), 'w');
  await fh.write(randomBytes(MiB));
  await fh.sync();
  await fh.close();
  t.true((await findMount(staging))!.options.includes('rw'), 'ext4 saw no error (it would have gone read-only)');

  ok(await csi.node.NodeUnpublishVolume!({ volumeId: 'rst-term', targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'rst-term', stagingTargetPath: staging }));
  await assertNothingLeft(t, d);
});
