/**
 * MULTI_NODE_READER_ONLY across nodes (issue 10): a volume written on node-0, then
 * published read-only to node-0 and node-1 and staged on both, as kubelet does for a
 * ReadOnlyMany PV. Both read the same bytes at the same time through their own attach
 * (nbdfuse + loop, O_DIRECT), writes fail on both (mount: EROFS; the block device node
 * refuses), node-1's stage leaves the document's epoch as it was (a reader does not take
 * the volume), and unstaging node-1 leaves node-0 reading. Real etcd, two node daemons and
 * a controller.
 */
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from '../helpers/cluster.js';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { combine, missingCommands, missingRoot, onlyWhere, prerequisitesMet } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const TITLE = 'MULTI_NODE_READER_ONLY staged on two nodes at once';
const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await etcdMissingReason(),
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'dd', 'sha256sum', 'bash'),
);

const cap = (block: boolean, mode: string): CsiMessage => ({ ...(block ? { block: {} } : { mount: { fsType: 'ext4' } }), accessMode: { mode } });

/** sha256 of `bytes` at `offset` of a file or device, read with O_DIRECT (through this node's attach, not a cache). */
async function directSha(path: string, offset: number, bytes: number): Promise<string> {
  const r = await execa('bash', ['-c', 'dd if="$1" bs=4096 skip=$2 count=$3 iflag=direct status=none | sha256sum', 'read', path, String(offset / 4096), String(bytes / 4096)]);
  return r.stdout.split(' ')[0]!;
}

/** dd of `file` onto `path` at `offset` (O_DIRECT, fsync): its error text when it fails, '' when it succeeded. */
async function ddWrite(path: string, offset: number, file: string): Promise<string> {
  const r = await execa('dd', [`if=${file}`, `of=${path}`, 'bs=4096', `seek=${offset / 4096}`, 'oflag=direct', 'conv=fsync,notrunc', 'status=none'], { reject: false });
  return r.exitCode === 0 ? '' : r.stderr || `exit ${r.exitCode}`;
}

