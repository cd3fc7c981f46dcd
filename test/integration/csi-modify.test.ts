/**
 * CSI ControllerModifyVolume, written from the spec (v1.12.0, ControllerModifyVolume and its
 * error table), against real cairnd processes over their CSI sockets:
 *
 * - conformance on one cairnd (role `all`, embedded store): the exact code for a missing
 *   volume_id or mutable_parameters, a key Cairn does not know (and nothing changed), an
 *   unknown volume, a count out of range, too few nodes for another replica; the same
 *   count again is OK;
 * - the live change on real etcd and three cairnd: a volume of 2 replicas exported on node 0
 *   with a checksummed writer running goes to 3 (the new replica rebuilds and joins the
 *   in-sync set, the client sees no error), then back to 2 (one replica leaves the volume
 *   and its device file is gone from its node), the writer's blocks read back as
 *   acknowledged, and `cairnctl volume verify` finds the replicas equal.
 */
import { poolDeviceFile } from '../helpers/pool-paths.js';
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { VolumeMessage } from '../../src/cli/api-client.js';
import { Cluster } from '../helpers/cluster.js';
import { csiClient, codeName, ok, type CsiMessage } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const missingEtcd = await etcdMissingReason();

const create = (name: string, replicas: number): CsiMessage => ({
  name, capacityRange: { requiredBytes: String(8 * MiB) }, volumeCapabilities: [{ block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } }], parameters: { replicas: String(replicas) },
});

test.serial('ControllerModifyVolume conformance on one node: each error code of the spec, nothing changed by a refused call, idempotent', async (t) => {
  const daemon = await Daemon.start({ extraArgs: ['--node-name', 'node-a', '--role', 'all'] });
  t.teardown(() => daemon.destroy());
  const csi = await csiClient(join(daemon.dataDir, 'csi.sock'));
  t.teardown(() => csi.close()); // teardowns run last-registered first
  const { capabilities } = ok(await csi.controller.ControllerGetCapabilities!({})) as { capabilities: { rpc: { type: string } }[] };
  t.true(capabilities.some((c) => c.rpc.type === 'MODIFY_VOLUME'), 'MODIFY_VOLUME is advertised');
  ok(await csi.controller.CreateVolume!(create('pvc-mod', 1)));
  const before = await daemon.ctlJson<VolumeMessage>(['volume', 'inspect', 'pvc-mod']);

  const cases: [string, CsiMessage, string][] = [
    ['no volume_id', { mutableParameters: { replicas: '1' } }, 'INVALID_ARGUMENT'],
    ['no mutable_parameters', { volumeId: 'pvc-mod' }, 'INVALID_ARGUMENT'],
    ['an unknown key', { volumeId: 'pvc-mod', mutableParameters: { replicas: '1', iops: '3000' } }, 'INVALID_ARGUMENT'],
    ['fsType is not mutable', { volumeId: 'pvc-mod', mutableParameters: { fsType: 'xfs' } }, 'INVALID_ARGUMENT'],
    ['replicas out of range', { volumeId: 'pvc-mod', mutableParameters: { replicas: '4' } }, 'INVALID_ARGUMENT'],
    ['replicas not a number', { volumeId: 'pvc-mod', mutableParameters: { replicas: 'two' } }, 'INVALID_ARGUMENT'],
    ['an unknown volume', { volumeId: 'pvc-none', mutableParameters: { replicas: '1' } }, 'NOT_FOUND'],
    ['an id no volume can have', { volumeId: 'Not/A/Volume', mutableParameters: { replicas: '1' } }, 'NOT_FOUND'],
    ['more replicas than nodes', { volumeId: 'pvc-mod', mutableParameters: { replicas: '2' } }, 'RESOURCE_EXHAUSTED'],
  ];
  for (const [why, request, code] of cases) t.is(codeName(await csi.controller.ControllerModifyVolume!(request)), code, why);
  const unknown = await csi.controller.ControllerModifyVolume!({ volumeId: 'pvc-mod', mutableParameters: { replicas: '1', iops: '3000' } });
  t.regex(unknown.message ?? '', /unknown key "iops"/);

  const after = await daemon.ctlJson<VolumeMessage>(['volume', 'inspect', 'pvc-mod']);
  t.deepEqual([after.replicasWanted, after.replicas.map((r) => r.id)], [before.replicasWanted, before.replicas.map((r) => r.id)], 'refused calls changed nothing');
  // The same value again is OK, and the secrets field is accepted (and unused).
  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'pvc-mod', mutableParameters: { replicas: '1' }, secrets: { token: 's3cret' } })), 'OK');
  t.false(daemon.log().includes('s3cret'), 'the secret is never logged');
});

