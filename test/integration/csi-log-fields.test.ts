/**
 * The log fields an operator filters `kubectl logs` by: one real cairnd (role all, embedded
 * store, JSON logs) driven over its CSI socket the way the sidecars and kubelet call it,
 * with the Kubernetes metadata they add (external-provisioner's and external-snapshotter's
 * --extra-create-metadata parameters, kubelet's podInfoOnMount volume_context). The lines
 * of each operation must name the volume, the claim and its namespace, the pod and the
 * VolumeSnapshot; the engine's own lines carry the claim kept in the volume document. Every
 * line the daemon prints names its node as `node`, once; the node a volume is published to
 * is `publishedNode`.
 */
import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { csiClient, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon, type LogEvent } from '../helpers/daemon.js';
import { combine, missingCommands, missingRoot, requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4'),
);
const rootTest = requiring(missing, test.serial);

let daemon: Daemon | undefined;
let csi: CsiTestClient | undefined;
let root: string | undefined;

test.after.always(async () => {
  csi?.close();
  await daemon?.destroy();
  if (root) rmSync(root, { recursive: true, force: true });
});

const NODE = 'node-logs';
const VOLUME = 'pvc-4f1c0e2a';
const claimParams = { 'csi.storage.k8s.io/pvc/name': 'data-web-0', 'csi.storage.k8s.io/pvc/namespace': 'shop', 'csi.storage.k8s.io/pv/name': VOLUME };
const podContext = { 'csi.storage.k8s.io/pod.name': 'web-0', 'csi.storage.k8s.io/pod.namespace': 'shop', 'csi.storage.k8s.io/pod.uid': 'uid-1', 'csi.storage.k8s.io/ephemeral': 'false' };
const capability: CsiMessage = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

/** The `csi call` line of `method`, written after `since`. */
function callLine(events: LogEvent[], method: string): LogEvent {
  const line = events.find((e) => e.msg === 'csi call' && e.method === method);
  if (!line) throw new Error(`no "csi call" line of ${method}`);
  return line;
}

rootTest('every CSI call of a volume logs volume, node, pvc, namespace, pod and VolumeSnapshot where the call carries them', async (t) => {
  daemon = await Daemon.start({ extraArgs: ['--node-name', NODE, '--role', 'all', '--pool-capacity', '1GiB'] });
  csi = await csiClient(join(daemon.dataDir, 'csi.sock'));
  root = mkdtempSync('/tmp/cairn-csi-logs-');
  const staging = join(root, 'globalmount');
  const target = join(root, 'pod', 'mount');
  mkdirSync(staging);
  mkdirSync(join(target, '..'));
  const since = daemon.logMark();

  // external-provisioner (--extra-create-metadata), then the volume_context the PV keeps.
  const created = (ok(await csi.controller.CreateVolume!({
    name: VOLUME, capacityRange: { requiredBytes: String(16 * MiB) }, volumeCapabilities: [capability], parameters: { replicas: '1', ...claimParams },
  })) as CsiMessage).volume;
  const volumeContext = created.volumeContext as Record<string, string>;
  t.like(volumeContext, { pvcName: 'data-web-0', pvcNamespace: 'shop' }, 'CreateVolume hands the claim on to the later calls');

  // external-attacher, then kubelet (podInfoOnMount adds the pod to NodePublish's context).
  ok(await csi.controller.ControllerPublishVolume!({ volumeId: VOLUME, nodeId: NODE, volumeCapability: capability, readonly: false, volumeContext }));
  const stage = { volumeId: VOLUME, stagingTargetPath: staging, volumeCapability: capability, volumeContext };
  ok(await csi.node.NodeStageVolume!(stage));
  ok(await csi.node.NodePublishVolume!({ ...stage, targetPath: target, readonly: false, volumeContext: { ...volumeContext, ...podContext } }));

  // external-snapshotter (--extra-create-metadata).
  const snapshot = (ok(await csi.controller.CreateSnapshot!({
    name: 'snapshot-9b2e', sourceVolumeId: VOLUME,
    parameters: { 'csi.storage.k8s.io/volumesnapshot/name': 'nightly', 'csi.storage.k8s.io/volumesnapshot/namespace': 'shop', 'csi.storage.k8s.io/volumesnapshotcontent/name': 'snapcontent-9b2e' },
  })) as CsiMessage).snapshot;

  ok(await csi.controller.DeleteSnapshot!({ snapshotId: snapshot.snapshotId }));
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: VOLUME, targetPath: target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: VOLUME, stagingTargetPath: staging }));
  ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: VOLUME, nodeId: NODE }));
  ok(await csi.controller.DeleteVolume!({ volumeId: VOLUME }));

  // The log is written asynchronously: the last call's line marks that every earlier one is there.
  await daemon.waitForEvent({ msg: 'csi call', method: 'DeleteVolume' }, { since });
  const events = daemon.events(since);
  const claim = { volume: VOLUME, pvc: 'data-web-0', namespace: 'shop' };
  t.like(callLine(events, 'CreateVolume'), { ...claim, code: 'OK' });
  t.like(callLine(events, 'ControllerPublishVolume'), { ...claim, node: NODE, publishedNode: NODE });
  t.like(callLine(events, 'NodeStageVolume'), { ...claim, node: NODE });
  t.like(callLine(events, 'NodePublishVolume'), { ...claim, node: NODE, pod: 'web-0' });
  t.like(callLine(events, 'CreateSnapshot'), { volume: VOLUME, snapshot: 'snapshot-9b2e', volumeSnapshot: 'nightly', namespace: 'shop' });
  for (const method of ['NodeUnpublishVolume', 'NodeUnstageVolume']) t.like(callLine(events, method), { volume: VOLUME, node: NODE }, method);
  for (const method of ['ControllerUnpublishVolume', 'DeleteVolume']) t.like(callLine(events, method), { volume: VOLUME, node: NODE }, method);
  t.like(callLine(events, 'ControllerUnpublishVolume'), { publishedNode: NODE });

  // Every line since the start is this daemon's: `node` names it, exactly once (pino would print a key bound twice twice).
  const lines = daemon.log().split('\n').filter((l) => l.startsWith('{'));
  t.deepEqual(lines.filter((l) => l.split('"node":').length !== 2), [], 'lines that do not name `node` exactly once');
  t.deepEqual(daemon.events().filter((e) => e.node !== NODE).map((e) => e.msg), [], 'lines whose `node` is not this daemon\'s');

  // Below the CSI edge: the cluster's and the engine's lines of the volume name the claim too.
  t.like(events.find((e) => e.msg === 'volume created'), claim);
  t.like(events.find((e) => e.msg === 'volume engine started' && 'inSync' in e), claim, 'the engine\'s own start line');
  t.like(events.find((e) => e.msg === 'volume snapshot taken'), claim);
});
