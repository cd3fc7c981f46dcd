/**
 * The CSI Node service of a real cairnd (role all, embedded store) through its unix
 * socket, as kubelet calls it, on this host's attach path (nbdfuse + loop): stage, publish
 * (rw and read-only), files and raw bytes read back after unstage and stage again, each
 * error the spec lists with its exact code, stats against df, NodeGetInfo, and nothing
 * left behind (mounts, loop devices, nbdfuse, staged records).
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { listMounts } from '../../src/engine/mounter.js';
import { NodeStore } from '../../src/store/node-store.js';
import { silentLogger } from '../../src/common/log.js';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { combine, missingCommands, missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';
import { isPoolImageLoop, isPoolImageMount } from '../helpers/pool-paths.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'mkfs.xfs', 'df'),
);
const nodeTest = onlyWhere(!existsSync('/sys/module/nbd'), 'this kernel has the nbd driver; test/kernel covers /dev/nbdX', requiring(missing, test.serial));

let daemon: Daemon | undefined;
let csi: CsiTestClient;
let root: string;

function mountCap(fsType = '', mode = 'SINGLE_NODE_WRITER'): CsiMessage {
  return { mount: { fsType, mountFlags: [] }, accessMode: { mode } };
}
const blockCap: CsiMessage = { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

async function start(): Promise<Daemon> {
  if (daemon) return daemon;
  daemon = await Daemon.start({ extraArgs: ['--node-name', 'node-a', '--zone', 'zone-1', '--max-volumes-per-node', '7'] });
  csi = await csiClient(join(daemon.dataDir, 'csi.sock'));
  root = mkdtempSync('/tmp/cairn-csi-node-');
  return daemon;
}

async function create(name: string, sizeMiB: number): Promise<void> {
  const r = await daemon!.ctl(['volume', 'create', name, '--size', `${sizeMiB}MiB`]);
  if (r.exitCode !== 0) throw new Error(`volume create ${name}: ${r.stderr}`);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test.after.always(async () => {
  csi?.close();
  if (daemon) await daemon.destroy();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Stage and publish (rw and ro), write files, a write through ro fails EROFS, everything undone, then the files read back. */
async function roundTrip(t: import('ava').ExecutionContext, volume: string, fsType: 'ext4' | 'xfs'): Promise<void> {
  const staging = join(root, `${volume}-staging`);
  const rw = join(root, `${volume}-rw`);
  const ro = join(root, `${volume}-ro`);
  mkdirSync(staging);
  const stage = { volumeId: volume, stagingTargetPath: staging, volumeCapability: mountCap(fsType) };
  ok(await csi.node.NodeStageVolume!(stage));
  t.is(codeName(await csi.node.NodeStageVolume!(stage)), 'OK', 'the same stage again is OK');
  t.is(codeName(await csi.node.NodeStageVolume!({ ...stage, volumeCapability: mountCap(fsType === 'ext4' ? 'xfs' : 'ext4') })), 'ALREADY_EXISTS');
  t.is((await listMounts()).find((m) => m.mountPoint === staging)?.fsType, fsType);

  const publish = { volumeId: volume, stagingTargetPath: staging, targetPath: rw, volumeCapability: mountCap(fsType) };
  ok(await csi.node.NodePublishVolume!(publish));
  t.is(codeName(await csi.node.NodePublishVolume!(publish)), 'OK', 'the same publish again is OK');
  t.is(codeName(await csi.node.NodePublishVolume!({ ...publish, readonly: true })), 'ALREADY_EXISTS', 'the same target read-only is incompatible');
  ok(await csi.node.NodePublishVolume!({ ...publish, targetPath: ro, readonly: true }));

  const files = new Map<string, string>();
  for (let i = 0; i < 3; i++) {
    const data = randomBytes(256 * 1024 + i);
    writeFileSync(join(rw, `f${i}`), data);
    files.set(`f${i}`, sha(data));
  }
  await run('sync', ['-f', rw]); // this filesystem only: a global sync would wait on any other stuck mount on the machine
  t.is(readFileSync(join(ro, 'f0')).length, 256 * 1024, 'the read-only target shows the same filesystem');
  const err = t.throws(() => writeFileSync(join(ro, 'nope'), 'x')) as NodeJS.ErrnoException;
  t.is(err.code, 'EROFS');

  for (const target of [rw, ro]) {
    ok(await csi.node.NodeUnpublishVolume!({ volumeId: volume, targetPath: target }));
    t.is(codeName(await csi.node.NodeUnpublishVolume!({ volumeId: volume, targetPath: target })), 'OK', 'unpublish twice is OK');
    t.false(existsSync(target), 'the target path the plugin created is removed');
  }
  ok(await csi.node.NodeUnstageVolume!({ volumeId: volume, stagingTargetPath: staging }));
  t.is(codeName(await csi.node.NodeUnstageVolume!({ volumeId: volume, stagingTargetPath: staging })), 'OK', 'unstage twice is OK');
  t.falsy((await listMounts()).find((m) => m.mountPoint === staging));

  ok(await csi.node.NodeStageVolume!(stage));
  ok(await csi.node.NodePublishVolume!(publish));
  for (const [name, digest] of files) t.is(sha(readFileSync(join(rw, name))), digest, `${name} read back after stage again`);
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: volume, targetPath: rw }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: volume, stagingTargetPath: staging }));
}

