/**
 * CSI Controller conformance across nodes (spec v1.12.0: ControllerPublishVolume to a
 * second node, GetCapacity per topology segment, the StorageClass `zones`): three node
 * daemons on a real etcd (node-0 and node-2 in zone-a, node-1 in zone-b; pools capped at
 * 1, 2 and 3 GiB) and a controller-role cairnd serving the Controller service, as in a
 * Kubernetes cluster.
 */
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from '../helpers/cluster.js';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const POOL_GIB = [1, 2, 3];

const mountCap = (mode = 'SINGLE_NODE_WRITER'): CsiMessage => ({ mount: { fsType: 'ext4' }, accessMode: { mode } });
const create = (name: string, parameters: Record<string, string>): CsiMessage => ({
  name, capacityRange: { requiredBytes: String(8 * MiB) }, volumeCapabilities: [mountCap()], parameters,
});
const nodesOf = (v: CsiMessage): string[] => (v.accessibleTopology as CsiMessage[]).map((s) => s.segments['topology.cairn.dev/node']).sort();

if (prerequisitesMet('CSI Controller across nodes on etcd', await etcdMissingReason())) {
  let cluster: Cluster | undefined;
  let controller: Daemon | undefined;
  let csi: CsiTestClient;
  let failed = false;

  test.before(async () => {
    cluster = await Cluster.start({
      nodes: 3, tls: 'insecure', zones: ['zone-a', 'zone-b'], extraArgs: ['--role', 'node'],
      nodeArgs: (i) => ['--pool-capacity', `${POOL_GIB[i]}GiB`],
    });
    controller = await Daemon.start({
      dataDir: mkdtempSync('/tmp/cairn-ctrl-'),
      extraArgs: ['--role', 'controller', '--node-name', 'controller-0', '--cluster-name', cluster.name, '--etcd-endpoints', cluster.etcd.endpoint, '--peer-insecure'],
    });
    csi = await csiClient(join(controller.dataDir, 'csi.sock'));
  });

  test.afterEach((t) => {
    if (!t.passed) failed = true;
  });

  test.after.always(async () => {
    csi?.close();
    await controller?.destroy();
    await cluster?.destroy({ failed });
  });

  const available = async (request: CsiMessage): Promise<number> => {
    const r = ok(await csi.controller.GetCapacity!(request)) as CsiMessage;
    return Number(r.availableCapacity);
  };
  const segment = (key: 'node' | 'zone', value: string): CsiMessage => ({ segments: { [`topology.cairn.dev/${key}`]: value } });

  // First, while every pool is empty: each node's free bytes are then its cap.
  test.serial('GetCapacity: per replica count, per node or zone segment and per zones, the largest volume that can be placed', async (t) => {
    const cases: [string, CsiMessage, number][] = [
      ['1 replica anywhere', { parameters: { replicas: '1' } }, 3 * GiB],
      ['2 replicas anywhere', { parameters: { replicas: '2' } }, 2 * GiB],
      ['3 replicas anywhere', { parameters: { replicas: '3' } }, 1 * GiB],
      ['1 replica on node-1', { parameters: { replicas: '1' }, accessibleTopology: segment('node', 'node-1') }, 2 * GiB],
      ['2 replicas, one on node-0', { parameters: { replicas: '2' }, accessibleTopology: segment('node', 'node-0') }, 1 * GiB],
      ['2 replicas, one in zone-b', { parameters: { replicas: '2' }, accessibleTopology: segment('zone', 'zone-b') }, 2 * GiB],
      ['2 replicas in zone-a', { parameters: { replicas: '2', zones: 'zone-a' } }, 1 * GiB],
      ['1 replica in zone-a', { parameters: { replicas: '1', zones: 'zone-a' } }, 3 * GiB],
      ['2 replicas in zone-b (one node there)', { parameters: { replicas: '2', zones: 'zone-b' } }, 0],
      ['zones exclude the segment', { parameters: { replicas: '1', zones: 'zone-a' }, accessibleTopology: segment('node', 'node-1') }, 0],
      ['a zone without nodes', { parameters: { replicas: '1' }, accessibleTopology: segment('zone', 'zone-c') }, 0],
    ];
    for (const [what, request, bytes] of cases) t.is(await available(request), bytes, what);
  });

  test.serial('zones: every replica lands in the listed zones; too few nodes up there is RESOURCE_EXHAUSTED; an ill-formed list INVALID_ARGUMENT', async (t) => {
    const v = (ok(await csi.controller.CreateVolume!(create('zoned-a', { replicas: '2', zones: 'zone-a' }))) as CsiMessage).volume;
    t.deepEqual(nodesOf(v), ['node-0', 'node-2']);
    const b = (ok(await csi.controller.CreateVolume!(create('zoned-b', { replicas: '1', zones: 'zone-b' }))) as CsiMessage).volume;
    t.deepEqual(nodesOf(b), ['node-1']);
    const short = await csi.controller.CreateVolume!(create('zoned-short', { replicas: '2', zones: 'zone-b' }));
    t.is(codeName(short), 'RESOURCE_EXHAUSTED');
    t.regex(short.message ?? '', /zone-b/);
    t.is(codeName(await csi.controller.CreateVolume!(create('zoned-none', { replicas: '1', zones: 'zone-c' }))), 'RESOURCE_EXHAUSTED');
    for (const zones of ['', ',', 'zone-a,,zone-b', 'zone a']) {
      t.is(codeName(await csi.controller.CreateVolume!(create('zoned-bad', { replicas: '1', zones }))), 'INVALID_ARGUMENT', JSON.stringify(zones));
    }
    for (const name of ['zoned-short', 'zoned-none', 'zoned-bad']) t.is((await controller!.ctl(['volume', 'inspect', name])).exitCode, 1, `${name} left nothing`);
    for (const name of ['zoned-a', 'zoned-b']) ok(await csi.controller.DeleteVolume!({ volumeId: name }));
  });

  test.serial('ControllerPublishVolume to a second node while the first holds it is FAILED_PRECONDITION naming it; after unpublish it moves', async (t) => {
    ok(await csi.controller.CreateVolume!(create('moving', { replicas: '2' })));
    const to = (node: string, extra: CsiMessage = {}): CsiMessage => ({ volumeId: 'moving', nodeId: node, volumeCapability: mountCap(), ...extra });
    ok(await csi.controller.ControllerPublishVolume!(to('node-0')));
    const refused = await csi.controller.ControllerPublishVolume!(to('node-1'));
    t.is(codeName(refused), 'FAILED_PRECONDITION');
    t.regex(refused.message ?? '', /node-0/);
    t.is(codeName(await csi.controller.ControllerPublishVolume!(to('node-1', { readonly: true }))), 'FAILED_PRECONDITION', 'read-only does not share a writer\'s volume');
    t.is(codeName(await csi.controller.ControllerPublishVolume!(to('controller-0'))), 'NOT_FOUND', 'the controller is not a node');

    ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'moving', nodeId: 'node-0' }));
    const moved = ok(await csi.controller.ControllerPublishVolume!(to('node-1'))) as CsiMessage;
    t.deepEqual(moved.publishContext, { 'cairn.dev/node': 'node-1' });
    t.deepEqual((ok(await csi.controller.ControllerGetVolume!({ volumeId: 'moving' })) as CsiMessage).status.publishedNodeIds, ['node-1']);
    ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'moving' }));
    ok(await csi.controller.DeleteVolume!({ volumeId: 'moving' }));
  });

  test.serial('MULTI_NODE_READER_ONLY: read-only publications share the volume across nodes; a writer is then FAILED_PRECONDITION', async (t) => {
    const reader = { mount: { fsType: 'ext4' }, accessMode: { mode: 'MULTI_NODE_READER_ONLY' } };
    ok(await csi.controller.CreateVolume!({ ...create('shared', { replicas: '1' }), volumeCapabilities: [reader] }));
    for (const node of ['node-0', 'node-2']) ok(await csi.controller.ControllerPublishVolume!({ volumeId: 'shared', nodeId: node, volumeCapability: reader, readonly: true }));
    t.is(codeName(await csi.controller.ControllerPublishVolume!({ volumeId: 'shared', nodeId: 'node-1', volumeCapability: reader, readonly: false })), 'FAILED_PRECONDITION');
    const listed = ok(await csi.controller.ListVolumes!({})) as CsiMessage;
    const entry = (listed.entries as CsiMessage[]).find((e) => e.volume.volumeId === 'shared')!;
    t.deepEqual(entry.status.publishedNodeIds, ['node-0', 'node-2']);
    t.is(codeName(await csi.controller.DeleteVolume!({ volumeId: 'shared' })), 'FAILED_PRECONDITION');
    ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'shared', nodeId: 'node-0' }));
    t.deepEqual((ok(await csi.controller.ControllerGetVolume!({ volumeId: 'shared' })) as CsiMessage).status.publishedNodeIds, ['node-2']);
    ok(await csi.controller.ControllerUnpublishVolume!({ volumeId: 'shared' }));
    ok(await csi.controller.DeleteVolume!({ volumeId: 'shared' }));
  });
}
