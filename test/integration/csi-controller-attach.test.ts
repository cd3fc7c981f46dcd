/**
 * CSI Controller conformance, second part, written from the spec (v1.12.0 sections
 * GetCapacity, ListVolumes, ControllerPublishVolume, ControllerUnpublishVolume, and
 * CreateVolume/DeleteVolume where publication and fsType change them): one real cairnd
 * (role `all`, embedded store, a 2 GiB pool) over its CSI socket, with exact gRPC codes.
 * Publication to a second node and zones need several nodes: csi-controller-cluster.test.ts.
 */
import test from 'ava';
import { join } from 'node:path';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const XFS_MIN = 300 * MiB;
let daemon: Daemon | undefined;
let csi: CsiTestClient;

test.before(async () => {
  daemon = await Daemon.start({ extraArgs: ['--node-name', 'node-a', '--role', 'all', '--pool-capacity', '2GiB'] });
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
const capacity = async (request: CsiMessage): Promise<{ available: number; max: number; min: number }> => {
  const r = ok(await csi.controller.GetCapacity!(request)) as CsiMessage;
  return { available: Number(r.availableCapacity), max: Number(r.maximumVolumeSize?.value), min: Number(r.minimumVolumeSize?.value) };
};
const names = (r: CsiMessage): string[] => (r.entries as CsiMessage[]).map((e) => e.volume.volumeId);

// First, while the pool is empty: the pool's free bytes are then exactly its 2 GiB cap.
test.serial('GetCapacity: the largest volume CreateVolume can make now, and exactly that', async (t) => {
  const whole = await capacity({});
  t.is(whole.available, 2 * GiB);
  t.is(whole.max, whole.available);
  t.is(whole.min, 4096);
  t.deepEqual(await capacity({ parameters: { replicas: '1' }, accessibleTopology: { segments: { 'topology.cairn.dev/node': 'node-a' } } }), whole);
  t.is((await capacity({ parameters: { replicas: '2' } })).available, 0, 'one node cannot hold two replicas');
  t.is((await capacity({ accessibleTopology: { segments: { 'topology.cairn.dev/node': 'node-b' } } })).available, 0, 'no such node');
  t.is((await capacity({ accessibleTopology: { segments: { 'topology.cairn.dev/zone': 'zone-x' } } })).available, 0, 'node-a has no zone');
  t.is((await capacity({ parameters: { zones: 'zone-x' } })).available, 0);
  t.is((await capacity({ parameters: { fsType: 'xfs' } })).min, XFS_MIN);
  t.is((await capacity({ volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')] })).min, XFS_MIN);

  t.is(codeName(await csi.controller.CreateVolume!(create('cap-over', { capacityRange: { requiredBytes: String(whole.available + 4096) } }))), 'RESOURCE_EXHAUSTED');
  const made = (ok(await csi.controller.CreateVolume!(create('cap-max', { capacityRange: { requiredBytes: String(whole.max) } }))) as CsiMessage).volume;
  t.is(Number(made.capacityBytes), whole.max);
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'cap-max' })), 'OK');
});

test.serial('GetCapacity: an unknown parameter or topology key, or a capability Cairn does not serve, is INVALID_ARGUMENT', async (t) => {
  t.is(codeName(await csi.controller.GetCapacity!({ parameters: { iops: '100' } })), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.GetCapacity!({ parameters: { zones: 'a,,b' } })), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.GetCapacity!({ accessibleTopology: { segments: { 'kubernetes.io/hostname': 'node-a' } } })), 'INVALID_ARGUMENT');
  t.is(codeName(await csi.controller.GetCapacity!({ volumeCapabilities: [blockCap('MULTI_NODE_MULTI_WRITER')] })), 'INVALID_ARGUMENT');
});

