/**
 * /healthz (the process is alive), /readyz (recovery finished, serving) and /metrics
 * (Prometheus text format) for kubelet probes and Prometheus, and in the node role /drain
 * (node-drain.ts), which the DaemonSet's preStop calls.
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from '../common/log.js';
import type { DataChannelReplicaStats } from '../cluster/replica-connector.js';
import type { SnapshotService } from '../cluster/snapshot-types.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import { barrierPauses } from '../engine/barrier-stats.js';
import { LATENCY_BUCKETS_S } from '../engine/data-stats.js';
import type { NodeDrain } from './node-drain.js';

export interface HttpContext {
  volumes: VolumeApi;
  /** Snapshot counts and bytes per source volume come from it; none without. */
  snapshots?: Pick<SnapshotService, 'list'>;
  isReady: () => boolean;
  connectionCount: () => number;
  /** The data channel's counters per remote replica this node's engines reach. */
  dataChannel?: () => DataChannelReplicaStats[];
  /** The node role's preStop drain (/drain); absent in the controller role. */
  drain?: Pick<NodeDrain, 'draining' | 'drain'>;
  log: Logger;
}

async function metrics(ctx: HttpContext): Promise<string> {
  const capacity = await ctx.volumes.capacity();
  const volumes = await ctx.volumes.list();
  const lines: string[] = [];
  const gauge = (name: string, help: string, samples: [string, number][]): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  gauge('cairn_pool_total_bytes', 'Bytes the pool can hold.', [['', capacity.totalBytes]]);
  gauge('cairn_pool_used_bytes', 'Bytes allocated to devices.', [['', capacity.usedBytes]]);
  gauge('cairn_pool_free_bytes', 'Bytes still free in the pool.', [['', capacity.freeBytes]]);
  gauge('cairn_pool_provisioned_bytes', 'Sum of the devices\' virtual sizes.', [['', capacity.provisionedBytes]]);
  gauge('cairn_volume_size_bytes', 'Virtual size of each volume.', volumes.map((v) => [`{volume="${v.name}"}`, v.sizeBytes]));
  gauge('cairn_volume_allocated_bytes', 'Allocated bytes of each volume.', volumes.map((v) => [`{volume="${v.name}"}`, v.allocatedBytes]));
  gauge('cairn_volume_healthy', '1 when the volume is healthy.', volumes.map((v) => [`{volume="${v.name}"}`, v.health === 'healthy' ? 1 : 0]));
  gauge('cairn_volume_health', 'The volume\'s health: 1 for the state it is in (healthy, degraded or faulted).', volumes.flatMap((v) =>
    (['healthy', 'degraded', 'faulted'] as const).map((h): [string, number] => [`{volume="${v.name}",health="${h}"}`, v.health === h ? 1 : 0])));
  gauge('cairn_volume_in_sync_replicas', 'Replicas of the volume in the in-sync set.', volumes.map((v) => [`{volume="${v.name}"}`, v.replicas.filter((r) => r.state === 'in-sync').length]));
  gauge('cairn_volume_replicas_wanted', 'Replicas the volume should have.', volumes.map((v) => [`{volume="${v.name}"}`, v.replicasWanted]));
  const rebuilding = volumes.flatMap((v) => v.replicas.filter((r) => r.rebuild).map((r) => ({ v, r, p: r.rebuild! })));
  gauge('cairn_replica_rebuild_done_bytes', 'Bytes a rebuilding replica has copied so far.', rebuilding.map(({ v, r, p }) => [`{volume="${v.name}",replica="${r.id}"}`, p.doneBytes]));
  gauge('cairn_replica_rebuild_total_bytes', 'Bytes a rebuilding replica copies in all.', rebuilding.map(({ v, r, p }) => [`{volume="${v.name}",replica="${r.id}"}`, p.totalBytes]));
  gauge('cairn_replica_rebuild_bytes_per_second', 'Copy rate of a rebuilding replica.', rebuilding.map(({ v, r, p }) => [`{volume="${v.name}",replica="${r.id}"}`, p.bytesPerSecond]));
  if (ctx.snapshots) {
    const perVolume = new Map<string, { count: number; bytes: number }>();
    for (const s of await ctx.snapshots.list()) {
      const e = perVolume.get(s.sourceVolumeName) ?? { count: 0, bytes: 0 };
      e.count++;
      e.bytes += s.sizeBytes;
      perVolume.set(s.sourceVolumeName, e);
    }
    const rows = [...perVolume].sort(([a], [b]) => (a < b ? -1 : 1));
    gauge('cairn_volume_snapshots', 'Snapshots of each source volume (deleted volumes included while their snapshots remain).', rows.map(([v, e]) => [`{volume="${v}"}`, e.count]));
    gauge('cairn_volume_snapshot_bytes', 'Sum of the sizes of the snapshots of each source volume.', rows.map(([v, e]) => [`{volume="${v}"}`, e.bytes]));
  }
  gauge('cairn_nbd_connections', 'Open NBD client connections.', [['', ctx.connectionCount()]]);
  dataChannelMetrics(lines, ctx.dataChannel?.() ?? []);
  lines.push(...barrierPauses.prometheusLines());
  return `${lines.join('\n')}\n`;
}

