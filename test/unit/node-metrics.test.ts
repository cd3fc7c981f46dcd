/**
 * The /metrics registry (src/daemon/metrics/): what a node reports from its engines, NBD
 * exports, data channel, hosted replicas, pool and snapshots, read at scrape time from the
 * counters those keep; the histograms' buckets; and the CSI server's one hook, counting
 * real calls on a unix socket by method and code.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BucketHistogram } from '../../src/common/histogram.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { CsiLocks } from '../../src/csi/csi-locks.js';
import { csiService } from '../../src/csi/csi-call.js';
import { startCsiServer } from '../../src/csi/csi-server.js';
import { identityService } from '../../src/csi/identity-server.js';
import { NodeMetrics } from '../../src/daemon/metrics/node-metrics.js';
import type { MetricSources } from '../../src/daemon/metrics/node-view.js';
import { DataChannelStats } from '../../src/engine/data-stats.js';
import type { RunningEngineView } from '../../src/engine/engine-types.js';
import { newStats } from '../../src/engine/nbd/stats.js';
import type { PoolBackend } from '../../src/pool/backend.js';
import { DmBackend } from '../../src/pool/dm-backend.js';
import { DataOp } from '../../src/replica/data-frames.js';
import type { ReplicaStatusView } from '../../src/replica/replica-manager.js';
import { csiClient } from '../helpers/csi-client.js';
import { parseSamples, value } from '../helpers/prom-text.js';
import { silentLogger } from '../../src/common/log.js';

const VOL = 'vol-1' as VolumeId;
const engine: RunningEngineView = {
  name: 'pg-data', volumeId: VOL, sizeBytes: 1 << 30, headless: false,
  replicas: [
    { replicaId: 'rep-a' as ReplicaId, nodeId: 'n1' as NodeId, state: 'in-sync', dirtyBytes: 0 },
    { replicaId: 'rep-b' as ReplicaId, nodeId: 'n2' as NodeId, state: 'in-sync', dirtyBytes: 0 },
    { replicaId: 'rep-c' as ReplicaId, nodeId: 'n3' as NodeId, state: 'rebuilding', dirtyBytes: 4 << 20, rebuild: { doneBytes: 1 << 20, totalBytes: 4 << 20, bytesPerSecond: 5e6 } },
  ],
};

function sources(): MetricSources {
  const nbd = { ...newStats(), name: 'pg-data', sizeBytes: 1 << 30, readOnly: false };
  nbd.connections = 2;
  nbd.writeRequests = 10;
  nbd.bytesWritten = 40960;
  nbd.readRequests = 3;
  nbd.bytesRead = 12288;
  nbd.inflight = 1;
  nbd.writeLatency.observe(0.0003);
  nbd.writeLatency.observe(0.02);
  const data = new DataChannelStats();
  data.sent(DataOp.WRITE, 4096);
  data.done(4096, 0.4, false);
  const hosted: ReplicaStatusView = {
    replicaId: 'rep-h' as ReplicaId, volumeId: 'vol-2' as VolumeId, sizeBytes: 1 << 26, allocatedBytes: 1 << 20, epoch: 3, state: 'rebuilding',
    rebuild: { doneBytes: 123, totalBytes: 456, checkpoint: Buffer.alloc(0) }, createdAt: new Date(0).toISOString(),
  };
  const pool = { kind: 'file', capacity: async () => ({ totalBytes: 1000, usedBytes: 300, freeBytes: 600, provisionedBytes: 2000 }) } as unknown as PoolBackend;
  return {
    engines: () => [engine], exports: () => [nbd], pool, replicas: async () => [hosted],
    dataChannel: () => [{ replicaId: 'rep-b' as ReplicaId, volumeId: VOL, nodeId: 'n2' as NodeId, stats: data }],
    snapshots: async () => [{ sourceVolumeName: 'pg-data', sizeBytes: 10 }, { sourceVolumeName: 'pg-data', sizeBytes: 20 }, { sourceVolumeName: 'other', sizeBytes: 5 }],
  };
}

test('a scrape reports the engines, exports, data channel, hosted replicas, pool and snapshots of this node', async (t) => {
  const metrics = new NodeMetrics({ nodeName: 'n1', role: 'node', version: '9.9.9', sources: sources() });
  const s = parseSamples(await metrics.scrape());
  const vol = { volume: 'pg-data', volume_id: VOL, node: 'n1' };
  t.is(value(s, 'cairn_node_info', { role: 'node', version: '9.9.9', node: 'n1' }), 1);
  t.is(value(s, 'cairn_volume_health', { ...vol, health: 'degraded' }), 1);
  t.is(value(s, 'cairn_volume_health', { ...vol, health: 'healthy' }), 0);
  t.is(value(s, 'cairn_volume_replicas', vol), 3);
  t.is(value(s, 'cairn_volume_in_sync_replicas', vol), 2);
  t.is(value(s, 'cairn_volume_size_bytes', vol), 1 << 30);
  t.is(value(s, 'cairn_volume_nbd_connections', vol), 2);
  t.is(value(s, 'cairn_volume_requests_total', { ...vol, op: 'write' }), 10);
  t.is(value(s, 'cairn_volume_requests_total', { ...vol, op: 'read' }), 3);
  t.is(value(s, 'cairn_volume_written_bytes_total', vol), 40960);
  t.is(value(s, 'cairn_volume_read_bytes_total', vol), 12288);
  t.is(value(s, 'cairn_volume_inflight_requests', vol), 1);
  t.is(value(s, 'cairn_volume_request_duration_seconds_count', { ...vol, op: 'write' }), 2);
  t.is(value(s, 'cairn_volume_request_duration_seconds_bucket', { ...vol, op: 'write', le: '0.0005' }), 1, 'buckets are cumulative');
  t.is(value(s, 'cairn_volume_request_duration_seconds_bucket', { ...vol, op: 'write', le: '+Inf' }), 2);
  t.is(value(s, 'cairn_volume_replica_state', { ...vol, replica: 'rep-c', replica_node: 'n3', state: 'rebuilding' }), 1);
  t.is(value(s, 'cairn_volume_rebuild_done_bytes', { replica: 'rep-c' }), 1 << 20);
  t.is(value(s, 'cairn_volume_rebuild_total_bytes', { replica: 'rep-c' }), 4 << 20);
  t.is(value(s, 'cairn_volume_rebuild_bytes_per_second', { replica: 'rep-c' }), 5e6);
  t.is(value(s, 'cairn_volume_rebuild_done_bytes', { replica: 'rep-a' }), undefined, 'only rebuilding replicas have rebuild figures');
  t.is(value(s, 'cairn_replica_data_sent_bytes_total', { replica: 'rep-b', replica_node: 'n2' }), 4096);
  t.is(value(s, 'cairn_replica_data_latency_seconds_count', { replica: 'rep-b' }), 1);
  t.is(value(s, 'cairn_replica_state', { replica: 'rep-h', volume_id: 'vol-2', state: 'rebuilding' }), 1);
  t.is(value(s, 'cairn_replica_allocated_bytes', { replica: 'rep-h' }), 1 << 20);
  t.is(value(s, 'cairn_replica_rebuild_done_bytes', { replica: 'rep-h' }), 123);
  t.is(value(s, 'cairn_pool_free_bytes', { pool_kind: 'file' }), 600);
  t.is(value(s, 'cairn_pool_metadata_used_bytes'), undefined, 'a file pool has no metadata figures');
  t.is(value(s, 'cairn_volume_snapshots', { volume: 'pg-data' }), 2);
  t.is(value(s, 'cairn_volume_snapshot_bytes', { volume: 'pg-data' }), 30);
});

test('counters follow their sources from one scrape to the next, and a stopped engine\'s series go', async (t) => {
  const src = sources();
  let engines = [engine];
  const metrics = new NodeMetrics({ nodeName: 'n1', role: 'node', version: 'x', sources: { ...src, engines: () => engines } });
  const first = parseSamples(await metrics.scrape());
  t.is(value(first, 'cairn_volume_written_bytes_total', { volume: 'pg-data' }), 40960);
  engines = [];
  const second = parseSamples(await metrics.scrape());
  t.is(value(second, 'cairn_volume_written_bytes_total', { volume: 'pg-data' }), undefined);
  t.is(value(second, 'cairn_volume_health', { volume: 'pg-data', health: 'degraded' }), undefined);
});

test('a controller reports no volumes, replicas or pool: only what it has', async (t) => {
  const metrics = new NodeMetrics({ nodeName: 'ctl', role: 'controller', version: 'x', sources: { snapshots: async () => [] } });
  const s = parseSamples(await metrics.scrape());
  t.is(value(s, 'cairn_node_info', { role: 'controller' }), 1);
  t.false([...s.keys()].some((k) => /^cairn_(volume|replica|pool)_/.test(k)), [...s.keys()].filter((k) => k.startsWith('cairn_')).join('\n'));
});

test('a source that fails is left out of the scrape; the others are reported', async (t) => {
  const warned: string[] = [];
  const log = { warn: (fields: { source: string }) => warned.push(fields.source) } as unknown as ReturnType<typeof silentLogger>;
  const failing = { kind: 'dm', capacity: async () => { throw new Error('dmsetup status failed'); } } as unknown as PoolBackend;
  const metrics = new NodeMetrics({
    nodeName: 'n1', role: 'controller', version: 'x', log,
    sources: { ...sources(), pool: failing, snapshots: () => Promise.reject(new Error('etcd unreachable')) },
  });
  const s = parseSamples(await metrics.scrape());
  t.is(value(s, 'cairn_pool_total_bytes'), undefined);
  t.is(value(s, 'cairn_volume_snapshots', { volume: 'pg-data' }), undefined);
  t.is(value(s, 'cairn_volume_in_sync_replicas', { volume: 'pg-data' }), 2, 'the engines are still reported');
  t.deepEqual(warned.sort(), ['pool', 'snapshots']);
});

test('BucketHistogram counts each value in the first bucket whose bound it does not exceed', (t) => {
  const h = new BucketHistogram([1, 2]);
  for (const v of [0.5, 1, 1.5, 2, 3]) h.observe(v);
  t.deepEqual([...h.counts], [2, 2, 1]);
  t.is(h.count, 5);
  t.is(h.sum, 8);
});

test('the CSI server counts every call by method and gRPC code, through one hook', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-metrics-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const metrics = new NodeMetrics({ nodeName: 'n1', role: 'node', version: 'x', sources: {} });
  const log = silentLogger();
  const node = csiService('Node', { NodeGetInfo: { handler: () => ({ nodeId: 'n1' }) } }, { log, locks: new CsiLocks() });
  const server = await startCsiServer({
    socketPath: join(dir, 'csi.sock'), log, services: [identityService({ log, ready: () => true }), node], onCall: (m, c, s) => metrics.csiCall(m, c, s),
  });
  t.teardown(() => server.close());
  const client = await csiClient(server.socketPath);
  t.teardown(() => client.close());
  await client.identity.Probe!({});
  await client.identity.Probe!({});
  await client.node.NodeGetInfo!({});
  await client.node.NodeStageVolume!({ volumeId: 'v' });
  const s = parseSamples(await metrics.scrape());
  t.is(value(s, 'cairn_csi_calls_total', { method: 'Probe', code: 'OK' }), 2);
  t.is(value(s, 'cairn_csi_calls_total', { method: 'NodeGetInfo', code: 'OK' }), 1);
  t.is(value(s, 'cairn_csi_calls_total', { method: 'NodeStageVolume', code: 'UNIMPLEMENTED' }), 1);
  t.is(value(s, 'cairn_csi_call_duration_seconds_count', { method: 'Probe', code: 'OK' }), 2);
});

test('a dm pool reports its metadata device: used and total bytes from the thin pool\'s status', async (t) => {
  const dm = Object.assign(Object.create(DmBackend.prototype) as DmBackend, {
    kind: 'dm',
    capacity: async () => ({ totalBytes: 1 << 30, usedBytes: 1 << 20, freeBytes: (1 << 30) - (1 << 20), provisionedBytes: 1 << 31 }),
    poolStatus: async () => ({ usedMetadataBlocks: 10, totalMetadataBlocks: 1000 }),
  });
  const metrics = new NodeMetrics({ nodeName: 'n1', role: 'node', version: 'x', sources: { pool: dm } });
  const s = parseSamples(await metrics.scrape());
  t.is(value(s, 'cairn_pool_metadata_used_bytes', { pool_kind: 'dm' }), 10 * 4096);
  t.is(value(s, 'cairn_pool_metadata_total_bytes', { pool_kind: 'dm' }), 1000 * 4096);
  t.is(value(s, 'cairn_pool_total_bytes', { pool_kind: 'dm' }), 1 << 30);
});