test.serial('ListVolumes: pages in name order stay right while volumes are created and deleted between calls', async (t) => {
  for (const n of ['lst-01', 'lst-02', 'lst-03', 'lst-04', 'lst-05']) ok(await csi.controller.CreateVolume!(create(n)));
  const page1 = ok(await csi.controller.ListVolumes!({ maxEntries: 2 })) as CsiMessage;
  t.deepEqual(names(page1), ['lst-01', 'lst-02']);
  t.truthy(page1.nextToken);

  ok(await csi.controller.CreateVolume!(create('lst-00'))); // before the token: belongs to a page already read
  ok(await csi.controller.CreateVolume!(create('lst-025'))); // after it: shows up
  ok(await csi.controller.DeleteVolume!({ volumeId: 'lst-02' })); // the token's own volume may go
  ok(await csi.controller.DeleteVolume!({ volumeId: 'lst-03' })); // gone before its page: not listed
  const page2 = ok(await csi.controller.ListVolumes!({ maxEntries: 2, startingToken: page1.nextToken })) as CsiMessage;
  t.deepEqual(names(page2), ['lst-025', 'lst-04']);

  ok(await csi.controller.DeleteVolume!({ volumeId: 'lst-04' }));
  ok(await csi.controller.CreateVolume!(create('lst-06')));
  const page3 = ok(await csi.controller.ListVolumes!({ maxEntries: 2, startingToken: page2.nextToken })) as CsiMessage;
  t.deepEqual(names(page3), ['lst-05', 'lst-06']);
  t.is(page3.nextToken, '', 'the last page has no next_token');

  const all = ok(await csi.controller.ListVolumes!({})) as CsiMessage;
  t.deepEqual(names(all), ['lst-00', 'lst-01', 'lst-025', 'lst-05', 'lst-06']);
  t.is(all.nextToken, '');
  const again = ok(await csi.controller.ListVolumes!({ maxEntries: 1, startingToken: page1.nextToken })) as CsiMessage;
  t.deepEqual(names(again), ['lst-025'], 'a token can be used again');
});

test.serial('ListVolumes: each entry is the volume as ControllerGetVolume shows it, with its published nodes and condition', async (t) => {
  const all = ok(await csi.controller.ListVolumes!({})) as CsiMessage;
  const entry = (all.entries as CsiMessage[]).find((e) => e.volume.volumeId === 'lst-05')!;
  const got = ok(await csi.controller.ControllerGetVolume!({ volumeId: 'lst-05' })) as CsiMessage;
  t.deepEqual(entry.volume, got.volume);
  t.deepEqual(entry.volume.volumeContext, { fsType: 'ext4', replicas: '1' });
  t.deepEqual(entry.status, { publishedNodeIds: [], volumeCondition: { abnormal: false, message: 'healthy' } });
  ok(await csi.controller.ControllerPublishVolume!({ volumeId: 'lst-05', nodeId: 'node-a', volumeCapability: mountCap() }));
  const published = ok(await csi.controller.ListVolumes!({ maxEntries: 1, startingToken: (ok(await csi.controller.ListVolumes!({ maxEntries: 3 })) as CsiMessage).nextToken })) as CsiMessage;
  t.deepEqual(names(published), ['lst-05']);
  t.deepEqual(published.entries[0].status.publishedNodeIds, ['node-a']);
  ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'lst-05', nodeId: 'node-a' }));
  for (const n of ['lst-00', 'lst-01', 'lst-025', 'lst-05', 'lst-06']) ok(await csi.controller.DeleteVolume!({ volumeId: n }));
});

test.serial('ListVolumes: a token it did not make is ABORTED; a negative max_entries is INVALID_ARGUMENT', async (t) => {
  t.is(codeName(await csi.controller.ListVolumes!({ startingToken: 'not-a-token' })), 'ABORTED');
  t.is(codeName(await csi.controller.ListVolumes!({ startingToken: Buffer.from('lst-01').toString('base64url') })), 'ABORTED');
  t.is(codeName(await csi.controller.ListVolumes!({ maxEntries: -1 })), 'INVALID_ARGUMENT');
});