/** Counters, the in-flight gauge and the latency histogram of the data channel, per remote replica. */
function dataChannelMetrics(lines: string[], replicas: DataChannelReplicaStats[]): void {
  const label = (r: DataChannelReplicaStats): string => `replica="${r.replicaId}",volume_id="${r.volumeId}",node="${r.nodeId}"`;
  const family = (name: string, type: string, help: string, value: (r: DataChannelReplicaStats) => number): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const r of replicas) lines.push(`${name}{${label(r)}} ${value(r)}`);
  };
  family('cairn_replica_data_requests_total', 'counter', 'Requests sent to a remote replica on the data channel.', (r) => r.stats.requests);
  family('cairn_replica_data_sent_bytes_total', 'counter', 'Write payload bytes sent to a remote replica.', (r) => r.stats.bytesSent);
  family('cairn_replica_data_failed_requests_total', 'counter', 'Requests to a remote replica that failed (refused, or the connection was lost).', (r) => r.stats.failures);
  family('cairn_replica_data_inflight_requests', 'gauge', 'Requests to a remote replica waiting for their reply.', (r) => r.stats.inflight);
  const name = 'cairn_replica_data_latency_seconds';
  lines.push(`# HELP ${name} Time from sending a request to a remote replica to its reply.`, `# TYPE ${name} histogram`);
  for (const r of replicas) {
    let cumulative = 0;
    LATENCY_BUCKETS_S.forEach((le, i) => {
      cumulative += r.stats.latency[i]!;
      lines.push(`${name}_bucket{${label(r)},le="${le}"} ${cumulative}`);
    });
    cumulative += r.stats.latency[LATENCY_BUCKETS_S.length]!;
    lines.push(`${name}_bucket{${label(r)},le="+Inf"} ${cumulative}`, `${name}_sum{${label(r)}} ${r.stats.latencySumS}`, `${name}_count{${label(r)}} ${cumulative}`);
  }
}

export async function startHttpServer(listen: string, ctx: HttpContext): Promise<Server> {
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon);
  const port = Number(listen.slice(colon + 1));
  const server = createServer((req, res) => {
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      res.writeHead(status, { 'content-type': type }).end(body);
    };
    if (req.url === '/healthz') return reply(200, 'ok\n');
    if (req.url === '/readyz') {
      if (ctx.drain?.draining) return reply(503, 'draining\n');
      return ctx.isReady() ? reply(200, 'ready\n') : reply(503, 'recovering\n');
    }
    if (req.url === '/drain' && ctx.drain) {
      // GET too: a preStop httpGet hook can only GET. Draining is idempotent.
      ctx.drain.drain().then((r) => reply(r.failed.length > 0 ? 500 : 200, `${JSON.stringify(r)}\n`, 'application/json'), (err: unknown) => {
        ctx.log.error({ err }, 'drain failed');
        reply(500, `drain failed: ${(err as Error).message}\n`);
      });
      return;
    }
    if (req.url === '/metrics') {
      metrics(ctx).then((body) => reply(200, body, 'text/plain; version=0.0.4'), (err: unknown) => {
        ctx.log.error({ err }, 'metrics failed');
        reply(500, 'metrics failed\n');
      });
      return;
    }
    reply(404, `not found: try /healthz, /readyz, /metrics${ctx.drain ? ' or /drain' : ''}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
