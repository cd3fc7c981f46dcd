/**
 * Kubelet's path, end to end (issue 10): a real etcd, three node daemons (`--role node`) and
 * a controller (`--role controller`), driven over their CSI sockets in the order the
 * sidecars and kubelet call them, for an ext4, an xfs and a raw block volume:
 *
 * 1. CreateVolume (rf=2, the pod's node preferred), ControllerPublishVolume to node A,
 *    NodeStageVolume and NodePublishVolume there; data written through the mount (files of
 *    several sizes, fsynced) or the device node (dd), sha256s kept;
 * 2. NodeUnpublishVolume, NodeUnstageVolume, ControllerUnpublishVolume on A;
 * 3. the same attach on node B: every byte reads back (sha256);
 * 4. ControllerExpandVolume, then NodeExpandVolume on B: df on the publish path (the device
 *    node's size for block) shows the new size; block writes its new space. ext4 grows only
 *    where cairnd has CAP_SYS_RESOURCE; without it the refusal (FAILED_PRECONDITION) is
 *    checked and the step is reported as not applicable;
 * 5. ControllerModifyVolume to rf=3 and back to rf=2 while a dd writer (O_DIRECT, fsync)
 *    runs through B's mount or device: no write fails, every record reads back, and
 *    `cairnctl volume verify` finds the replicas equal;
 * 6. detach, DeleteVolume: no mount, loop device, nbdfuse/nbdkit process, replica file,
 *    ListVolumes entry or store key is left.
 *
 * On a kernel with the nbd driver the node attaches /dev/nbdX; test/kernel covers that path.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { VolumeMessage } from '../../src/cli/api-client.js';
import { waitFor } from '../helpers/cluster.js';
import { codeName, ok, type CsiMessage } from '../helpers/csi-client.js';
import { CsiE2eCluster, KubeletPath, TOPOLOGY_NODE, deviceSha256, deviceSizeBytes, deviceWrite, dfSizeBytes } from '../helpers/csi-e2e.js';
import { DdWriter, RECORD_BYTES } from '../helpers/dd-writer.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { combine, missingCommands, missingExt4OnlineResize, missingRoot, onlyWhere, prerequisitesMet } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const A = 0;
const B = 1;

interface Variant {
  name: string;
  /** Undefined: a raw block volume. */
  fsType?: 'ext4' | 'xfs';
  sizeBytes: number;
  /** Whether NodeExpandVolume can grow the filesystem here (ext4 needs CAP_SYS_RESOURCE). */
  growsOnNode: boolean;
}

const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await etcdMissingReason(),
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'mkfs.xfs', 'resize2fs', 'xfs_growfs', 'blockdev', 'df', 'dd', 'sha256sum', 'bash'),
);
const hostAttach = !existsSync('/sys/module/nbd');
const noExt4Resize = missingExt4OnlineResize();

const TITLE = 'CSI end to end on etcd, three node daemons and a controller';