test.serial('ControllerPublishVolume: recorded for the node, the same call again is OK with the same context, the other readonly is ALREADY_EXISTS', async (t) => {
  ok(await csi.controller.CreateVolume!(create('pub-1')));
  const request = { volumeId: 'pub-1', nodeId: 'node-a', volumeCapability: mountCap(), readonly: false };
  const first = ok(await csi.controller.ControllerPublishVolume!(request)) as CsiMessage;
  t.deepEqual(first.publishContext, { 'cairn.dev/node': 'node-a' });
  t.deepEqual(ok(await csi.controller.ControllerPublishVolume!(request)), first);
  t.is(codeName(await csi.controller.ControllerPublishVolume!({ ...request, readonly: true })), 'ALREADY_EXISTS');
  const got = ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pub-1' })) as CsiMessage;
  t.deepEqual(got.status.publishedNodeIds, ['node-a']);
});

test.serial('ControllerPublishVolume: unknown volume or node NOT_FOUND; missing fields or a multi-node writer INVALID_ARGUMENT; nothing recorded', async (t) => {
  const request = { volumeId: 'pub-2', nodeId: 'node-a', volumeCapability: mountCap() };
  ok(await csi.controller.CreateVolume!(create('pub-2')));
  const cases: [string, CsiMessage, string][] = [
    ['unknown volume', { ...request, volumeId: 'pub-none' }, 'NOT_FOUND'],
    ['impossible volume id', { ...request, volumeId: 'Not/A Name' }, 'NOT_FOUND'],
    ['unregistered node', { ...request, nodeId: 'node-zz' }, 'NOT_FOUND'],
    ['no volume_id', { ...request, volumeId: '' }, 'INVALID_ARGUMENT'],
    ['no node_id', { ...request, nodeId: '' }, 'INVALID_ARGUMENT'],
    ['no capability', { ...request, volumeCapability: undefined }, 'INVALID_ARGUMENT'],
    ['no access mode', { ...request, volumeCapability: { mount: {} } }, 'INVALID_ARGUMENT'],
    ['multi-node writer', { ...request, volumeCapability: blockCap('MULTI_NODE_SINGLE_WRITER') }, 'INVALID_ARGUMENT'],
    ['unsupported fs', { ...request, volumeCapability: mountCap('SINGLE_NODE_WRITER', 'btrfs') }, 'INVALID_ARGUMENT'],
  ];
  for (const [what, r, code] of cases) t.is(codeName(await csi.controller.ControllerPublishVolume!(r)), code, what);
  const unregistered = await csi.controller.ControllerPublishVolume!({ ...request, nodeId: 'node-zz' });
  t.regex(unregistered.message ?? '', /node-zz/);
  const got = ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pub-2' })) as CsiMessage;
  t.deepEqual(got.status.publishedNodeIds, []);
  ok(await csi.controller.DeleteVolume!({ volumeId: 'pub-2' }));
});

test.serial('DeleteVolume of a published volume is FAILED_PRECONDITION naming the node; after ControllerUnpublishVolume it goes', async (t) => {
  const refused = await csi.controller.DeleteVolume!({ volumeId: 'pub-1' });
  t.is(codeName(refused), 'FAILED_PRECONDITION');
  t.regex(refused.message ?? '', /node-a/);
  t.is((await daemon!.ctl(['volume', 'inspect', 'pub-1'])).exitCode, 0, 'the volume is kept');

  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'pub-1', nodeId: 'node-zz' })), 'OK', 'not published there');
  t.deepEqual((ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pub-1' })) as CsiMessage).status.publishedNodeIds, ['node-a']);
  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'pub-1', nodeId: 'node-a' })), 'OK');
  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'pub-1', nodeId: 'node-a' })), 'OK', 'again');
  t.deepEqual((ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pub-1' })) as CsiMessage).status.publishedNodeIds, []);
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pub-1' })), 'OK');
  t.is((await daemon!.ctl(['volume', 'inspect', 'pub-1'])).exitCode, 1);
});

