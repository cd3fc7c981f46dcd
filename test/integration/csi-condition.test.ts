/**
 * The CSI volume condition (spec v1.12.0: VolumeCondition in ControllerGetVolume and
 * NodeGetVolumeStats) on two real cairnd and a real etcd, as kubelet and the health monitor
 * see it: an rf=2 ext4 volume created, ControllerPublished to node-0, staged and published
 * there; files written through the mount with fsync while node-1 (the other replica) is
 * killed with SIGKILL. Both RPCs then say abnormal, naming the replica, its node and why;
 * once node-1 is back and its replica rebuilt, both say healthy, the files read back
 * (sha256) and the replicas agree. Everything is deleted at the end and nothing is left.
 */
import { isPoolImageLoop, isPoolImageMount, poolDeviceDirs } from '../helpers/pool-paths.js';
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { listMounts } from '../../src/engine/mounter.js';
import { Cluster } from '../helpers/cluster.js';
import { csiClient, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { combine, missingCommands, missingRoot, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const VOLUME = 'pvc-condition';
const hasNbdDriver = existsSync('/sys/module/nbd');
const missing = combine(
  await etcdMissingReason(),
  missingRoot('kernel block devices and mounts'),
  await missingCommands('mkfs.ext4', ...(hasNbdDriver ? [] : ['nbdfuse', 'nbdkit', 'losetup'])),
  hasNbdDriver || existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse) where the kernel has no nbd driver: modprobe fuse',
);

const mountCap: CsiMessage = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * Rewrites FILES small files in turn (write, fsync, close), each one's last acknowledged
 * sha256 kept, until stopped; an I/O error stops it and is kept.
 */
class FileWriter {
  static readonly FILES = 32;
  readonly digests = new Map<string, string>();
  acked = 0;
  error: unknown;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(dir: string) {
    this.done = this.loop(dir).catch((err: unknown) => { this.error = err; });
  }

  private async loop(dir: string): Promise<void> {
    for (let i = 0; !this.stopped; i++) {
      const name = `f${i % FileWriter.FILES}`;
      const data = randomBytes(64 * 1024 + (i % 4096));
      const fh = await open(join(dir, name), 'w');
      try {
        await fh.write(data, 0, data.length, 0);
        await fh.sync();
      } finally {
        await fh.close();
      }
      this.digests.set(name, sha(data));
      this.acked++;
      // Yield the event loop between files: the test polls the daemons meanwhile.
      await new Promise((r) => setImmediate(r));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

requiring(missing, test.serial)('ControllerGetVolume and NodeGetVolumeStats say abnormal while a replica\'s daemon is down, naming it and why, and healthy after its rebuild', async (t) => {
  t.timeout(300_000);
  const c = await Cluster.start({ nodes: 2 });
  const root = mkdtempSync('/tmp/cairn-csi-cond-');
  const staging = join(root, 'staging');
  const target = join(root, 'target');
  mkdirSync(staging);
  const csi: CsiTestClient = await csiClient(join(c.node(0).dataDir, 'csi.sock'));
  t.teardown(async () => {
    // A failed run may leave the volume staged: undo it through CSI, then anything still mounted under root.
    await csi.node.NodeUnpublishVolume!({ volumeId: VOLUME, targetPath: target }).catch(() => undefined);
    await csi.node.NodeUnstageVolume!({ volumeId: VOLUME, stagingTargetPath: staging }).catch(() => undefined);
    for (const m of (await listMounts()).filter((x) => x.mountPoint.startsWith(root)).reverse()) await run('umount', ['-l', m.mountPoint]).catch(() => undefined);
    csi.close();
    await c.destroy({ failed: !t.passed });
    rmSync(root, { recursive: true, force: true });
  });

  const created = ok(await csi.controller.CreateVolume!({
    name: VOLUME, capacityRange: { requiredBytes: String(64 * MiB) }, volumeCapabilities: [mountCap], parameters: { replicas: '2', fsType: 'ext4' },
  }));
  t.deepEqual(created.volume.accessibleTopology.map((s: CsiMessage) => s.segments['topology.cairn.dev/node']).sort(), ['node-0', 'node-1']);
  const { publishContext } = ok(await csi.controller.ControllerPublishVolume!({ volumeId: VOLUME, nodeId: 'node-0', volumeCapability: mountCap }));
  const stage = { volumeId: VOLUME, stagingTargetPath: staging, volumeCapability: mountCap, publishContext };
  const publish = { ...stage, targetPath: target };
  ok(await csi.node.NodeStageVolume!(stage));
  ok(await csi.node.NodePublishVolume!(publish));

  const controllerCondition = async (): Promise<CsiMessage> => ok(await csi.controller.ControllerGetVolume!({ volumeId: VOLUME })).status.volumeCondition;
  const nodeCondition = async (): Promise<CsiMessage> => ok(await csi.node.NodeGetVolumeStats!({ volumeId: VOLUME, volumePath: target })).volumeCondition;
  const healthy = { abnormal: false, message: 'healthy' };
  t.deepEqual(await controllerCondition(), healthy);
  t.deepEqual(await nodeCondition(), healthy);

  const remote = Cluster.replicaOn(await c.volume(VOLUME, 0), 1);
  if (!remote) throw new Error('no replica on node-1');
  const w = new FileWriter(target);
  await c.waitFor(() => w.acked, (n) => n >= 20 || w.error !== undefined, 'the first files written');
  await c.crash(1);
  const ackedAtCrash = w.acked;

  const down = await c.waitFor(controllerCondition, (x) => x.abnormal === true, 'ControllerGetVolume abnormal', 60_000);
  // "volume is degraded: replica <id> on node-1 faulted (<why>)"
  const naming = new RegExp(`^volume is degraded: replica ${remote.id} on node-1 faulted \\(.+\\)$`);
  t.log(down.message);
  t.regex(down.message, naming, 'names the replica, its node, its state and why');
  const onNode = await nodeCondition();
  t.true(onNode.abnormal, 'NodeGetVolumeStats on node-0 is abnormal too');
  t.regex(onNode.message, naming);
  await c.waitFor(() => w.acked, (n) => n >= ackedAtCrash + 20 || w.error !== undefined, 'files written with node-1 down', 60_000);
  t.is(w.error, undefined, 'no write failed with node-1 down');

  await c.restart(1);
  await c.waitFor(controllerCondition, (x) => x.abnormal === false, 'ControllerGetVolume healthy after the rebuild', 180_000);
  await w.stop();
  t.is(w.error, undefined, 'no write failed across the restart and the rebuild');
  t.true(w.acked > ackedAtCrash + 20);
  t.deepEqual(await controllerCondition(), healthy);
  t.deepEqual(await nodeCondition(), healthy);
  const back = await c.volume(VOLUME, 0);
  t.deepEqual(back.replicas.map((r) => [r.nodeName, r.state]).sort(), [['node-0', 'in-sync'], ['node-1', 'in-sync']]);

  // Unstage (which flushes and unmounts) and stage again, so that the files are read from the volume, not the page cache.
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: VOLUME, targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: VOLUME, stagingTargetPath: staging }));
  const verified = await c.verify(VOLUME, 0);
  t.is(verified.exitCode, 0, `volume verify: ${verified.stderr}`);
  t.is(verified.result?.replicas.length, 2, 'both replicas compared');
  t.deepEqual(verified.result?.mismatches, [], 'the rebuilt replica holds the same blocks');
  ok(await csi.node.NodeStageVolume!(stage));
  ok(await csi.node.NodePublishVolume!(publish));
  t.is(w.digests.size, FileWriter.FILES);
  for (const [name, digest] of w.digests) t.is(sha(readFileSync(join(target, name))), digest, `${name} reads back as last written`);

  ok(await csi.node.NodeUnpublishVolume!({ volumeId: VOLUME, targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: VOLUME, stagingTargetPath: staging }));
  ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: VOLUME, nodeId: 'node-0' }));
  ok(await csi.controller.DeleteVolume!({ volumeId: VOLUME }));
  await assertNothingLeft(t, c, root, back.replicas.map((r) => r.id));
});

async function assertNothingLeft(t: ExecutionContext, c: Cluster, root: string, replicas: string[]): Promise<void> {
  t.deepEqual((await listMounts()).filter((m) => (m.mountPoint.startsWith(root) || m.mountPoint.startsWith(c.node(0).dataDir)) && !isPoolImageMount(m.mountPoint)).map((m) => m.mountPoint), [], 'no mount left');
  if (!hasNbdDriver) {
    const loops = (await run('losetup', ['-n', '-O', 'NAME,BACK-FILE', '-l'])).split('\n').filter((l) => l.includes(c.node(0).dataDir) && !isPoolImageLoop(l));
    t.deepEqual(loops, [], 'no loop device left');
  }
  for (const i of [0, 1]) {
    t.is((await c.ctl(i, ['volume', 'inspect', VOLUME])).exitCode, 1, `node-${i} no longer knows the volume`);
    const devices = replicas.flatMap((id) => poolDeviceDirs(c.node(i).dataDir).map((d) => join(d, `${id}.img`)));
    await c.waitFor(() => devices.filter((p) => existsSync(p)), (left) => left.length === 0, `no replica device left on node-${i}`);
  }
}
