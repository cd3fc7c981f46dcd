/**
 * What a node reports of the volumes whose engine runs on it: NBD requests, bytes,
 * latencies and in-flight requests (the export's counters), health and replica counts, and
 * each replica as the engine sees it (state, rebuild progress and rate, what the data
 * channel sent it). Every value is read at scrape time from `NodeView`.
 */
import type { Registry } from 'prom-client';
import type { BucketHistogram } from '../../common/histogram.js';
import type { RunningEngineView } from '../../engine/engine-types.js';
import { counterFamily, gaugeFamily, histogramFamily, type Labels, type Sample } from './families.js';
import type { NodeView } from './node-view.js';

const VOLUME = ['volume', 'volume_id'] as const;
const HEALTH = ['healthy', 'degraded', 'faulted'] as const;
const REPLICA_STATES = ['in-sync', 'rebuilding', 'faulted'] as const;

const volumeLabels = (e: RunningEngineView): Labels => ({ volume: e.name, volume_id: e.volumeId });

/** healthy with every replica the engine has in sync, faulted with none, degraded between. */
export function engineHealth(e: RunningEngineView): (typeof HEALTH)[number] {
  const inSync = e.replicas.filter((r) => r.state === 'in-sync').length;
  if (inSync === 0) return 'faulted';
  return inSync < e.replicas.length ? 'degraded' : 'healthy';
}

export function registerVolumeFamilies(registry: Registry, view: () => NodeView): void {
  const perEngine = (value: (e: RunningEngineView) => number) => (): Sample[] => view().engines.map((e) => ({ labels: volumeLabels(e), value: value(e) }));
  /** The export's counters of each engine served over NBD here. */
  const perExport = (extra: Labels, value: (s: NonNullable<ReturnType<NodeView['exportOf']>>) => number) => (): Sample[] =>
    view().engines.flatMap((e) => {
      const s = view().exportOf(e.name);
      return s ? [{ labels: { ...volumeLabels(e), ...extra }, value: value(s) }] : [];
    });

  gaugeFamily(registry, { name: 'cairn_volume_size_bytes', help: 'Virtual size of each volume whose engine runs on this node.', labelNames: VOLUME, samples: perEngine((e) => e.sizeBytes) });
  gaugeFamily(registry, {
    name: 'cairn_volume_health', help: 'Health of each volume whose engine runs on this node: 1 for the state it is in (healthy, degraded or faulted), 0 for the others.',
    labelNames: [...VOLUME, 'health'],
    samples: () => view().engines.flatMap((e) => HEALTH.map((h) => ({ labels: { ...volumeLabels(e), health: h }, value: engineHealth(e) === h ? 1 : 0 }))),
  });
  gaugeFamily(registry, { name: 'cairn_volume_replicas', help: 'Replicas the volume\'s engine has (in sync or not).', labelNames: VOLUME, samples: perEngine((e) => e.replicas.length) });
  gaugeFamily(registry, {
    name: 'cairn_volume_in_sync_replicas', help: 'Replicas of the volume in the in-sync set.', labelNames: VOLUME,
    samples: perEngine((e) => e.replicas.filter((r) => r.state === 'in-sync').length),
  });
  gaugeFamily(registry, { name: 'cairn_volume_nbd_connections', help: 'Open NBD client connections to the volume.', labelNames: VOLUME, samples: () => perExport({}, (s) => s.connections)() });

  const ops = [['read', 'readRequests'], ['write', 'writeRequests'], ['flush', 'flushRequests'], ['trim', 'trimRequests'], ['write_zeroes', 'writeZeroesRequests']] as const;
  counterFamily(registry, {
    name: 'cairn_volume_requests_total', help: 'NBD requests run on the volume, by op (read, write, flush, trim, write_zeroes).', labelNames: [...VOLUME, 'op'],
    samples: () => ops.flatMap(([op, key]) => perExport({ op }, (s) => s[key])()),
  });
  counterFamily(registry, { name: 'cairn_volume_read_bytes_total', help: 'Bytes read from the volume over NBD.', labelNames: VOLUME, samples: perExport({}, (s) => s.bytesRead) });
  counterFamily(registry, { name: 'cairn_volume_written_bytes_total', help: 'Bytes written to the volume over NBD.', labelNames: VOLUME, samples: perExport({}, (s) => s.bytesWritten) });
  counterFamily(registry, { name: 'cairn_volume_io_errors_total', help: 'NBD requests on the volume that failed on the device.', labelNames: VOLUME, samples: perExport({}, (s) => s.ioErrors) });
  gaugeFamily(registry, { name: 'cairn_volume_inflight_requests', help: 'NBD requests on the volume running now.', labelNames: VOLUME, samples: perExport({}, (s) => s.inflight) });
  const latencies = [['read', 'readLatency'], ['write', 'writeLatency'], ['flush', 'flushLatency']] as const;
  histogramFamily(registry, {
    name: 'cairn_volume_request_duration_seconds', help: 'Time from an NBD request\'s start to its reply, by op (read, write, flush).', labelNames: [...VOLUME, 'op'],
    samples: () => view().engines.flatMap((e) => {
      const s = view().exportOf(e.name);
      return s ? latencies.map(([op, key]) => ({ labels: { ...volumeLabels(e), op }, histogram: s[key] as BucketHistogram })) : [];
    }),
  });
  registerEngineReplicaFamilies(registry, view);
}

/** Each replica of the engines here, wherever it lives (`replica_node`). */
function registerEngineReplicaFamilies(registry: Registry, view: () => NodeView): void {
  const labelNames = [...VOLUME, 'replica', 'replica_node'];
  const replicas = () => view().engines.flatMap((e) => e.replicas.map((r) => ({ e, r, labels: { ...volumeLabels(e), replica: r.replicaId, replica_node: r.nodeId } })));
  gaugeFamily(registry, {
    name: 'cairn_volume_replica_state', help: 'State of each replica as the volume\'s engine sees it: 1 for its state (in-sync, rebuilding or faulted), 0 for the others.',
    labelNames: [...labelNames, 'state'],
    samples: () => replicas().flatMap(({ r, labels }) => REPLICA_STATES.map((state) => ({ labels: { ...labels, state }, value: r.state === state ? 1 : 0 }))),
  });
  gaugeFamily(registry, { name: 'cairn_volume_replica_dirty_bytes', help: 'Bytes of the regions a replica out of sync has missed (what a rebuild copies).', labelNames, samples: () => replicas().map(({ r, labels }) => ({ labels, value: r.dirtyBytes })) });
  const rebuilding = () => replicas().filter(({ r }) => r.rebuild);
  gaugeFamily(registry, { name: 'cairn_volume_rebuild_done_bytes', help: 'Bytes a rebuilding replica has been copied so far in this rebuild.', labelNames, samples: () => rebuilding().map(({ r, labels }) => ({ labels, value: r.rebuild!.doneBytes })) });
  gaugeFamily(registry, { name: 'cairn_volume_rebuild_total_bytes', help: 'Bytes this rebuild of the replica copies in all.', labelNames, samples: () => rebuilding().map(({ r, labels }) => ({ labels, value: r.rebuild!.totalBytes })) });
  gaugeFamily(registry, { name: 'cairn_volume_rebuild_bytes_per_second', help: 'Copy rate of a rebuilding replica.', labelNames, samples: () => rebuilding().map(({ r, labels }) => ({ labels, value: r.rebuild!.bytesPerSecond })) });
}