test.serial('ControllerUnpublishVolume: no node_id unpublishes from every node; an unknown volume is OK; no volume_id is INVALID_ARGUMENT', async (t) => {
  ok(await csi.controller.CreateVolume!(create('pub-3', { volumeCapabilities: [blockCap('MULTI_NODE_READER_ONLY')] })));
  ok(await csi.controller.ControllerPublishVolume!({ volumeId: 'pub-3', nodeId: 'node-a', volumeCapability: blockCap('MULTI_NODE_READER_ONLY'), readonly: true }));
  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'pub-3' })), 'OK');
  t.deepEqual((ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pub-3' })) as CsiMessage).status.publishedNodeIds, []);
  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'pub-none', nodeId: 'node-a' })), 'OK');
  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'Not/A Name' })), 'OK');
  t.is(codeName(await csi.controller.ControllerUnpublishVolume!({ nodeId: 'node-a' })), 'INVALID_ARGUMENT');
  ok(await csi.controller.DeleteVolume!({ volumeId: 'pub-3' }));
});

test.serial('fsType: kept on the volume and in every volume_context; another fsType for the same name is ALREADY_EXISTS; none for a block volume', async (t) => {
  const xfs = (ok(await csi.controller.CreateVolume!(create('fs-xfs', { parameters: { replicas: '1', fsType: 'xfs' } }))) as CsiMessage).volume;
  t.is(Number(xfs.capacityBytes), XFS_MIN, 'raised to the smallest filesystem mkfs.xfs makes');
  t.deepEqual(xfs.volumeContext, { fsType: 'xfs', replicas: '1' });
  t.deepEqual((ok(await csi.controller.ControllerGetVolume!({ volumeId: 'fs-xfs' })) as CsiMessage).volume.volumeContext, { fsType: 'xfs', replicas: '1' });
  t.deepEqual((ok(await csi.controller.CreateVolume!(create('fs-xfs', { parameters: { replicas: '1', fsType: 'xfs' } }))) as CsiMessage).volume, xfs, 'a repeat is the same volume');
  t.is(codeName(await csi.controller.CreateVolume!(create('fs-xfs', { parameters: { replicas: '1', fsType: 'ext4' } }))), 'ALREADY_EXISTS');
  t.is(codeName(await csi.controller.CreateVolume!(create('fs-xfs', { volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'ext4')] }))), 'ALREADY_EXISTS');
  t.is(codeName(await csi.controller.CreateVolume!(create('fs-xfs', { volumeCapabilities: [blockCap()] }))), 'ALREADY_EXISTS');
  const validated = ok(await csi.controller.ValidateVolumeCapabilities!({ volumeId: 'fs-xfs', volumeCapabilities: [mountCap()], parameters: { fsType: 'ext4' } })) as CsiMessage;
  t.is(validated.confirmed, null);
  t.regex(validated.message, /xfs/);

  const fromCapability = (ok(await csi.controller.CreateVolume!(create('fs-cap', { parameters: {}, volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')] }))) as CsiMessage).volume;
  t.is(fromCapability.volumeContext.fsType, 'xfs');
  t.is(Number(fromCapability.capacityBytes), XFS_MIN);
  const block = (ok(await csi.controller.CreateVolume!(create('fs-block', { volumeCapabilities: [blockCap()] }))) as CsiMessage).volume;
  t.deepEqual(block.volumeContext, { replicas: '1' });
  for (const n of ['fs-xfs', 'fs-cap', 'fs-block']) ok(await csi.controller.DeleteVolume!({ volumeId: n }));
});

test.serial('fsType xfs with a limit under what mkfs.xfs accepts is OUT_OF_RANGE saying why, and creates nothing', async (t) => {
  const r = await csi.controller.CreateVolume!(create('fs-small', { parameters: { fsType: 'xfs' }, capacityRange: { requiredBytes: String(8 * MiB), limitBytes: String(100 * MiB) } }));
  t.is(codeName(r), 'OUT_OF_RANGE');
  t.regex(r.message ?? '', /mkfs\.xfs/);
  t.is((await daemon!.ctl(['volume', 'inspect', 'fs-small'])).exitCode, 1);
});
