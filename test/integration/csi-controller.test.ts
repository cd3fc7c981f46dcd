/**
 * CSI Controller conformance, written from the spec (v1.12.0, CreateVolume, DeleteVolume
 * and ControllerGetCapabilities sections): a real cairnd (role `all`, embedded store)
 * driven over its CSI socket, with the exact gRPC code of every error the sections list.
 */
import test from 'ava';
import { join } from 'node:path';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { missingCommands, requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const noQemuIo = await missingCommands('qemu-io');
let daemon: Daemon | undefined;
let csi: CsiTestClient;

test.before(async () => {
  daemon = await Daemon.start({ extraArgs: ['--node-name', 'node-a', '--role', 'all'] });
  csi = await csiClient(join(daemon.dataDir, 'csi.sock'));
});

test.after.always(async () => {
  csi?.close();
  await daemon?.destroy();
});

const mountCap = (mode = 'SINGLE_NODE_WRITER', fsType = 'ext4'): CsiMessage => ({ mount: { fsType }, accessMode: { mode } });
const blockCap = (mode = 'SINGLE_NODE_WRITER'): CsiMessage => ({ block: {}, accessMode: { mode } });
const create = (name: string, extra: CsiMessage = {}): CsiMessage => ({
  name, capacityRange: { requiredBytes: String(8 * MiB) }, volumeCapabilities: [mountCap()], parameters: { replicas: '1' }, ...extra,
});

interface VolumeMsg { volumeId: string; capacityBytes: string; volumeContext: Record<string, string>; accessibleTopology: { segments: Record<string, string> }[] }

test.serial('ControllerGetCapabilities advertises exactly the RPCs that are served', async (t) => {
  const { capabilities } = ok(await csi.controller.ControllerGetCapabilities!({})) as { capabilities: { rpc: { type: string } }[] };
  t.deepEqual(capabilities.map((c) => c.rpc.type), [
    'CREATE_DELETE_VOLUME', 'PUBLISH_UNPUBLISH_VOLUME', 'LIST_VOLUMES', 'GET_CAPACITY', 'PUBLISH_READONLY', 'EXPAND_VOLUME',
    'LIST_VOLUMES_PUBLISHED_NODES', 'VOLUME_CONDITION', 'GET_VOLUME', 'MODIFY_VOLUME',
    'CREATE_DELETE_SNAPSHOT', 'LIST_SNAPSHOTS', 'GET_SNAPSHOT', 'CLONE_VOLUME',
  ]);
});

test.serial('CreateVolume: the reply names the volume, its 4 KiB-rounded size, context and replica node; a repeat returns the same volume', async (t) => {
  const request = create('pvc-0001', {
    capacityRange: { requiredBytes: String(8 * MiB + 1) }, parameters: { replicas: '1', fsType: 'ext4', 'csi.storage.k8s.io/pvc/name': 'data', 'csi.storage.k8s.io/pvc/namespace': 'default', 'csi.storage.k8s.io/pv/name': 'pvc-0001' },
    accessibilityRequirements: { preferred: [{ segments: { 'topology.cairn.dev/node': 'node-a' } }] },
  });
  const first = (ok(await csi.controller.CreateVolume!(request)) as { volume: VolumeMsg }).volume;
  t.is(first.volumeId, 'pvc-0001');
  t.is(Number(first.capacityBytes), 8 * MiB + 4096);
  t.deepEqual(first.volumeContext, { fsType: 'ext4', replicas: '1', pvcName: 'data', pvcNamespace: 'default' }, 'the claim is handed on to the later calls (their logs name it)');
  t.deepEqual(first.accessibleTopology.map((s) => s.segments), [{ 'topology.cairn.dev/node': 'node-a' }]);
  const again = (ok(await csi.controller.CreateVolume!(request)) as { volume: VolumeMsg }).volume;
  t.deepEqual(again, first);
  const inspected = await daemon!.ctlJson<{ sizeBytes: number }>(['volume', 'inspect', 'pvc-0001']);
  t.is(inspected.sizeBytes, 8 * MiB + 4096);
});

test.serial('CreateVolume: no capacity_range gives the 1 GiB default; a limit alone is honoured', async (t) => {
  const dflt = (ok(await csi.controller.CreateVolume!(create('pvc-default', { capacityRange: undefined }))) as { volume: VolumeMsg }).volume;
  t.is(Number(dflt.capacityBytes), 1024 * MiB);
  const limited = (ok(await csi.controller.CreateVolume!(create('pvc-limited', { capacityRange: { limitBytes: String(16 * MiB + 100) } }))) as { volume: VolumeMsg }).volume;
  t.is(Number(limited.capacityBytes), 16 * MiB);
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-default' })), 'OK');
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-limited' })), 'OK');
});

test.serial('CreateVolume: the same name with another size or replica count is ALREADY_EXISTS; a compatible range returns it', async (t) => {
  ok(await csi.controller.CreateVolume!(create('pvc-0002')));
  t.is(codeName(await csi.controller.CreateVolume!(create('pvc-0002', { capacityRange: { requiredBytes: String(16 * MiB) } }))), 'ALREADY_EXISTS');
  t.is(codeName(await csi.controller.CreateVolume!(create('pvc-0002', { parameters: { replicas: '2' } }))), 'ALREADY_EXISTS');
  const compatible = (ok(await csi.controller.CreateVolume!(create('pvc-0002', { capacityRange: { requiredBytes: String(4 * MiB), limitBytes: String(8 * MiB) } }))) as { volume: VolumeMsg }).volume;
  t.is(Number(compatible.capacityBytes), 8 * MiB);
});

test.serial('CreateVolume: missing or malformed arguments are INVALID_ARGUMENT and create nothing', async (t) => {
  const bad: [string, CsiMessage][] = [
    ['no name', create('')],
    ['no capabilities', create('pvc-bad', { volumeCapabilities: [] })],
    ['no access mode', create('pvc-bad', { volumeCapabilities: [{ mount: {} }] })],
    ['multi-node writer', create('pvc-bad', { volumeCapabilities: [blockCap('MULTI_NODE_MULTI_WRITER')] })],
    ['multi-node single writer', create('pvc-bad', { volumeCapabilities: [mountCap('MULTI_NODE_SINGLE_WRITER')] })],
    ['unsupported fs', create('pvc-bad', { volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'btrfs')] })],
    ['unknown parameter', create('pvc-bad', { parameters: { replica: '1' } })],
    ['replicas out of range', create('pvc-bad', { parameters: { replicas: '4' } })],
    ['bad fsType parameter', create('pvc-bad', { parameters: { fsType: 'ntfs' } })],
    ['immutable key in mutable_parameters', create('pvc-bad', { mutableParameters: { fsType: 'ext4' } })],
    ['unknown topology key', create('pvc-bad', { accessibilityRequirements: { requisite: [{ segments: { 'kubernetes.io/hostname': 'node-a' } }] } })],
    ['content source without an id', create('pvc-bad', { volumeContentSource: { snapshot: { snapshotId: '' } } })],
  ];
  for (const [what, request] of bad) {
    const r = await csi.controller.CreateVolume!(request);
    t.is(codeName(r), 'INVALID_ARGUMENT', what);
  }
  const multi = await csi.controller.CreateVolume!(create('pvc-bad', { volumeCapabilities: [blockCap('MULTI_NODE_MULTI_WRITER')] }));
  t.regex(multi.message ?? '', /cannot be shared across nodes safely/);
  const unknown = await csi.controller.CreateVolume!(create('pvc-bad', { parameters: { replica: '1' } }));
  t.regex(unknown.message ?? '', /"replica"/);
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-bad'])).exitCode, 1, 'no volume was made');
});

