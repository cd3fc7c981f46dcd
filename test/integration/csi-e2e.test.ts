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
import { ok, type CsiMessage } from '../helpers/csi-client.js';
import { CsiE2eCluster, KubeletPath, TOPOLOGY_NODE, deviceSha256, deviceWrite } from '../helpers/csi-e2e.js';
import { DdWriter, RECORD_BYTES } from '../helpers/dd-writer.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { combine, missingCommands, missingRoot, onlyWhere, prerequisitesMet } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const A = 0;
const B = 1;

interface Variant {
  name: string;
  /** Undefined: a raw block volume. */
  fsType?: 'ext4' | 'xfs';
  sizeBytes: number;
}

const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await etcdMissingReason(),
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'mkfs.xfs', 'dd', 'sha256sum', 'bash'),
);
const hostAttach = !existsSync('/sys/module/nbd');

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

  test.serial('ext4 (64 MiB, rf 2): node A, node B, rf 3 and back under a writer, delete leaves nothing', (t) => kubeletFlow(t, e2e!, { name: 'ext4', fsType: 'ext4', sizeBytes: 64 * MiB }));
  test.serial('xfs (320 MiB, rf 2): the same', (t) => kubeletFlow(t, e2e!, { name: 'xfs', fsType: 'xfs', sizeBytes: 320 * MiB }));
  test.serial('raw block (64 MiB, rf 2): the same through the published device node', (t) => kubeletFlow(t, e2e!, { name: 'block', sizeBytes: 64 * MiB }));
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

  // 5. A VolumeAttributesClass change to rf 3 and back, with a writer running through B's mount or device.
  const writer = v.fsType
    ? DdWriter.start({ dir: mkdirP(join(onB, 'writer')) })
    : DdWriter.start({ device: onB, firstRecord: (16 * MiB) / RECORD_BYTES, records: 128 });
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
