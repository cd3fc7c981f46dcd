/**
 * CSI snapshot conformance, written from the spec (v1.12.0: CreateSnapshot, DeleteSnapshot,
 * ListSnapshots, GetSnapshot, CreateVolume's volume_content_source,
 * ControllerGetCapabilities): a real single-node cairnd (role `all`, embedded store) over
 * its CSI socket, with the exact gRPC code of every error, and the bytes of a restored and
 * a cloned volume read back over NBD.
 */
import test from 'ava';
import { execa } from 'execa';
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

const blockCap = { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
const volumeRequest = (name: string, extra: CsiMessage = {}): CsiMessage => ({
  name, capacityRange: { requiredBytes: String(8 * MiB) }, volumeCapabilities: [blockCap], parameters: { replicas: '1' }, ...extra,
});
const fromSnapshot = (snapshotId: string): CsiMessage => ({ volumeContentSource: { snapshot: { snapshotId } } });
const fromVolume = (volumeId: string): CsiMessage => ({ volumeContentSource: { volume: { volumeId } } });

interface SnapshotMsg { sizeBytes: number; snapshotId: string; sourceVolumeId: string; creationTime: { seconds: number; nanos: number }; readyToUse: boolean }

async function createSnapshot(name: string, sourceVolumeId: string): Promise<SnapshotMsg> {
  return (ok(await csi.controller.CreateSnapshot!({ name, sourceVolumeId, parameters: { 'csi.storage.k8s.io/volumesnapshot/name': name } })) as { snapshot: SnapshotMsg }).snapshot;
}

/** Runs qemu-io commands on the volume, exported on this node for the call; the volume is unexported after. */
async function qemuIo(volume: string, commands: string[]): Promise<{ exitCode: number; stdout: string }> {
  const exp = await daemon!.ctlJson<{ uri: string }>(['volume', 'export', volume]);
  try {
    const r = await execa('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), exp.uri], { reject: false });
    return { exitCode: r.exitCode ?? -1, stdout: r.stdout };
  } finally {
    await daemon!.ctl(['volume', 'unexport', volume]);
  }
}

test.serial('ControllerGetCapabilities advertises the snapshot RPCs and CLONE_VOLUME', async (t) => {
  const { capabilities } = ok(await csi.controller.ControllerGetCapabilities!({})) as { capabilities: { rpc: { type: string } }[] };
  const types = capabilities.map((c) => c.rpc.type);
  for (const type of ['CREATE_DELETE_SNAPSHOT', 'LIST_SNAPSHOTS', 'GET_SNAPSHOT', 'CLONE_VOLUME']) t.true(types.includes(type), type);
});

test.serial('CreateSnapshot: the reply carries id, source, size, creation time and ready_to_use; a repeat returns the same snapshot', async (t) => {
  ok(await csi.controller.CreateVolume!(volumeRequest('pvc-src')));
  const before = Math.floor(Date.now() / 1000);
  const first = await createSnapshot('snapshot-0001', 'pvc-src');
  t.like(first, { snapshotId: 'snapshot-0001', sourceVolumeId: 'pvc-src', sizeBytes: 8 * MiB, readyToUse: true });
  t.true(first.creationTime.seconds >= before - 1 && first.creationTime.seconds <= Math.ceil(Date.now() / 1000));
  t.deepEqual(await createSnapshot('snapshot-0001', 'pvc-src'), first);
  const inspected = await daemon!.ctlJson<{ name: string; readyToUse: boolean }>(['snapshot', 'inspect', 'snapshot-0001']);
  t.like(inspected, { name: 'snapshot-0001', readyToUse: true });
});

test.serial('CreateSnapshot: missing fields and unknown parameters are INVALID_ARGUMENT; another source is ALREADY_EXISTS; an unknown source NOT_FOUND', async (t) => {
  t.is(codeName(await csi.controller.CreateSnapshot!({ sourceVolumeId: 'pvc-src' })), 'INVALID_ARGUMENT', 'no name');
  t.is(codeName(await csi.controller.CreateSnapshot!({ name: 'snapshot-x' })), 'INVALID_ARGUMENT', 'no source_volume_id');
  t.is(codeName(await csi.controller.CreateSnapshot!({ name: 'snapshot-x', sourceVolumeId: 'pvc-src', parameters: { keep: 'yes' } })), 'INVALID_ARGUMENT');
  ok(await csi.controller.CreateVolume!(volumeRequest('pvc-other')));
  t.is(codeName(await csi.controller.CreateSnapshot!({ name: 'snapshot-0001', sourceVolumeId: 'pvc-other' })), 'ALREADY_EXISTS');
  t.is(codeName(await csi.controller.CreateSnapshot!({ name: 'snapshot-x', sourceVolumeId: 'pvc-missing' })), 'NOT_FOUND');
  t.is((await daemon!.ctl(['snapshot', 'inspect', 'snapshot-x'])).exitCode, 1, 'nothing was made');
});

test.serial('ListSnapshots: filters by snapshot_id and source_volume_id (unknown ones give an empty list), pages with max_entries, a bad token is ABORTED', async (t) => {
  await createSnapshot('snapshot-0002', 'pvc-src');
  await createSnapshot('snapshot-0003', 'pvc-other');
  const list = async (r: CsiMessage): Promise<{ ids: string[]; next: string }> => {
    const res = ok(await csi.controller.ListSnapshots!(r)) as { entries: { snapshot: SnapshotMsg }[]; nextToken: string };
    return { ids: res.entries.map((e) => e.snapshot.snapshotId), next: res.nextToken };
  };
  t.deepEqual((await list({})).ids, ['snapshot-0001', 'snapshot-0002', 'snapshot-0003']);
  t.deepEqual((await list({ snapshotId: 'snapshot-0002' })).ids, ['snapshot-0002']);
  t.deepEqual((await list({ snapshotId: 'snapshot-none' })).ids, []);
  t.deepEqual((await list({ sourceVolumeId: 'pvc-src' })).ids, ['snapshot-0001', 'snapshot-0002']);
  t.deepEqual((await list({ sourceVolumeId: 'pvc-none' })).ids, []);
  const page1 = await list({ maxEntries: 2 });
  t.deepEqual(page1.ids, ['snapshot-0001', 'snapshot-0002']);
  t.not(page1.next, '');
  const page2 = await list({ maxEntries: 2, startingToken: page1.next });
  t.deepEqual(page2, { ids: ['snapshot-0003'], next: '' });
  t.is(codeName(await csi.controller.ListSnapshots!({ startingToken: 'not-a-token' })), 'ABORTED');
  t.is(codeName(await csi.controller.ListSnapshots!({ maxEntries: -1 })), 'INVALID_ARGUMENT');
});

test.serial('GetSnapshot: the snapshot by id; NOT_FOUND for an unknown id, INVALID_ARGUMENT without one', async (t) => {
  const got = (ok(await csi.controller.GetSnapshot!({ snapshotId: 'snapshot-0002' })) as { snapshot: SnapshotMsg }).snapshot;
  t.like(got, { snapshotId: 'snapshot-0002', sourceVolumeId: 'pvc-src', readyToUse: true });
  t.is(codeName(await csi.controller.GetSnapshot!({ snapshotId: 'snapshot-none' })), 'NOT_FOUND');
  t.is(codeName(await csi.controller.GetSnapshot!({})), 'INVALID_ARGUMENT');
});

test.serial('CreateVolume from a source: unknown source NOT_FOUND, smaller than the source OUT_OF_RANGE, nothing made', async (t) => {
  t.is(codeName(await csi.controller.CreateVolume!(volumeRequest('pvc-r0', fromSnapshot('snapshot-none')))), 'NOT_FOUND');
  t.is(codeName(await csi.controller.CreateVolume!(volumeRequest('pvc-r0', fromVolume('pvc-none')))), 'NOT_FOUND');
  t.is(codeName(await csi.controller.CreateVolume!(volumeRequest('pvc-r0', { ...fromSnapshot('snapshot-0001'), capacityRange: { requiredBytes: String(4 * MiB) } }))), 'OUT_OF_RANGE');
  t.is(codeName(await csi.controller.CreateVolume!(volumeRequest('pvc-r0', { ...fromVolume('pvc-src'), capacityRange: { limitBytes: String(4 * MiB) } }))), 'OUT_OF_RANGE');
  t.is(codeName(await csi.controller.CreateVolume!(volumeRequest('pvc-r0', { volumeContentSource: { snapshot: { snapshotId: '' } } }))), 'INVALID_ARGUMENT');
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-r0'])).exitCode, 1);
});

requiring(noQemuIo, test.serial)('CreateVolume from a snapshot holds the data at the snapshot, not what was written after; a clone holds the volume\'s; content_source is echoed', async (t) => {
  ok(await csi.controller.CreateVolume!(volumeRequest('pvc-data')));
  t.is((await qemuIo('pvc-data', ['write -P 0xab 0 1M', 'write -P 0xcd 7M 1M'])).exitCode, 0);
  await createSnapshot('snapshot-data', 'pvc-data');
  t.is((await qemuIo('pvc-data', ['write -P 0x11 0 1M'])).exitCode, 0, 'written after the snapshot');

  const restored = (ok(await csi.controller.CreateVolume!(volumeRequest('pvc-restored', {
    ...fromSnapshot('snapshot-data'), capacityRange: { requiredBytes: String(16 * MiB) },
  }))) as { volume: CsiMessage }).volume;
  t.is(Number(restored.capacityBytes), 16 * MiB, 'larger than the source');
  t.deepEqual(restored.contentSource, { snapshot: { snapshotId: 'snapshot-data' }, type: 'snapshot' });
  const again = (ok(await csi.controller.CreateVolume!(volumeRequest('pvc-restored', { ...fromSnapshot('snapshot-data'), capacityRange: { requiredBytes: String(16 * MiB) } }))) as { volume: CsiMessage }).volume;
  t.is(again.volumeId, 'pvc-restored', 'idempotent');
  t.is(codeName(await csi.controller.CreateVolume!(volumeRequest('pvc-restored', { capacityRange: { requiredBytes: String(16 * MiB) } }))), 'ALREADY_EXISTS', 'the same name without the source');

  const r = await qemuIo('pvc-restored', ['read -P 0xab 0 1M', 'read -P 0xcd 7M 1M', 'read -P 0 8M 8M']);
  t.is(r.exitCode, 0, r.stdout);
  t.notRegex(r.stdout, /Pattern verification failed/, r.stdout);

  const clone = (ok(await csi.controller.CreateVolume!(volumeRequest('pvc-clone', fromVolume('pvc-data')))) as { volume: CsiMessage }).volume;
  t.is(Number(clone.capacityBytes), 8 * MiB, 'the source\'s size');
  t.deepEqual(clone.contentSource, { volume: { volumeId: 'pvc-data' }, type: 'volume' });
  const c = await qemuIo('pvc-clone', ['read -P 0x11 0 1M', 'read -P 0xcd 7M 1M']);
  t.notRegex(c.stdout, /Pattern verification failed/, c.stdout);
  const got = (ok(await csi.controller.ControllerGetVolume!({ volumeId: 'pvc-restored' })) as { volume: CsiMessage }).volume;
  t.deepEqual(got.contentSource, { snapshot: { snapshotId: 'snapshot-data' }, type: 'snapshot' });
});

test.serial('DeleteSnapshot: deletes it (GetSnapshot then NOT_FOUND); an unknown id and a repeat are OK; no snapshot_id is INVALID_ARGUMENT', async (t) => {
  t.is(codeName(await csi.controller.DeleteSnapshot!({ snapshotId: 'snapshot-0002' })), 'OK');
  t.is(codeName(await csi.controller.GetSnapshot!({ snapshotId: 'snapshot-0002' })), 'NOT_FOUND');
  t.is(codeName(await csi.controller.DeleteSnapshot!({ snapshotId: 'snapshot-0002' })), 'OK');
  t.is(codeName(await csi.controller.DeleteSnapshot!({ snapshotId: 'snapshot-never' })), 'OK');
  t.is(codeName(await csi.controller.DeleteSnapshot!({})), 'INVALID_ARGUMENT');
  t.false((await daemon!.ctlJson<{ name: string }[]>(['snapshot', 'list'])).some((s) => s.name === 'snapshot-0002'));
});

test.serial('a snapshot outlives its source volume and still restores', async (t) => {
  t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'pvc-other' })), 'OK');
  t.like((ok(await csi.controller.GetSnapshot!({ snapshotId: 'snapshot-0003' })) as { snapshot: SnapshotMsg }).snapshot, { sourceVolumeId: 'pvc-other', readyToUse: true });
  ok(await csi.controller.CreateVolume!(volumeRequest('pvc-from-gone', fromSnapshot('snapshot-0003'))));
  t.is((await daemon!.ctl(['volume', 'inspect', 'pvc-from-gone'])).exitCode, 0);
});
