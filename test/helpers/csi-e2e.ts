/**
 * A Kubernetes-shaped Cairn cluster for end-to-end CSI tests, and the calls kubelet and the
 * sidecars make on it:
 *
 * - `CsiE2eCluster`: a real etcd, three node daemons (`--role node`, each with its own data
 *   dir and CSI socket, as the DaemonSet's Pods) and one controller (`--role controller`,
 *   the Deployment whose socket external-provisioner, -attacher and -resizer talk to);
 * - `KubeletPath`: one volume's attach and detach on a node in the order the
 *   external-attacher and kubelet call them (ControllerPublish → NodeStage → NodePublish,
 *   NodeUnpublish → NodeUnstage → ControllerUnpublish), the publish_context and
 *   volume_context passed on as kubelet passes them;
 * - `leftovers`: everything a deleted volume could leave on the host (mounts, loop devices,
 *   nbdfuse/nbdkit processes, replica files in any pool, ListVolumes, the cluster store).
 */
import { poolDeviceDirs } from './pool-paths.js';
import { execa } from 'execa';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { silentLogger } from '../../src/common/log.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { volumeKey } from '../../src/cluster/volume-doc.js';
import { listMounts } from '../../src/engine/mounter.js';
import { Cluster } from './cluster.js';
import { csiClient, ok, type CsiMessage, type CsiTestClient } from './csi-client.js';
import { Daemon } from './daemon.js';
import { run } from './run.js';

export const TOPOLOGY_NODE = 'topology.cairn.dev/node';

export class CsiE2eCluster {
  private constructor(
    readonly cluster: Cluster,
    readonly controllerDaemon: Daemon,
    /** The controller Deployment's socket. */
    readonly controller: CsiTestClient,
    /** Each node daemon's socket, by node index. */
    readonly nodes: CsiTestClient[],
    /** Where kubelet's directories (staging and pod targets) live. */
    readonly root: string,
  ) {}

  static async start(nodes = 3): Promise<CsiE2eCluster> {
    const cluster = await Cluster.start({ nodes, tls: 'insecure', extraArgs: ['--role', 'node'] });
    let controller: Daemon | undefined;
    try {
      controller = await Daemon.start({
        dataDir: mkdtempSync('/tmp/cairn-ctrl-'),
        extraArgs: ['--role', 'controller', '--node-name', 'controller-0', '--cluster-name', cluster.name, '--etcd-endpoints', cluster.etcd.endpoint, '--peer-insecure'],
      });
      const csi = await csiClient(join(controller.dataDir, 'csi.sock'));
      const clients = await Promise.all(Array.from({ length: nodes }, (_, i) => csiClient(join(cluster.node(i).dataDir, 'csi.sock'))));
      return new CsiE2eCluster(cluster, controller, csi, clients, mkdtempSync('/tmp/cairn-e2e-'));
    } catch (err) {
      await controller?.destroy();
      await cluster.destroy({ failed: true });
      throw err;
    }
  }

  nodeName(i: number): string {
    return this.cluster.nodeName(i);
  }

  /** Every node's data dir (pools, attach dirs, sockets). */
  get dataDirs(): string[] {
    return Array.from({ length: this.cluster.size }, (_, i) => this.cluster.node(i).dataDir);
  }

  /** What `volume` left behind anywhere (empty when nothing); `replicaIds` are every replica it ever had. */
  async leftovers(volume: string, replicaIds: readonly string[]): Promise<string[]> {
    const dirs = [this.root, ...this.dataDirs];
    const left: string[] = [];
    // The pool's own xfs image (the file pool's xfs-image layout) stays mounted while its daemon runs.
    for (const m of await listMounts()) if (dirs.some((d) => m.mountPoint.startsWith(d)) && !m.mountPoint.endsWith('/pool/xfs')) left.push(`mount ${m.mountPoint} (${m.fsType})`);
    for (const l of await loopDevices()) if (dirs.some((d) => l.backFile.startsWith(d)) && !l.backFile.endsWith('/pool/xfs-pool.img')) left.push(`loop ${l.name} on ${l.backFile}`);
    for (const p of attachProcesses(volume)) left.push(`process ${p}`);
    for (const [i, dir] of this.dataDirs.entries()) {
      for (const devices of poolDeviceDirs(dir)) for (const f of listDir(devices)) if (replicaIds.some((id) => f.includes(id))) left.push(`node-${i} pool file ${f}`);
    }
    const listed = ok(await this.controller.controller.ListVolumes!({})) as CsiMessage;
    if ((listed.entries as CsiMessage[]).some((e) => e.volume.volumeId === volume)) left.push('listed by ListVolumes');
    const store = new EtcdStore({ endpoints: [this.cluster.etcd.endpoint], cluster: this.cluster.name, log: silentLogger() });
    try {
      if (await store.get(volumeKey(volume))) left.push(`store key ${volumeKey(volume)}`);
      for (const kv of (await store.list('')).items) if (kv.key.includes(volume) || replicaIds.some((id) => kv.key.includes(id))) left.push(`store key ${kv.key}`);
    } finally {
      await store.close();
    }
    return [...new Set(left)];
  }