nodeTest('NodeGetInfo and NodeGetCapabilities: node id, topology, volume limit, what is advertised', async (t) => {
  await start();
  const info = ok(await csi.node.NodeGetInfo!({}));
  t.is(info.nodeId, 'node-a');
  t.is(Number(info.maxVolumesPerNode), 7);
  t.deepEqual(info.accessibleTopology.segments, { 'topology.cairn.dev/node': 'node-a', 'topology.cairn.dev/zone': 'zone-1' });
  const caps = ok(await csi.node.NodeGetCapabilities!({})).capabilities.map((c: CsiMessage) => c.rpc.type).sort();
  t.deepEqual(caps, ['EXPAND_VOLUME', 'GET_VOLUME_STATS', 'SINGLE_NODE_MULTI_WRITER', 'STAGE_UNSTAGE_VOLUME', 'VOLUME_CONDITION']);
});

nodeTest('ext4: stage, publish rw and ro, files survive unpublish, unstage and stage again', async (t) => {
  await start();
  await create('node-ext4', 64);
  await roundTrip(t, 'node-ext4', 'ext4');
});

nodeTest('xfs: the same round trip', async (t) => {
  await start();
  await create('node-xfs', 320); // mkfs.xfs needs more than 300 MB
  await roundTrip(t, 'node-xfs', 'xfs');
});

nodeTest('NodeGetVolumeStats: bytes and inodes as df sees them, a healthy condition; NOT_FOUND for a path it is not at', async (t) => {
  await start();
  await create('node-stats', 64);
  const staging = join(root, 'stats-staging');
  const target = join(root, 'stats-target');
  mkdirSync(staging);
  ok(await csi.node.NodeStageVolume!({ volumeId: 'node-stats', stagingTargetPath: staging, volumeCapability: mountCap('', 'SINGLE_NODE_MULTI_WRITER'), volumeContext: { fsType: 'ext4' } }));
  ok(await csi.node.NodePublishVolume!({ volumeId: 'node-stats', stagingTargetPath: staging, targetPath: target, volumeCapability: mountCap('', 'SINGLE_NODE_MULTI_WRITER') }));
  writeFileSync(join(target, 'data'), randomBytes(4 * MiB));
  await run('sync', ['-f', target]);
  const stats = ok(await csi.node.NodeGetVolumeStats!({ volumeId: 'node-stats', volumePath: target }));
  const bytes = stats.usage.find((u: CsiMessage) => u.unit === 'BYTES');
  const inodes = stats.usage.find((u: CsiMessage) => u.unit === 'INODES');
  const df = (await run('df', ['-B1', '--output=size,used,avail', target])).trim().split('\n')[1]!.trim().split(/\s+/).map(Number);
  t.deepEqual([Number(bytes.total), Number(bytes.used), Number(bytes.available)], df);
  const dfi = (await run('df', ['--output=itotal,iused,iavail', target])).trim().split('\n')[1]!.trim().split(/\s+/).map(Number);
  t.deepEqual([Number(inodes.total), Number(inodes.used), Number(inodes.available)], dfi);
  t.true(Number(bytes.used) >= 4 * MiB);
  t.deepEqual(stats.volumeCondition, { abnormal: false, message: 'healthy' });
  t.is(codeName(await csi.node.NodeGetVolumeStats!({ volumeId: 'node-stats', volumePath: join(root, 'elsewhere') })), 'NOT_FOUND');
  t.is(codeName(await csi.node.NodeGetVolumeStats!({ volumeId: 'no-such-volume', volumePath: target })), 'NOT_FOUND');
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: 'node-stats', targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'node-stats', stagingTargetPath: staging }));
});