test.serial('CreateVolume: block and read-only capabilities are accepted; mutable replicas apply at creation', async (t) => {
  const v = (ok(await csi.controller.CreateVolume!(create('pvc-block', {
    volumeCapabilities: [blockCap('SINGLE_NODE_MULTI_WRITER'), blockCap('MULTI_NODE_READER_ONLY')], parameters: {}, mutableParameters: { replicas: '1' },
  }))) as { volume: VolumeMsg }).volume;
  t.is(v.volumeContext.replicas, '1');
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-block' })), 'OK');
});

test.serial('CreateVolume: a capacity no 4 KiB multiple fits, or over the maximum, is OUT_OF_RANGE', async (t) => {
  t.is(codeName(await csi.controller.CreateVolume!(create('pvc-range', { capacityRange: { requiredBytes: String(MiB + 1), limitBytes: String(MiB + 100) } }))), 'OUT_OF_RANGE');
  t.is(codeName(await csi.controller.CreateVolume!(create('pvc-range', { capacityRange: { requiredBytes: String(2 ** 51) } }))), 'OUT_OF_RANGE');
});

test.serial('CreateVolume: more replicas than nodes is RESOURCE_EXHAUSTED and leaves nothing behind', async (t) => {
  t.is(codeName(await csi.controller.CreateVolume!(create('pvc-wide', { parameters: { replicas: '3' } }))), 'RESOURCE_EXHAUSTED');
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-wide'])).exitCode, 1);
});