  /**
   * Stops everything. A failed test may leave mounts, loop devices and nbdfuse behind:
   * they are taken away first (unmount, losetup -d, kill), so the directories can go.
   */
  async destroy(failed: boolean): Promise<void> {
    for (const c of [this.controller, ...this.nodes]) c.close();
    const dirs = [this.root, ...this.dataDirs];
    const mounted = async (): Promise<string[]> => (await listMounts()).map((m) => m.mountPoint).filter((p) => dirs.some((d) => p.startsWith(d))).reverse();
    for (const m of (await mounted()).filter((p) => p.startsWith(this.root))) await run('umount', ['-l', m]).catch(() => undefined);
    for (const l of await loopDevices().catch(() => [])) if (dirs.some((d) => l.backFile.startsWith(d))) await run('losetup', ['-d', l.name]).catch(() => undefined);
    for (const dir of this.dataDirs) for (const pid of attachProcesses(join(dir, 'attach'))) process.kill(pid, 'SIGKILL');
    for (const m of await mounted()) await run('umount', ['-l', m]).catch(() => undefined);
    await this.controllerDaemon.destroy();
    await this.cluster.destroy({ failed });
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** One volume's way through the external-attacher and kubelet, with the capability and volume_context the PV carries. */
export class KubeletPath {
  constructor(private readonly e2e: CsiE2eCluster, readonly volumeId: string, readonly capability: CsiMessage, readonly volumeContext: Record<string, string>) {}

  get block(): boolean {
    return this.capability.block !== undefined;
  }

  /** kubelet's global mount dir for the volume on node i (it creates it before NodeStageVolume). */
  stagingPath(node: number): string {
    return join(this.e2e.root, this.e2e.nodeName(node), 'plugins', this.volumeId, 'globalmount');
  }

  /** The pod's path: a directory for a mount volume, a file for a block one (the plugin creates it; kubelet creates its parent). */
  targetPath(node: number): string {
    return join(this.e2e.root, this.e2e.nodeName(node), 'pods', this.volumeId, this.block ? 'dev' : 'mount');
  }

  /** ControllerPublishVolume to node i, NodeStageVolume and NodePublishVolume there; the publish path. */
  async attach(node: number): Promise<string> {
    const csi = this.e2e.nodes[node]!.node;
    const published = ok(await this.e2e.controller.controller.ControllerPublishVolume!({
      volumeId: this.volumeId, nodeId: this.e2e.nodeName(node), volumeCapability: this.capability, readonly: false, volumeContext: this.volumeContext,
    })) as CsiMessage;
    const publishContext = (published.publishContext ?? {}) as Record<string, string>;
    mkdirSync(this.stagingPath(node), { recursive: true });
    mkdirSync(join(this.targetPath(node), '..'), { recursive: true });
    const common = { volumeId: this.volumeId, publishContext, stagingTargetPath: this.stagingPath(node), volumeCapability: this.capability, volumeContext: this.volumeContext };
    ok(await csi.NodeStageVolume!(common));
    ok(await csi.NodePublishVolume!({ ...common, targetPath: this.targetPath(node), readonly: false }));
    return this.targetPath(node);
  }

  /** NodeUnpublishVolume, NodeUnstageVolume on node i, then ControllerUnpublishVolume from it. */
  async detach(node: number): Promise<void> {
    const csi = this.e2e.nodes[node]!.node;
    ok(await csi.NodeUnpublishVolume!({ volumeId: this.volumeId, targetPath: this.targetPath(node) }));
    ok(await csi.NodeUnstageVolume!({ volumeId: this.volumeId, stagingTargetPath: this.stagingPath(node) }));
    ok(await this.e2e.controller.controller.ControllerUnpublishVolume!({ volumeId: this.volumeId, nodeId: this.e2e.nodeName(node) }));
  }
}

interface LoopDevice { name: string; backFile: string }

/** `losetup -J -l`: every loop device with its backing file. */
async function loopDevices(): Promise<LoopDevice[]> {
  const out = await run('losetup', ['-J', '-l']);
  if (!out.trim()) return [];
  const parsed = JSON.parse(out) as { loopdevices?: { name: string; 'back-file'?: string | null }[] };
  return (parsed.loopdevices ?? []).map((l) => ({ name: l.name, backFile: l['back-file'] ?? '' }));
}

/** nbdfuse and nbdkit processes whose command line mentions `text` (a volume's name, an attach dir). */
function attachProcesses(text: string): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((pid) => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return /(^|\/)(nbdfuse|nbdkit)$/.test(cmd[0] ?? '') && cmd.some((a) => a.includes(text));
    } catch {
      return false;
    }
  }).map(Number);
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** `df -B1 --output=size` of a mounted path: the filesystem's size as users see it. */
export async function dfSizeBytes(path: string): Promise<number> {
  return Number((await run('df', ['-B1', '--output=size', path])).trim().split('\n')[1]!.trim());
}

/** `blockdev --getsize64` of a device node (also one bind-mounted onto a file). */
export async function deviceSizeBytes(path: string): Promise<number> {
  return Number((await run('blockdev', ['--getsize64', path])).trim());
}

/** sha256 of `bytes` at `offset` of a device, read with dd (O_DIRECT). Offsets and lengths in 4 KiB. */
export async function deviceSha256(device: string, offset: number, bytes: number): Promise<string> {
  const r = await execa('bash', ['-c', `dd if="$1" bs=4096 skip=$2 count=$3 iflag=direct status=none | sha256sum`, 'read', device, String(offset / 4096), String(bytes / 4096)]);
  return r.stdout.split(' ')[0]!;
}

/** Writes `file` to a device at `offset` with dd (O_DIRECT, fsync). */
export async function deviceWrite(device: string, offset: number, file: string): Promise<void> {
  await run('dd', [`if=${file}`, `of=${device}`, 'bs=4096', `seek=${offset / 4096}`, 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
}