nodeTest('block: the device node is published on a file; bytes written read back after unstage and stage again', async (t) => {
  await start();
  await create('node-blk', 16);
  const staging = join(root, 'blk-staging');
  const target = join(root, 'blk-dev');
  mkdirSync(staging);
  const stage = { volumeId: 'node-blk', stagingTargetPath: staging, volumeCapability: blockCap };
  const publish = { ...stage, targetPath: target };
  ok(await csi.node.NodeStageVolume!(stage));
  ok(await csi.node.NodePublishVolume!(publish));
  t.is(codeName(await csi.node.NodePublishVolume!(publish)), 'OK', 'publish again is OK');
  t.is(codeName(await csi.node.NodePublishVolume!({ ...publish, volumeCapability: mountCap('ext4') })), 'FAILED_PRECONDITION', 'staged as block, not mount');
  const data = randomBytes(MiB);
  let fh = await open(target, 'r+');
  await fh.write(data, 0, data.length, 3 * MiB);
  await fh.sync();
  await fh.close();
  const stats = ok(await csi.node.NodeGetVolumeStats!({ volumeId: 'node-blk', volumePath: target }));
  t.deepEqual(stats.usage.map((u: CsiMessage) => [u.unit, Number(u.total)]), [['BYTES', 16 * MiB]]);
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: 'node-blk', targetPath: target }));
  t.false(existsSync(target));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'node-blk', stagingTargetPath: staging }));
  ok(await csi.node.NodeStageVolume!(stage));
  ok(await csi.node.NodePublishVolume!(publish));
  fh = await open(target, 'r');
  const back = Buffer.alloc(MiB);
  await fh.read(back, 0, MiB, 3 * MiB);
  await fh.close();
  t.is(sha(back), sha(data));
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: 'node-blk', targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'node-blk', stagingTargetPath: staging }));
});

