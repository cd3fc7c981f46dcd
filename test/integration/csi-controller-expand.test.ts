/**
 * CSI ControllerExpandVolume conformance, written from the spec (v1.12.0, the
 * ControllerExpandVolume section and its error table): a real cairnd (role `all`, embedded
 * store) driven over its CSI socket, with the exact gRPC code of each error, the
 * idempotency rule (a volume already that large is OK and unchanged), and an exported
 * volume growing online: NBD clients that connect afterwards see the new size and can
 * write at its end.
 */
import test from 'ava';
import { join } from 'node:path';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { NbdBlockClient } from '../helpers/verified-writer.js';

const MiB = 1024 * 1024;
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
const expand = (volumeId: string, requiredBytes: number, extra: CsiMessage = {}): CsiMessage => ({ volumeId, capacityRange: { requiredBytes: String(requiredBytes) }, ...extra });
interface ExpandReply { capacityBytes: string | number; nodeExpansionRequired: boolean }
const replyOf = (r: ExpandReply): { capacityBytes: number; nodeExpansionRequired: boolean } => ({ capacityBytes: Number(r.capacityBytes), nodeExpansionRequired: r.nodeExpansionRequired });

async function createVolume(name: string, bytes = 8 * MiB): Promise<void> {
  ok(await csi.controller.CreateVolume!({ name, capacityRange: { requiredBytes: String(bytes) }, volumeCapabilities: [mountCap()], parameters: { replicas: '1' } }));
}

const sizeOf = async (name: string): Promise<number> => (await daemon!.ctlJson<{ sizeBytes: number }>(['volume', 'inspect', name])).sizeBytes;

test.serial('ControllerExpandVolume grows the volume to required_bytes rounded up to 4 KiB and asks for node expansion', async (t) => {
  await createVolume('pvc-grow');
  const reply = ok(await csi.controller.ControllerExpandVolume!(expand('pvc-grow', 16 * MiB + 1, { volumeCapability: mountCap() }))) as ExpandReply;
  t.deepEqual(replyOf(reply), { capacityBytes: 16 * MiB + 4096, nodeExpansionRequired: true });
  t.is(await sizeOf('pvc-grow'), 16 * MiB + 4096);
  const block = ok(await csi.controller.ControllerExpandVolume!(expand('pvc-grow', 20 * MiB, { volumeCapability: { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } } }))) as ExpandReply;
  t.deepEqual(replyOf(block), { capacityBytes: 20 * MiB, nodeExpansionRequired: true }, 'a block volume needs the node too: its kernel device keeps the old size until then');
});

test.serial('a volume already at least that large is OK with its size, unchanged (idempotent; volumes never shrink)', async (t) => {
  await createVolume('pvc-idem', 16 * MiB);
  for (const required of [16 * MiB, 4 * MiB]) {
    const reply = ok(await csi.controller.ControllerExpandVolume!(expand('pvc-idem', required))) as ExpandReply;
    t.is(Number(reply.capacityBytes), 16 * MiB);
  }
  const limited = ok(await csi.controller.ControllerExpandVolume!(expand('pvc-idem', 4 * MiB, { capacityRange: { requiredBytes: String(4 * MiB), limitBytes: String(8 * MiB) } }))) as ExpandReply;
  t.is(Number(limited.capacityBytes), 16 * MiB, 'a limit below the size does not shrink it');
  t.is(await sizeOf('pvc-idem'), 16 * MiB);
});

test.serial('a volume that does not exist is NOT_FOUND', async (t) => {
  t.is(codeName(await csi.controller.ControllerExpandVolume!(expand('pvc-never', 16 * MiB))), 'NOT_FOUND');
  t.is(codeName(await csi.controller.ControllerExpandVolume!(expand('Not/A Name', 16 * MiB))), 'NOT_FOUND');
});

test.serial('missing volume_id or capacity_range, or a capability Cairn cannot serve, is INVALID_ARGUMENT and changes nothing', async (t) => {
  await createVolume('pvc-bad');
  const cases: [string, CsiMessage][] = [
    ['no volume_id', expand('', 16 * MiB)],
    ['no capacity_range', { volumeId: 'pvc-bad' }],
    ['multi-node writer', expand('pvc-bad', 16 * MiB, { volumeCapability: mountCap('MULTI_NODE_MULTI_WRITER') })],
    ['unknown fs_type', expand('pvc-bad', 16 * MiB, { volumeCapability: mountCap('SINGLE_NODE_WRITER', 'zfs') })],
    ['neither mount nor block', expand('pvc-bad', 16 * MiB, { volumeCapability: { accessMode: { mode: 'SINGLE_NODE_WRITER' } } })],
  ];
  for (const [what, request] of cases) t.is(codeName(await csi.controller.ControllerExpandVolume!(request)), 'INVALID_ARGUMENT', what);
  t.is(await sizeOf('pvc-bad'), 8 * MiB);
});

test.serial('a capacity range no volume can meet is OUT_OF_RANGE and changes nothing', async (t) => {
  await createVolume('pvc-range');
  const cases: [string, CsiMessage][] = [
    ['over the maximum size', expand('pvc-range', 2 ** 50 + 4096)],
    ['the rounded size is over limit_bytes', expand('pvc-range', 16 * MiB + 1, { capacityRange: { requiredBytes: String(16 * MiB + 1), limitBytes: String(16 * MiB + 2) } })],
    ['limit_bytes without required_bytes', { volumeId: 'pvc-range', capacityRange: { limitBytes: String(16 * MiB) } }],
    // 8 MiB was created with 1 MiB regions; at most 256 Ki of them: 256 GiB.
    ['past what the region size allows', expand('pvc-range', 512 * 1024 * MiB)],
  ];
  for (const [what, request] of cases) t.is(codeName(await csi.controller.ControllerExpandVolume!(request)), 'OUT_OF_RANGE', what);
  t.is(await sizeOf('pvc-range'), 8 * MiB);
});

test.serial('an exported volume grows online: connected clients keep working, new ones see the new size and write at its end', async (t) => {
  await createVolume('pvc-online');
  const exp = await daemon!.ctlJson<{ uri: string }>(['volume', 'export', 'pvc-online']);
  const before = await NbdBlockClient.connectUri(exp.uri);
  t.teardown(() => before.close());
  t.is(before.sizeBytes, 8 * MiB);
  await before.write(8 * MiB - 4096, Buffer.alloc(4096, 1));

  ok(await csi.controller.ControllerExpandVolume!(expand('pvc-online', 24 * MiB)));
  const after = await NbdBlockClient.connectUri(exp.uri);
  t.teardown(() => after.close());
  t.is(after.sizeBytes, 24 * MiB);
  await after.write(24 * MiB - 4096, Buffer.alloc(4096, 2), true);
  await after.write(8 * MiB - 4096, Buffer.alloc(8192, 3)); // across the old end
  t.deepEqual(await after.read(24 * MiB - 4096, 4096), Buffer.alloc(4096, 2));
  t.deepEqual(await before.read(8 * MiB - 4096, 4096), Buffer.alloc(4096, 3), 'the connection made before the growth still works');
  await before.flush();
  const verify = await daemon!.ctl(['volume', 'verify', 'pvc-online']);
  t.is(verify.exitCode, 0, verify.stderr);
  await daemon!.ctl(['volume', 'unexport', 'pvc-online']);
});