requiring(missingEtcd, test.serial)('ControllerModifyVolume on 3 nodes and etcd: rf 2 → 3 rebuilds live with no client error, 3 → 2 deletes one replica, the replicas agree', async (t) => {
  t.timeout(240_000);
  const c = await Cluster.start({ nodes: 3 });
  t.teardown(() => c.destroy({ failed: !t.passed }));
  const csi = await csiClient(join(c.node(0).dataDir, 'csi.sock'));
  t.teardown(() => csi.close());
  await c.createVolume('live', '64MiB', 2, 0, ['--prefer-node', 'node-0']);
  await c.exportVolume(0, 'live');
  const w = await c.writer(0, 'live', { blockCount: (16 * MiB) / 4096 });
  w.start();
  await w.waitForAcks(200);

  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'live', mutableParameters: { replicas: '3' } })), 'OK');
  const raised = await c.volume('live', 0);
  t.is(raised.replicasWanted, 3);
  t.is(raised.replicas.length, 3, 'the new replica is listed when the call returns');
  t.is(raised.export !== null, true, 'still exported');
  const three = await c.waitFor(() => c.volume('live', 0), (v) => v.health === 'healthy' && v.replicas.length === 3 && v.replicas.every((r) => r.state === 'in-sync'),
    'three in-sync replicas', 120_000);
  t.deepEqual(three.replicas.map((r) => r.nodeName).sort(), ['node-0', 'node-1', 'node-2']);
  await w.waitForAcks(200, 30_000);
  t.is(w.stats().errors, 0, `client errors while adding a replica: ${w.stats().errorDetails.join('; ')}`);
  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'live', mutableParameters: { replicas: '3' } })), 'OK', 'idempotent');

  const devicePath = (r: VolumeMessage['replicas'][number]): string => poolDeviceFile(c.node(Number(r.nodeName.slice('node-'.length))).dataDir, `${r.id}.img`);
  for (const r of three.replicas) t.true(existsSync(devicePath(r)), `replica ${r.id} has its device on ${r.nodeName}`);
  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'live', mutableParameters: { replicas: '2' } })), 'OK');
  const two = await c.volume('live', 0);
  t.is(two.replicasWanted, 2);
  t.is(two.replicas.length, 2);
  t.truthy(Cluster.replicaOn(two, 0), 'the engine\'s local replica stays');
  const removed = three.replicas.filter((r) => !two.replicas.some((x) => x.id === r.id));
  t.is(removed.length, 1);
  t.false(existsSync(devicePath(removed[0]!)), `the removed replica's device is gone from ${removed[0]!.nodeName}`);
  for (const r of two.replicas) t.true(existsSync(devicePath(r)));

  await w.waitForAcks(200, 30_000);
  const stats = await w.stop();
  await w.nbd.flush();
  t.is(stats.errors, 0, `client errors over both changes: ${stats.errorDetails.join('; ')}`);
  const report = await w.verify();
  t.deepEqual(report.mismatches, [], 'every block holds what was acknowledged');
  t.true(report.blocksChecked > 0);
  t.is((await c.volume('live', 0)).health, 'healthy');
  const verified = await c.verify('live', 0);
  t.is(verified.exitCode, 0, `volume verify: ${verified.stderr}`);
  t.is(verified.result?.replicas.length, 2, 'both remaining replicas compared');
  t.deepEqual(verified.result?.mismatches, []);
});