nodeTest('bad input: each error with the code the spec lists, and nothing left half-made', async (t) => {
  await start();
  await create('node-bad', 16);
  const staging = join(root, 'bad-staging');
  mkdirSync(staging);
  const code = async (method: string, req: CsiMessage): Promise<string> => codeName(await csi.node[method]!(req));
  const stage = { volumeId: 'node-bad', stagingTargetPath: staging, volumeCapability: mountCap('ext4') };
  t.is(await code('NodeStageVolume', { ...stage, volumeId: '' }), 'INVALID_ARGUMENT');
  t.is(await code('NodeStageVolume', { ...stage, stagingTargetPath: '' }), 'INVALID_ARGUMENT');
  t.is(await code('NodeStageVolume', { ...stage, volumeCapability: undefined }), 'INVALID_ARGUMENT');
  t.is(await code('NodeStageVolume', { ...stage, volumeCapability: mountCap('ext4', 'MULTI_NODE_MULTI_WRITER') }), 'INVALID_ARGUMENT');
  t.is(await code('NodeStageVolume', { ...stage, volumeCapability: mountCap('ext4', 'MULTI_NODE_SINGLE_WRITER') }), 'INVALID_ARGUMENT');
  t.is(await code('NodeStageVolume', { ...stage, volumeCapability: mountCap('btrfs') }), 'INVALID_ARGUMENT');
  t.is(await code('NodeStageVolume', { ...stage, volumeId: 'no-such-volume' }), 'NOT_FOUND');
  t.is(await code('NodeStageVolume', { ...stage, stagingTargetPath: join(root, 'missing-dir') }), 'FAILED_PRECONDITION');
  t.is(await code('NodeUnstageVolume', { volumeId: 'no-such-volume', stagingTargetPath: staging }), 'NOT_FOUND');
  const publish = { volumeId: 'node-bad', stagingTargetPath: staging, targetPath: join(root, 'bad-target'), volumeCapability: mountCap('ext4') };
  t.is(await code('NodePublishVolume', publish), 'FAILED_PRECONDITION', 'not staged');
  t.is(await code('NodePublishVolume', { ...publish, targetPath: '' }), 'INVALID_ARGUMENT');
  t.is(await code('NodePublishVolume', { ...publish, volumeId: 'no-such-volume' }), 'NOT_FOUND');
  t.is(await code('NodeUnpublishVolume', { volumeId: 'no-such-volume', targetPath: join(root, 'bad-target') }), 'NOT_FOUND');
  t.is(await code('NodeGetVolumeStats', { volumeId: 'node-bad', volumePath: '' }), 'INVALID_ARGUMENT');
  t.false(existsSync(join(root, 'bad-target')), 'a refused publish creates no target');

  ok(await csi.node.NodeStageVolume!(stage));
  t.is(await code('NodePublishVolume', { ...publish, stagingTargetPath: '' }), 'FAILED_PRECONDITION', 'staging_target_path not set');
  const file = join(root, 'a-file');
  writeFileSync(file, '');
  t.is(await code('NodePublishVolume', { ...publish, targetPath: file }), 'FAILED_PRECONDITION', 'a file where a directory is needed');
  t.is(readFileSync(file, 'utf8'), '', 'the file is left as it was');
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'node-bad', stagingTargetPath: staging }));
});

nodeTest('after a cairnd kill -9 and restart: the published files are still there, and unpublish and unstage undo everything', async (t) => {
  const d = await start();
  await create('node-restart', 64);
  const staging = join(root, 'restart-staging');
  const target = join(root, 'restart-target');
  mkdirSync(staging);
  ok(await csi.node.NodeStageVolume!({ volumeId: 'node-restart', stagingTargetPath: staging, volumeCapability: mountCap('ext4') }));
  ok(await csi.node.NodePublishVolume!({ volumeId: 'node-restart', stagingTargetPath: staging, targetPath: target, volumeCapability: mountCap('ext4') }));
  const data = randomBytes(MiB);
  writeFileSync(join(target, 'kept'), data);
  await run('sync', ['-f', target]);
  csi.close();
  await d.crash();
  await d.launch();
  csi = await csiClient(join(d.dataDir, 'csi.sock'));
  t.is(sha(readFileSync(join(target, 'kept'))), sha(data), 'the mounted file reads back through the restarted daemon');
  // fsync goes through the device: it fails (EIO) unless the restarted daemon serves it.
  const fh = await open(join(target, 'after'), 'w');
  await fh.write(randomBytes(MiB));
  await fh.sync();
  await fh.close();
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: 'node-restart', targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: 'node-restart', stagingTargetPath: staging }));
  t.falsy((await listMounts()).find((m) => m.mountPoint === staging || m.mountPoint === target));
});

nodeTest('afterwards: no mount, loop device, nbdfuse process or staged record is left', async (t) => {
  const d = await start();
  const mounts = (await listMounts()).filter((m) => (m.mountPoint.startsWith(root) || m.mountPoint.startsWith(d.dataDir)) && !isPoolImageMount(m.mountPoint));
  t.deepEqual(mounts.map((m) => m.mountPoint), []);
  const loops = (await run('losetup', ['-n', '-O', 'NAME,BACK-FILE', '-l'])).split('\n').filter((l) => l.includes(d.dataDir) && !isPoolImageLoop(l));
  t.deepEqual(loops, []);
  const fuse = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((pid) => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return cmd.includes('nbdfuse') && cmd.includes(d.dataDir);
    } catch {
      return false;
    }
  });
  t.deepEqual(fuse, []);
  await d.stop();
  const store = NodeStore.open(join(d.dataDir, 'node.db'), silentLogger());
  try {
    t.deepEqual(store.listStagedVolumes(), []);
  } finally {
    store.close();
  }
});
