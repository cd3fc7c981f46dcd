/**
 * Snapshot repair's decisions (cluster/snapshot-repair.ts): where the next copy of a snapshot
 * is streamed from and to, and which copies on nodes down too long leave its document.
 */
import test from 'ava';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import type { NodeStatus } from '../../src/cluster/node-registry.js';
import { overdueCopies, planPull } from '../../src/cluster/snapshot-repair.js';
import { splitPieces } from '../../src/cluster/snapshot-pull.js';
import type { SnapshotDoc } from '../../src/cluster/snapshot-types.js';
import type { VolumeDoc } from '../../src/cluster/volume-doc.js';

const MiB = 1 << 20;
const NOW = Date.parse('2030-01-01T00:10:00Z');

function node(id: string, up: boolean, freeBytes = 1024 * MiB, heartbeatAt = '2030-01-01T00:00:00Z'): NodeStatus {
  return { nodeId: id as NodeId, name: id, peerAddress: `${id}:1`, labels: {}, capacity: { totalBytes: 4096 * MiB, freeBytes }, version: '0', heartbeatAt, up } as NodeStatus;
}

function snap(copyNodes: string[], copiesWanted = 2): SnapshotDoc {
  return {
    id: 'snap-1' as SnapshotId, name: 's', sourceVolumeId: 'vol-1' as VolumeId, sourceVolumeName: 'v', sizeBytes: 64 * MiB, createdAt: '2030-01-01T00:00:00Z',
    state: 'ready', readyToUse: true, copiesWanted, copies: copyNodes.map((n) => ({ nodeId: n as NodeId, replicaId: `rep-${n}` as ReplicaId })), pauseUs: 0,
  };
}

const volumeOn = (...nodes: string[]): VolumeDoc => ({ id: 'vol-1', replicas: nodes.map((n) => ({ id: `r-${n}`, nodeId: n, state: 'in-sync', since: '' })) } as unknown as VolumeDoc);

test('a snapshot short of copies is streamed from a copy that is up to a node without one, preferring the volume\'s replica nodes', (t) => {
  const nodes = [node('a', false), node('b', true), node('c', true, 2048 * MiB), node('d', true)];
  t.deepEqual(planPull(snap(['a', 'b']), nodes, undefined), { source: 'b' as NodeId, target: 'c' as NodeId }, 'most free bytes without a volume');
  t.deepEqual(planPull(snap(['a', 'b']), nodes, volumeOn('b', 'd')), { source: 'b' as NodeId, target: 'd' as NodeId }, 'the volume\'s replica node first');
});

test('no pull when the copies are there, none is up, or no node has room', (t) => {
  const nodes = [node('a', false), node('b', true), node('c', true, MiB)];
  t.is(planPull(snap(['b', 'c']), nodes, undefined), undefined, 'two copies up');
  t.is(planPull(snap(['a']), [node('a', false), node('b', true)], undefined), undefined, 'no copy to stream from');
  t.is(planPull(snap(['a', 'b']), nodes, undefined), undefined, 'c has 1 MiB free, the snapshot is 64 MiB');
});

test('copies of nodes down past the wait leave the document only once enough copies are up', (t) => {
  const downLong = node('a', false, MiB, '2030-01-01T00:00:00Z');
  t.deepEqual(overdueCopies(snap(['a', 'b']), [downLong, node('b', true)], 60_000, NOW), [], 'only one copy up: a stays listed');
  t.deepEqual(overdueCopies(snap(['a', 'b', 'c']), [downLong, node('b', true), node('c', true)], 60_000, NOW), ['a' as NodeId]);
  const downShort = node('a', false, MiB, new Date(NOW - 1000).toISOString());
  t.deepEqual(overdueCopies(snap(['a', 'b', 'c']), [downShort, node('b', true), node('c', true)], 60_000, NOW), [], 'down for 1 s only');
  t.deepEqual(overdueCopies(snap(['x', 'b', 'c']), [node('b', true), node('c', true)], 60_000, NOW), ['x' as NodeId], 'a forgotten node');
});

test('extents are cut into pieces of at most the piece size', (t) => {
  t.deepEqual(splitPieces([{ offset: 0, lengthBytes: 2.5 * MiB }, { offset: 8 * MiB, lengthBytes: 4096 }], MiB), [
    { offset: 0, lengthBytes: MiB }, { offset: MiB, lengthBytes: MiB }, { offset: 2 * MiB, lengthBytes: MiB / 2 }, { offset: 8 * MiB, lengthBytes: 4096 },
  ]);
});
