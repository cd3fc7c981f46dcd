import test from 'ava';
import type { ReplicaMessage, StagingMessage, VerifyMessage, VolumeMessage } from '../../src/cli/api-client.js';
import {
  clusterStatusText, formatAge, formatDuration, mismatchedRegions, nodeRows, progressBar, verifyText, volumeDetail, volumeRows,
} from '../../src/cli/format.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const NOW = Date.parse('2025-03-01T12:00:00.000Z');

test('a progress bar shows the fraction, bytes, rate and time left', (t) => {
  const bar = progressBar({ doneBytes: Math.round(0.452 * 5 * GiB), totalBytes: 5 * GiB, bytesPerSecond: 180 * MiB });
  // 2.74 GiB left at 180 MiB/s = 15.6 s, rounded up.
  t.is(bar, '[#########-----------] 45.2% 2.3 GiB/5 GiB 180 MiB/s ETA 16s');
});

test('a progress bar at the edges', (t) => {
  t.is(progressBar({ doneBytes: 0, totalBytes: 8 * GiB, bytesPerSecond: 0 }), '[--------------------] 0.0% 0 B/8 GiB -/s ETA -', 'no rate yet (or not the engine\'s node): no rate, no ETA');
  t.true(progressBar({ doneBytes: 8 * GiB - 1, totalBytes: 8 * GiB, bytesPerSecond: 100 * MiB }).startsWith('[###################-] 99.9% '), 'never 100% before the end');
  t.true(progressBar({ doneBytes: 1, totalBytes: 8 * GiB, bytesPerSecond: 100 * MiB }).startsWith('[--------------------] 0.0% '));
  t.is(progressBar({ doneBytes: 8 * GiB, totalBytes: 8 * GiB, bytesPerSecond: 100 * MiB }), '[####################] 100.0% 8 GiB/8 GiB 100 MiB/s ETA 0s');
  t.true(progressBar({ doneBytes: 9 * GiB, totalBytes: 8 * GiB, bytesPerSecond: 1 }).startsWith('[####################] 100.0% '), 'done beyond total is clamped');
  t.true(progressBar({ doneBytes: 0, totalBytes: 0, bytesPerSecond: 0 }).startsWith('[####################] 100.0% '), 'nothing to copy is complete');
  t.is(progressBar({ doneBytes: MiB, totalBytes: 4 * MiB, bytesPerSecond: MiB }, 8), '[##------] 25.0% 1 MiB/4 MiB 1 MiB/s ETA 3s', 'another width');
});

test('durations and ages', (t) => {
  t.is(formatDuration(0), '0s');
  t.is(formatDuration(15.2), '16s');
  t.is(formatDuration(125), '2m05s');
  t.is(formatDuration(3720), '1h02m');
  t.is(formatDuration(97_200), '1d03h');
  t.is(formatAge('2025-03-01T11:55:48.000Z', NOW), '4m12s ago');
  t.is(formatAge('2025-03-01T12:00:05.000Z', NOW), '0s ago', 'a clock slightly ahead is not negative');
  t.is(formatAge('', NOW), '-');
  t.is(formatAge('not a time', NOW), '-');
});

function replica(id: string, nodeName: string, state: string, extra: Partial<ReplicaMessage> = {}): ReplicaMessage {
  return { id, nodeName, deviceId: id, state, allocatedBytes: 3 * MiB, since: '2025-03-01T11:00:00.000Z', reason: '', rebuild: null, dirtyBytes: 0, ...extra };
}

function volume(replicas: ReplicaMessage[], extra: Partial<VolumeMessage> = {}): VolumeMessage {
  return {
    id: 'vol-1', name: 'pgdata', sizeBytes: 10 * GiB, allocatedBytes: 3 * MiB, state: 'ready', health: 'degraded', epoch: 7,
    createdAt: '2025-02-28T09:00:00.000Z', replicas, export: null, replicasWanted: 3, engineNode: 'node-a', published: [], staging: null, ...extra,
  };
}

const MIXED = [
  replica('rep-a', 'node-a', 'in-sync'),
  replica('rep-b', 'node-b', 'rebuilding', { since: '2025-03-01T11:59:30.000Z', reason: 'node-b was down', rebuild: { doneBytes: 5 * GiB, totalBytes: 10 * GiB, bytesPerSecond: 256 * MiB } }),
  replica('rep-c', 'node-c', 'faulted', { since: '2025-03-01T11:30:00.000Z', reason: 'write timed out after 8000 ms', dirtyBytes: 120 * MiB, allocatedBytes: 0 }),
];

