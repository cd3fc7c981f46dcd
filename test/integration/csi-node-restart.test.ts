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
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { VolumeMessage } from '../../src/cli/api-client.js';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { updateVolumeDoc } from '../../src/cluster/volume-doc.js';
import { deviceNumber, findMount, listMounts } from '../../src/engine/mounter.js';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { DdWriter } from '../helpers/dd-writer.js';
import { combine, missingCommands, missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';
import { isPoolImageLoop, isPoolImageMount } from '../helpers/pool-paths.js';
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

/** Writes the volume's publication (what ControllerPublishVolume records) into the stopped daemon's embedded store. */
async function setPublished(volume: string, published: { nodeId: string; readonly: boolean }[]): Promise<void> {
  const store = EmbeddedStore.open({ path: join(daemon!.dataDir, 'cluster.db'), cluster: 'default', log: silentLogger() });
  try {
    await updateVolumeDoc(store, volume, (doc) => ({ ...doc, published: published.map((p) => ({ nodeId: p.nodeId as NodeId, readonly: p.readonly })) }));
  } finally {
    await store.close();
  }
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
  const mounts = (await listMounts()).filter((m) => (m.mountPoint.startsWith(root) || m.mountPoint.startsWith(d.dataDir)) && !isPoolImageMount(m.mountPoint));
  t.deepEqual(mounts.map((m) => m.mountPoint), [], 'no mount left');
  t.deepEqual((await loopsUnder(d.dataDir)).filter((l) => !isPoolImageLoop(l)), [], 'no loop device left');
  t.deepEqual(processesMentioning(join(d.dataDir, 'attach')), [], 'no nbdfuse or nbdkit left');
}

test.after.always(async () => {
  csi?.close();
  // A failed test may leave mounts, loop devices and nbdfuse: take them away before the directories go.
  const dirs = [root, daemon?.dataDir].filter((d): d is string => Boolean(d));
  const leftovers = async (): Promise<string[]> => (await listMounts()).map((m) => m.mountPoint).filter((p) => dirs.some((d) => p.startsWith(d))).reverse();
  for (const m of (await leftovers()).filter((p) => root && p.startsWith(root))) await run('umount', ['-l', m]).catch(() => undefined);
  if (daemon) {
    for (const line of await loopsUnder(daemon.dataDir).catch(() => [])) await run('losetup', ['-d', line.split(/\s+/)[0]!]).catch(() => undefined);
    for (const pid of processesMentioning(join(daemon.dataDir, 'attach'))) process.kill(pid, 'SIGKILL');
    await daemon.crash();
    for (const m of await leftovers()) await run('umount', ['-l', m]).catch(() => undefined);
    await daemon.destroy();
  }
  if (root) rmSync(root, { recursive: true, force: true });
});

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
  await run('sync', ['-f', target]); // this filesystem only: a global sync would wait on any other stuck mount on the machine

  const writer = DdWriter.start({ dir: target }, mkdtempSync(join(root, 'term-writer-')));
  await writer.waitWritten(10);
  t.is(await restart('stop'), 0, 'cairnd stopped cleanly on SIGTERM');
  const atRestart = writer.written();
  // The writer goes on through the restarted daemon (it would have ended with status 3 on an I/O error).
  await writer.waitWritten(atRestart + 20);
  const result = await writer.stop();
  t.is(result.exitCode, 0, `the writer saw no I/O error: ${result.stderr}`);
  t.true(result.written >= atRestart + 20, 'the writer went on after the restart');
  t.deepEqual(await writer.mismatches(), [], 'every file the writer wrote reads back');
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

nodeTest('publication: refused while published to another node (named); published read-only here it mounts read-only; cairnctl shows both and the staging', async (t) => {
  const d = await start();
  await create('rst-pub', 64);
  const staging = join(root, 'pub-staging');
  const target = join(root, 'pub-target');
  mkdirSync(staging);
  const stage = { volumeId: 'rst-pub', stagingTargetPath: staging, volumeCapability: mountCap() };
  // Published nowhere (a cairnctl volume): staged, formatted; a file is left on it.
  ok(await csi.node.NodeStageVolume!(stage));
  writeFileSync(join(staging, 'kept'), 'written before the publication changed');
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'rst-pub', stagingTargetPath: staging }));

  await restart('stop', () => setPublished('rst-pub', [{ nodeId: 'node-elsewhere', readonly: false }]));
  const refused = await csi.node.NodeStageVolume!(stage);
  t.is(codeName(refused), 'FAILED_PRECONDITION');
  t.regex(refused.message ?? '', /published to node "node-elsewhere", not to this node "node-r"/);
  t.falsy(await findMount(staging), 'nothing was mounted');
  const elsewhere = await d.ctl(['volume', 'inspect', 'rst-pub']);
  t.regex(elsewhere.stdout, /^Published:\s+node-elsewhere$/m);
  t.regex(elsewhere.stdout, /^Staging:\s+not staged on this node$/m);

  await restart('stop', () => setPublished('rst-pub', [{ nodeId: NODE, readonly: true }]));
  ok(await csi.node.NodeStageVolume!(stage));
  t.true((await findMount(staging))!.options.includes('ro'), 'staged read-only under a writer access mode');
  ok(await csi.node.NodePublishVolume!({ ...stage, targetPath: target }));
  t.is(readFileSync(join(target, 'kept'), 'utf8'), 'written before the publication changed');
  t.is((t.throws(() => writeFileSync(join(target, 'nope'), 'x')) as NodeJS.ErrnoException).code, 'EROFS');

  const inspect = await d.ctl(['volume', 'inspect', 'rst-pub']);
  t.is(inspect.exitCode, 0, inspect.stderr);
  t.regex(inspect.stdout, /^Published:\s+node-r \(read-only\)$/m);
  t.regex(inspect.stdout, new RegExp(`^Staging:\\s+staged on node-r at ${staging} \\(ext4, read-only\\)$`, 'm'));
  t.regex(inspect.stdout, /^Device:\s+\/dev\/loop\d+ \(nbdfuse-loop\)$/m);
  const json = await d.ctlJson<VolumeMessage>(['volume', 'inspect', 'rst-pub']);
  t.deepEqual(json.published, [{ nodeId: NODE, readonly: true }]);
  t.like(json.staging, { nodeName: NODE, state: 'staged', stagingPath: staging, attachMethod: 'nbdfuse-loop', accessType: 'mount', fsType: 'ext4', readonly: true });
  t.is((await findMount(staging))!.device, await deviceNumber(json.staging!.devicePath), 'the device shown is the one mounted at the staging path');
  const list = await d.ctl(['volume', 'list']);
  t.regex(list.stdout, /^NAME\s.*\sPUBLISHED\s+STAGED$/m);
  t.regex(list.stdout, /^rst-pub\s.*\snode-r\(ro\)\s+staged \/dev\/loop\d+$/m);

  ok(await csi.node.NodeUnpublishVolume!({ volumeId: 'rst-pub', targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'rst-pub', stagingTargetPath: staging }));
  const after = await d.ctlJson<VolumeMessage>(['volume', 'inspect', 'rst-pub']);
  t.is(after.staging, null, 'unstaged: no staging shown');
  await assertNothingLeft(t, d);
});