if (existsSync('/sys/module/nbd')) {
  onlyWhere(false, 'this kernel has the nbd driver; test/kernel covers /dev/nbdX', test.serial)(TITLE, () => undefined);
} else if (prerequisitesMet(TITLE, missing)) {
  let cluster: Cluster | undefined;
  let controller: Daemon | undefined;
  let csi: CsiTestClient;
  let nodes: CsiTestClient[] = [];
  let root = '';
  let failed = false;

  test.before(async () => {
    cluster = await Cluster.start({ nodes: 2, tls: 'insecure', extraArgs: ['--role', 'node'] });
    controller = await Daemon.start({
      dataDir: mkdtempSync('/tmp/cairn-ctrl-'),
      extraArgs: ['--role', 'controller', '--node-name', 'controller-0', '--cluster-name', cluster.name, '--etcd-endpoints', cluster.etcd.endpoint, '--peer-insecure'],
    });
    csi = await csiClient(join(controller.dataDir, 'csi.sock'));
    nodes = await Promise.all([0, 1].map((i) => csiClient(join(cluster!.node(i).dataDir, 'csi.sock'))));
    root = mkdtempSync('/tmp/cairn-multi-reader-');
  });
  test.afterEach((t) => {
    if (!t.passed) failed = true;
  });
  test.after.always(async () => {
    for (const c of [csi, ...nodes]) c?.close();
    if (root) for (const m of ['0', '1'].flatMap((n) => ['pod', 'staging'].map((d) => join(root, `n${n}`, d)))) await run('umount', ['-l', m]).catch(() => undefined);
    await controller?.destroy();
    await cluster?.destroy({ failed });
    if (root) rmSync(root, { recursive: true, force: true });
  });

  /** ControllerPublish to node i, NodeStage and NodePublish there; the pod's path. */
  const attach = async (volumeId: string, i: number, capability: CsiMessage, readonly: boolean): Promise<string> => {
    const block = capability.block !== undefined;
    const staging = join(root, `n${i}`, 'staging');
    const target = join(root, `n${i}`, 'pod');
    mkdirSync(staging, { recursive: true });
    ok(await csi.controller.ControllerPublishVolume!({ volumeId, nodeId: `node-${i}`, volumeCapability: capability, readonly }));
    ok(await nodes[i]!.node.NodeStageVolume!({ volumeId, stagingTargetPath: staging, volumeCapability: capability }));
    ok(await nodes[i]!.node.NodePublishVolume!({ volumeId, stagingTargetPath: staging, targetPath: target, volumeCapability: capability, readonly }));
    return block ? target : join(target, 'data');
  };
  const detach = async (volumeId: string, i: number): Promise<void> => {
    ok(await nodes[i]!.node.NodeUnpublishVolume!({ volumeId, targetPath: join(root, `n${i}`, 'pod') }));
    ok(await nodes[i]!.node.NodeUnstageVolume!({ volumeId, stagingTargetPath: join(root, `n${i}`, 'staging') }));
    ok(await csi.controller.ControllerUnpublishVolume!({ volumeId, nodeId: `node-${i}` }));
  };

  const readers = async (t: ExecutionContext, block: boolean): Promise<void> => {
    const volumeId = block ? 'ro-block' : 'ro-ext4';
    const writer = cap(block, 'SINGLE_NODE_WRITER');
    const reader = cap(block, 'MULTI_NODE_READER_ONLY');
    ok(await csi.controller.CreateVolume!({ name: volumeId, capacityRange: { requiredBytes: String(64 * MiB) }, volumeCapabilities: [writer, reader], parameters: { replicas: '2' } }));
    const data = join(root, `${volumeId}.bin`);
    writeFileSync(data, randomBytes(MiB));
    const offset = block ? 4 * MiB : 0;
    const written = await directSha(data, 0, MiB);

    // Node-0 writes as the single writer, then lets go.
    const rw = await attach(volumeId, 0, writer, false);
    t.is(await ddWrite(rw, offset, data), '');
    await detach(volumeId, 0);

    // Read-only on both nodes; node-0 stages first and holds the volume, node-1 is a reader.
    const a = await attach(volumeId, 0, reader, true);
    const held = await cluster!.volume(volumeId);
    const b = await attach(volumeId, 1, reader, true);
    const shared = await cluster!.volume(volumeId);
    t.is(shared.epoch, held.epoch, "node-1's stage did not bump the epoch");
    t.is(shared.engineNode, 'node-0', 'node-0 still holds the volume');

    t.deepEqual(await Promise.all([directSha(a, offset, MiB), directSha(b, offset, MiB)]), [written, written], 'both nodes read the same bytes at once');
    for (const [node, path] of [['node-0', a], ['node-1', b]] as const) {
      const err = await ddWrite(path, offset, data);
      t.not(err, '', `a write on ${node} fails`);
      if (!block) t.regex(err, /Read-only file system/, `${node}: EROFS`);
      else t.regex(err, /Read-only file system|Operation not permitted|Permission denied/, `${node}: the device refuses writes`);
    }
    t.is(codeName(await csi.controller.ControllerPublishVolume!({ volumeId, nodeId: 'node-1', volumeCapability: writer, readonly: false })), 'ALREADY_EXISTS');

    await detach(volumeId, 1);
    t.is(await directSha(a, offset, MiB), written, 'node-0 still reads after node-1 unstaged');
    t.is((await cluster!.volume(volumeId)).epoch, held.epoch, "node-1's unstage did not touch the epoch either");
    await detach(volumeId, 0);

    // Written once, read the same by every reader: the writer gets it back unchanged.
    const again = await attach(volumeId, 1, writer, false);
    t.is(await directSha(again, offset, MiB), written);
    await detach(volumeId, 1);
    ok(await csi.controller.DeleteVolume!({ volumeId }));
  };

  test.serial('ext4: two nodes mount it read-only at once and read the same file; writes are EROFS; unstage of one leaves the other', (t) => readers(t, false));
  test.serial('block: two nodes read the same bytes from their device at once; the device refuses writes on both', (t) => readers(t, true));
}