test('volume inspect shows replicas in sync of wanted, the engine node, progress and reasons', (t) => {
  const text = volumeDetail(volume(MIXED), NOW);
  t.regex(text, /^Replicas:\s+1\/3 in sync$/m);
  t.regex(text, /^Engine node:\s+node-a$/m);
  t.regex(text, /^Health:\s+degraded$/m);
  const lines = text.split('\n');
  const header = lines.findIndex((l) => l.startsWith('REPLICA'));
  t.regex(lines[header]!, /^REPLICA\s+NODE\s+STATE\s+SINCE\s+ALLOCATED\s+PROGRESS$/);
  t.regex(lines[header + 1]!, /^rep-a\s+node-a\s+in-sync\s+1h00m ago\s+3 MiB\s+-$/);
  t.regex(lines[header + 2]!, /^rep-b\s+node-b\s+rebuilding\s+30s ago\s+3 MiB\s+\[##########----------\] 50\.0% 5 GiB\/10 GiB 256 MiB\/s ETA 20s$/);
  t.regex(lines[header + 3]!, /^rep-c\s+node-c\s+faulted\s+30m00s ago\s+0 B\s+-$/);
  t.true(lines.includes('rep-c on node-c is faulted: write timed out after 8000 ms; 120 MiB to resync'), text);
  t.true(lines.includes('rep-b on node-b is rebuilding: node-b was down'), text);
  t.false(text.includes('rep-a on'), 'no note for an in-sync replica');
});

test('volume inspect of a single healthy replica without an engine', (t) => {
  const text = volumeDetail(volume([replica('rep-a', 'solo', 'in-sync')], { health: 'healthy', replicasWanted: 1, engineNode: '' }), NOW);
  t.regex(text, /^Replicas:\s+1\/1 in sync$/m);
  t.regex(text, /^Engine node:\s+none$/m);
  t.false(/ is (faulted|rebuilding)/.test(text));
});

test('volume list shows REPLICAS as in-sync/total next to HEALTH', (t) => {
  const text = volumeRows([volume(MIXED), volume([replica('rep-x', 'solo', 'in-sync')], { name: 'small', health: 'healthy', sizeBytes: 64 * MiB })]);
  const [head, first, second] = text.split('\n');
  t.regex(head!, /^NAME\s+SIZE\s+ALLOCATED\s+STATE\s+HEALTH\s+REPLICAS\s+EXPORT\s+PUBLISHED\s+STAGED$/);
  t.regex(first!, /^pgdata\s+10 GiB\s+3 MiB\s+ready\s+degraded\s+1\/3\s+-\s+-\s+-$/);
  t.regex(second!, /^small\s+64 MiB\s+3 MiB\s+ready\s+healthy\s+1\/1\s+-\s+-\s+-$/);
});

const STAGED: StagingMessage = {
  nodeName: 'node-a', state: 'staged', stagingPath: '/var/lib/kubelet/plugins/kubernetes.io/csi/csi.cairn.dev/abc/globalmount',
  devicePath: '/dev/loop3', attachMethod: 'nbdfuse-loop', accessType: 'mount', fsType: 'ext4', readonly: false, updatedAt: '2025-03-01T11:00:00.000Z',
};

test('volume list shows the nodes CSI published a volume to and its staging on the answering node', (t) => {
  const text = volumeRows([
    volume(MIXED, { published: [{ nodeId: 'node-a', readonly: false }], staging: STAGED }),
    volume(MIXED, { name: 'shared', published: [{ nodeId: 'node-b', readonly: true }, { nodeId: 'node-c', readonly: true }], staging: { ...STAGED, state: 'staging', devicePath: '' } }),
  ]);
  const [, first, second] = text.split('\n');
  t.regex(first!, /^pgdata\s.*\s1\/3\s+-\s+node-a\s+staged \/dev\/loop3$/);
  t.regex(second!, /^shared\s.*\s1\/3\s+-\s+node-b\(ro\),node-c\(ro\)\s+staging$/);
});

test('volume inspect shows publication, staging state and path, device and attach method', (t) => {
  const text = volumeDetail(volume(MIXED, { published: [{ nodeId: 'node-a', readonly: true }], staging: { ...STAGED, readonly: true } }), NOW);
  t.regex(text, /^Published:\s+node-a \(read-only\)$/m);
  t.regex(text, /^Staging:\s+staged on node-a at \/var\/lib\/kubelet\/plugins\/kubernetes\.io\/csi\/csi\.cairn\.dev\/abc\/globalmount \(ext4, read-only\)$/m);
  t.regex(text, /^Device:\s+\/dev\/loop3 \(nbdfuse-loop\)$/m);

  const block = volumeDetail(volume(MIXED, { staging: { ...STAGED, accessType: 'block', fsType: '', devicePath: '/dev/nbd0', attachMethod: 'nbd' } }), NOW);
  t.regex(block, /^Published:\s+nowhere$/m);
  t.regex(block, /^Staging:\s+staged on node-a at \S+ \(block\)$/m);
  t.regex(block, /^Device:\s+\/dev\/nbd0 \(nbd\)$/m);

  const none = volumeDetail(volume(MIXED), NOW);
  t.regex(none, /^Staging:\s+not staged on this node$/m);
  t.false(/^Device:/m.test(none));
});

test('node list and cluster status', (t) => {
  const nodes = nodeRows([
    { name: 'node-a', nodeId: 'n1', peerAddress: '10.0.0.1:9471', zone: 'z1', labels: {}, up: true, totalBytes: 100 * GiB, freeBytes: 40 * GiB, version: '0.1.0', heartbeatAt: '' },
    { name: 'node-b', nodeId: 'n2', peerAddress: '10.0.0.2:9471', zone: '', labels: {}, up: false, totalBytes: 50 * GiB, freeBytes: 50 * GiB, version: '0.1.0', heartbeatAt: '' },
  ]).split('\n');
  t.regex(nodes[0]!, /^NAME\s+ADDRESS\s+ZONE\s+STATE\s+FREE\s+TOTAL\s+VERSION$/);
  t.regex(nodes[1]!, /^node-a\s+10\.0\.0\.1:9471\s+z1\s+up\s+40 GiB\s+100 GiB\s+0\.1\.0$/);
  t.regex(nodes[2]!, /^node-b\s+10\.0\.0\.2:9471\s+-\s+down\s+50 GiB\s+50 GiB\s+0\.1\.0$/);

  const status = clusterStatusText({
    cluster: 'prod', store: 'etcd', nodeName: 'node-a', repairLeader: '', nodes: { total: 3, up: 2 },
    volumes: { total: 5, healthy: 3, degraded: 1, faulted: 1 },
  });
  t.regex(status, /^Cluster:\s+prod$/m);
  t.regex(status, /^Store:\s+etcd$/m);
  t.regex(status, /^Nodes:\s+2\/3 up$/m);
  t.regex(status, /^Repair leader:\s+none$/m);
  t.regex(status, /^Volumes:\s+5 \(3 healthy, 1 degraded, 1 faulted\)$/m);
  t.regex(clusterStatusText({ cluster: 'default', store: 'embedded', nodeName: 'solo', repairLeader: 'solo', nodes: { total: 1, up: 1 }, volumes: { total: 0, healthy: 0, degraded: 0, faulted: 0 } }),
    /^Store:\s+embedded \(single node\)\n(.|\n)*^Repair leader:\s+solo$/m);
});

test('verify: agreement, and the ranges where replicas differ', (t) => {
  const agree: VerifyMessage = { volume: 'pgdata', replicas: ['rep-a', 'rep-b'], regionBytes: MiB, regionsCompared: 10240, mismatches: [] };
  t.is(verifyText(agree), 'replicas of pgdata agree: 10240 regions of 1 MiB compared');
  t.regex(verifyText({ ...agree, replicas: ['rep-a'] }), /only one in-sync replica, rep-a: there was nothing to compare it with/);

  const differ: VerifyMessage = {
    ...agree,
    mismatches: [{ offset: 3 * MiB, lengthBytes: MiB, replicas: ['rep-b'] }, { offset: GiB, lengthBytes: 4 * MiB, replicas: ['rep-b', 'rep-c'] }],
  };
  t.is(mismatchedRegions(differ), 5, 'a merged range counts each region');
  const lines = verifyText(differ).split('\n');
  t.is(lines[0], 'reference replica: rep-a; compared: rep-a, rep-b');
  t.regex(lines[1]!, /^OFFSET\s+AT\s+LENGTH\s+DIFFERING REPLICAS$/);
  t.regex(lines[2]!, /^3145728\s+3 MiB\s+1 MiB\s+rep-b$/);
  t.regex(lines[3]!, /^1073741824\s+1 GiB\s+4 MiB\s+rep-b,rep-c$/);
});