if (!hostAttach) {
  onlyWhere(false, 'this kernel has the nbd driver; test/kernel covers /dev/nbdX', test.serial)(TITLE, () => undefined);
} else if (prerequisitesMet(TITLE, missing)) {
  let e2e: CsiE2eCluster | undefined;
  let failed = false;

  test.before(async () => {
    e2e = await CsiE2eCluster.start(3);
  });
  test.afterEach((t) => {
    if (!t.passed) failed = true;
  });
  test.after.always(async () => {
    await e2e?.destroy(failed);
  });

  test.serial(`ext4 (64 MiB, rf 2): node A, node B, ${noExt4Resize ? 'expansion refused (no CAP_SYS_RESOURCE)' : 'expanded online'}, rf 3 and back under a writer, delete leaves nothing`,
    (t) => kubeletFlow(t, e2e!, { name: 'ext4', fsType: 'ext4', sizeBytes: 64 * MiB, growsOnNode: !noExt4Resize }));
  onlyWhere(!noExt4Resize, `${noExt4Resize}; test/kernel/nbd-expand.test.ts grows ext4`, test.serial)('ext4: the online expansion step of the flow above', (t) => t.pass());
  test.serial('xfs (320 MiB, rf 2): the same, expanded online', (t) => kubeletFlow(t, e2e!, { name: 'xfs', fsType: 'xfs', sizeBytes: 320 * MiB, growsOnNode: true }));
  test.serial('raw block (64 MiB, rf 2): the same through the published device node, expanded online', (t) => kubeletFlow(t, e2e!, { name: 'block', sizeBytes: 64 * MiB, growsOnNode: true }));
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function kubeletFlow(t: ExecutionContext, e2e: CsiE2eCluster, v: Variant): Promise<void> {
  t.timeout(180_000);
  const ctrl = e2e.controller.controller;
  const volumeId = `pvc-e2e-${v.name}`;
  const capability: CsiMessage = v.fsType
    ? { mount: { fsType: v.fsType, mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } }
    : { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
  const replicaIds = new Set<string>();
  const inspect = async (): Promise<VolumeMessage> => {
    const vol = await e2e.controllerDaemon.ctlJson<VolumeMessage>(['volume', 'inspect', volumeId]);
    for (const r of vol.replicas) replicaIds.add(r.id);
    return vol;
  };

  // 1. external-provisioner (WaitForFirstConsumer: the pod's node A preferred, A or B allowed), then attach on A.
  const segment = (i: number): CsiMessage => ({ segments: { [TOPOLOGY_NODE]: e2e.nodeName(i) } });
  const created = (ok(await ctrl.CreateVolume!({
    name: volumeId, capacityRange: { requiredBytes: String(v.sizeBytes) }, volumeCapabilities: [capability],
    parameters: { replicas: '2', ...(v.fsType ? { fsType: v.fsType } : {}), 'csi.storage.k8s.io/pvc/name': `data-${v.name}`, 'csi.storage.k8s.io/pvc/namespace': 'default' },
    accessibilityRequirements: { requisite: [segment(A), segment(B)], preferred: [segment(A), segment(B)] },
  })) as CsiMessage).volume as CsiMessage;
  t.is(created.volumeId, volumeId);
  t.is(Number(created.capacityBytes), v.sizeBytes);
  const holders = (created.accessibleTopology as CsiMessage[]).map((s) => s.segments[TOPOLOGY_NODE] as string);
  t.is(holders.length, 2);
  t.true(holders.includes(e2e.nodeName(A)), `a replica on the pod's node: ${holders.join(', ')}`);
  t.is((await inspect()).replicas.length, 2);

  const path = new KubeletPath(e2e, volumeId, capability, created.volumeContext as Record<string, string>);
  const onA = await path.attach(A);
  const written = v.fsType ? await writeFiles(onA) : await writeChunks(e2e, onA, v.sizeBytes);

  // 2. The pod goes away from A.
  await path.detach(A);
  t.deepEqual(await e2e.leftovers(volumeId, []).then((l) => l.filter((x) => x.startsWith('mount') || x.startsWith('loop') || x.startsWith('process'))), [],
    'nothing of the volume is attached on A any more');
  t.deepEqual((ok(await ctrl.ControllerGetVolume!({ volumeId })) as CsiMessage).status.publishedNodeIds, [], 'published nowhere');

  // 3. The pod starts on B: everything reads back.
  const onB = await path.attach(B);
  t.deepEqual((ok(await ctrl.ControllerGetVolume!({ volumeId })) as CsiMessage).status.publishedNodeIds, [e2e.nodeName(B)]);
  t.deepEqual(v.fsType ? readFiles(onB, written) : await readChunks(onB, written), written, 'every byte written on A reads back on B');
  t.is((await inspect()).engineNode, e2e.nodeName(B), 'the engine runs on B');
  // The check of step 6 sees each kind of thing a live volume has (so an empty answer there means something).
  const live = await e2e.leftovers(volumeId, [...replicaIds]);
  for (const kind of [...(v.fsType ? [/^mount .*globalmount/] : []), /^mount .*pods/, /^mount .*fuse/, /^loop /, /^process /, /^node-\d pool file /, /^listed by ListVolumes$/, /^store key volumes\//]) {
    t.true(live.some((l) => kind.test(l)), `the leftovers check sees ${kind.source} of a live volume: ${live.join('; ')}`);
  }

  // 4. The PVC is grown while the pod runs: external-resizer, then kubelet on B.
  await expandOnline(t, e2e, path, v, written);

  // 5. A VolumeAttributesClass change to rf 3 and back, with a writer running through B's mount or device.
  const writer = v.fsType
    ? DdWriter.start({ dir: mkdirP(join(onB, 'writer')) })
    : DdWriter.start({ device: onB, firstRecord: (16 * MiB) / RECORD_BYTES, records: 128 });
  t.teardown(() => writer.stop()); // a failed step must not leave it running
  await writer.waitWritten(20);
  ok(await ctrl.ControllerModifyVolume!({ volumeId, mutableParameters: { replicas: '3' } }));
  const three = await waitFor(inspect, (vol) => vol.replicas.length === 3 && vol.replicas.every((r) => r.state === 'in-sync'), 'three in-sync replicas', 120_000);
  t.deepEqual(three.replicas.map((r) => r.nodeName).sort(), [0, 1, 2].map((i) => e2e.nodeName(i)));
  const atThree = writer.written();
  await writer.waitWritten(atThree + 20);
  ok(await ctrl.ControllerModifyVolume!({ volumeId, mutableParameters: { replicas: '2' } }));
  const two = await inspect();
  t.is(two.replicas.length, 2);
  t.is(two.replicasWanted, 2);
  const atTwo = writer.written();
  await writer.waitWritten(atTwo + 20);
  const result = await writer.stop();
  t.is(result.exitCode, 0, `the writer saw no I/O error: ${result.stderr}`);
  t.deepEqual(await writer.mismatches(), [], `every acknowledged record of ${result.written} reads back`);
  t.deepEqual(v.fsType ? readFiles(onB, written) : await readChunks(onB, written), written, 'the data of step 1 is intact');
  const verify = await e2e.controllerDaemon.ctl(['-o', 'json', 'volume', 'verify', volumeId]);
  t.is(verify.exitCode, 0, `cairnctl volume verify: ${verify.stdout} ${verify.stderr}`);
  const report = JSON.parse(verify.stdout) as { replicas: string[]; mismatches: unknown[] };
  t.is(report.replicas.length, 2, 'both replicas compared');
  t.deepEqual(report.mismatches, []);
  t.false((ok(await ctrl.ControllerGetVolume!({ volumeId })) as CsiMessage).status.volumeCondition.abnormal, 'the volume condition is normal');

  // 6. The PVC is deleted: detach from B, DeleteVolume, and nothing is left anywhere.
  await path.detach(B);
  ok(await ctrl.DeleteVolume!({ volumeId }));
  t.deepEqual(await e2e.leftovers(volumeId, [...replicaIds]), [], 'nothing is left of the volume');
}

/** ControllerExpandVolume by 64 MiB, then NodeExpandVolume on B: df (or the device node) shows the new size; a block volume's new space is written. */
async function expandOnline(t: ExecutionContext, e2e: CsiE2eCluster, path: KubeletPath, v: Variant, written: Record<string, string>): Promise<void> {
  const volumeId = path.volumeId;
  const grownBytes = v.sizeBytes + 64 * MiB;
  const target = path.targetPath(B);
  const before = v.fsType ? await dfSizeBytes(target) : await deviceSizeBytes(target);
  const expanded = ok(await e2e.controller.controller.ControllerExpandVolume!({ volumeId, capacityRange: { requiredBytes: String(grownBytes) }, volumeCapability: path.capability })) as CsiMessage;
  t.is(Number(expanded.capacityBytes), grownBytes);
  t.true(expanded.nodeExpansionRequired);
  const request = { volumeId, volumePath: target, stagingTargetPath: path.stagingPath(B), capacityRange: { requiredBytes: String(grownBytes) }, volumeCapability: path.capability };
  const node = e2e.nodes[B]!.node;
  if (!v.growsOnNode) {
    const refused = await node.NodeExpandVolume!(request, { timeoutMs: 60_000 });
    t.is(codeName(refused), 'FAILED_PRECONDITION');
    t.regex(refused.message ?? '', /CAP_SYS_RESOURCE/);
    t.is(await dfSizeBytes(target), before, 'the filesystem is as it was');
    return;
  }
  t.is(Number((ok(await node.NodeExpandVolume!(request, { timeoutMs: 60_000 })) as CsiMessage).capacityBytes), grownBytes);
  if (v.fsType) {
    const after = await dfSizeBytes(target);
    t.true(after - before > 0.9 * (grownBytes - v.sizeBytes) && after <= grownBytes, `df: ${before} bytes before, ${after} after growing the volume to ${grownBytes}`);
    return;
  }
  t.is(await deviceSizeBytes(target), grownBytes, 'the published device node has the new size');
  const data = randomBytes(64 * 1024);
  const file = join(e2e.root, `chunk-${v.name}-grown`);
  writeFileSync(file, data);
  await deviceWrite(target, v.sizeBytes, file);
  written[`${v.sizeBytes}+${data.length}`] = sha(data);
  t.is(await deviceSha256(target, v.sizeBytes, data.length), sha(data), 'the new space is written and read back');
}

function mkdirP(dir: string): string {
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Files of several sizes (and one in a subdirectory), each fsynced: name → sha256. */
async function writeFiles(dir: string): Promise<Record<string, string>> {
  const sizes = [1, 4095, 64 * 1024 + 3, MiB + 17, 8 * MiB];
  const out: Record<string, string> = {};
  mkdirSync(join(dir, 'sub'));
  for (const [i, size] of sizes.entries()) {
    const name = i === 2 ? join('sub', `f${i}`) : `f${i}`;
    const data = randomBytes(size);
    const fh = await open(join(dir, name), 'w');
    await fh.write(data);
    await fh.sync();
    await fh.close();
    out[name] = sha(data);
  }
  return out;
}

function readFiles(dir: string, expected: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.keys(expected).map((name) => [name, sha(readFileSync(join(dir, name)))]));
}

/** Chunks written with dd at the start, in the middle and at the very end of the device: "offset+bytes" → sha256. */
async function writeChunks(e2e: CsiE2eCluster, device: string, sizeBytes: number): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [offset, bytes] of [[0, 4096], [5 * MiB, MiB], [sizeBytes - 64 * 1024, 64 * 1024]] as const) {
    const data = randomBytes(bytes);
    const file = join(e2e.root, `chunk-${offset}`);
    writeFileSync(file, data);
    await deviceWrite(device, offset, file);
    out[`${offset}+${bytes}`] = sha(data);
  }
  return out;
}

async function readChunks(device: string, expected: Record<string, string>): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(expected)) {
    const [offset, bytes] = key.split('+').map(Number) as [number, number];
    out[key] = await deviceSha256(device, offset, bytes);
  }
  return out;
}