test.serial('CreateVolume: a requisite topology places a replica on a node it allows; none up with room is RESOURCE_EXHAUSTED', async (t) => {
  const allowed = (ok(await csi.controller.CreateVolume!(create('pvc-req', {
    accessibilityRequirements: { requisite: [{ segments: { 'topology.cairn.dev/node': 'node-a' } }], preferred: [{ segments: { 'topology.cairn.dev/node': 'node-a' } }] },
  }))) as { volume: VolumeMsg }).volume;
  t.deepEqual(allowed.accessibleTopology.map((s) => s.segments), [{ 'topology.cairn.dev/node': 'node-a' }]);
  t.is(codeName(await csi.controller.CreateVolume!(create('pvc-req-none', {
    accessibilityRequirements: { requisite: [{ segments: { 'topology.cairn.dev/zone': 'zone-elsewhere' } }] },
  }))), 'RESOURCE_EXHAUSTED');
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-req-none'])).exitCode, 1);
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-req' })), 'OK');
});

test.serial('ValidateVolumeCapabilities: confirms what Cairn serves, says why not otherwise; unknown volume NOT_FOUND; missing fields INVALID_ARGUMENT', async (t) => {
  ok(await csi.controller.CreateVolume!(create('pvc-val')));
  const yes = ok(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'pvc-val', volumeCapabilities: [blockCap(), mountCap('SINGLE_NODE_READER_ONLY', 'xfs')], parameters: { replicas: '1' } })) as CsiMessage;
  t.is(yes.confirmed.volumeCapabilities.length, 2);
  t.deepEqual(yes.confirmed.parameters, { replicas: '1' });
  const multi = ok(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'pvc-val', volumeCapabilities: [blockCap('MULTI_NODE_MULTI_WRITER')] })) as CsiMessage;
  t.is(multi.confirmed, null);
  t.regex(multi.message, /cannot be shared across nodes safely/);
  const replicas = ok(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'pvc-val', volumeCapabilities: [blockCap()], parameters: { replicas: '2' } })) as CsiMessage;
  t.is(replicas.confirmed, null);
  t.regex(replicas.message, /1 replica/);
  t.is(codeName(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'pvc-nope', volumeCapabilities: [blockCap()] })), 'NOT_FOUND');
  t.is(codeName(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'Not/A Name', volumeCapabilities: [blockCap()] })), 'NOT_FOUND');
  t.is(codeName(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'pvc-val' })), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.ValidateVolumeCapabilities!({ volumeCapabilities: [blockCap()] })), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'pvc-val', volumeCapabilities: [{ block: {} }] })), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-val' })), 'OK');
});

test.serial('ControllerGetVolume: the volume as created, a normal condition while healthy; unknown NOT_FOUND; no id INVALID_ARGUMENT', async (t) => {
  const created = (ok(await csi.controller.CreateVolume!(create('pvc-get'))) as { volume: VolumeMsg }).volume;
  const got = ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pvc-get' })) as CsiMessage;
  t.is(got.volume.volumeId, 'pvc-get');
  t.is(got.volume.capacityBytes, created.capacityBytes);
  t.deepEqual(got.volume.accessibleTopology, created.accessibleTopology);
  t.deepEqual(got.status.publishedNodeIds, []);
  t.deepEqual(got.status.volumeCondition, { abnormal: false, message: 'healthy' });
  t.is(codeName(await csi.controller.ControllerGetVolume!({ volumeId: 'pvc-nope' })), 'NOT_FOUND');
  t.is(codeName(await csi.controller.ControllerGetVolume!({})), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-get' })), 'OK');
  t.is(codeName(await csi.controller.ControllerGetVolume!({ volumeId: 'pvc-get' })), 'NOT_FOUND');
});

test.serial('DeleteVolume: deletes, then repeats OK; an unknown or impossible id is OK; a missing id is INVALID_ARGUMENT', async (t) => {
  ok(await csi.controller.CreateVolume!(create('pvc-del')));
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-del' })), 'OK');
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-del'])).exitCode, 1);
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-del' })), 'OK');
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'never-existed' })), 'OK');
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'Not/A Name' })), 'OK');
  t.is(codeName(await csi.controller.DeleteVolume!({})), 'INVALID_ARGUMENT');
});

requiring(noQemuIo, test.serial)('DeleteVolume of a volume in use (an NBD client connected) is FAILED_PRECONDITION and keeps it', async (t) => {
  ok(await csi.controller.CreateVolume!(create('pvc-busy')));
  const exp = await daemon!.ctlJson<{ uri: string }>(['volume', 'export', 'pvc-busy']);
  const { execa } = await import('execa');
  const holder = execa('qemu-io', ['-f', 'raw', exp.uri], { stdin: 'pipe', reject: false });
  t.teardown(async () => {
    holder.stdin?.end('quit\n');
    await holder;
  });
  let connected = 0;
  while (connected === 0) {
    connected = (await daemon!.ctlJson<{ export?: { connectionCount: number } }>(['volume', 'inspect', 'pvc-busy'])).export?.connectionCount ?? 0;
  }
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-busy' })), 'FAILED_PRECONDITION');
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-busy'])).exitCode, 0);
  holder.stdin?.end('quit\n');
  await holder;
  await daemon!.ctl(['volume', 'unexport', 'pvc-busy']);
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-busy' })), 'OK');
});
