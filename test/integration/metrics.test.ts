/**
 * /metrics of real cairnd processes (three nodes over etcd, a volume of two replicas):
 * scraped during a replicated write load through qemu-io and during a rebuild. Checks that
 * the bytes counted are the bytes written, that each node reports only its own engines,
 * replicas and pool, that rebuild progress shows while the rebuild runs, that CSI calls and
 * snapshots are counted, and that every metric docs/metrics.md lists has samples (except
 * the dm pool's metadata figures: these nodes run file pools; test/unit/node-metrics.test.ts
 * covers those).
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, waitFor } from '../helpers/cluster.js';
import { csiClient } from '../helpers/csi-client.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { familiesWithSamples, matching, parseSamples, value } from '../helpers/prom-text.js';
import { run } from '../helpers/run.js';

const test = anyTest as TestFn;
const missing = (await etcdMissingReason()) ?? (await run('qemu-io', ['--version']).then(() => undefined, () => 'qemu-io is not installed (apt-get install qemu-utils)'));
const MiB = 1 << 20;

/** Every metric name in the table of docs/metrics.md. */
function documentedMetrics(): string[] {
  const doc = readFileSync(new URL('../../docs/metrics.md', import.meta.url), 'utf8');
  return [...doc.matchAll(/^\| `(cairn_[a-z_]+)` \|/gm)].map((m) => m[1]!);
}

async function scrape(c: Cluster, i: number): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${c.node(i).httpPort}/metrics`);
  if (!res.ok) throw new Error(`node-${i} /metrics answered ${res.status}`);
  return parseSamples(await res.text());
}

/** qemu-io commands on the volume's NBD export (the engine's node). */
async function qemuIo(t: ExecutionContext, uri: string, commands: string[]): Promise<void> {
  const out = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
  t.notRegex(out, /error|failed|pattern verification/i, out);
}

if (prerequisitesMet('metrics tests', missing)) {
  test.serial('each node reports what it serves: bytes written, replicas, a rebuild in progress, CSI calls', async (t) => {
    t.timeout(300_000);
    // 8 MiB/s: rebuilding the 64 MiB volume takes about 8 s, time to see it under way.
    const c = await Cluster.start({ nodes: 3, flags: { '--rebuild-rate': '8MiB' } });
    t.teardown(() => c.destroy({ failed: !t.passed }));
    await c.createVolume('m', '64MiB', 2, 0, ['--prefer-node', 'node-0']);
    const { uri } = await c.exportVolume(0, 'm');
    const v = await c.volume('m', 0);
    const other = [1, 2].find((i) => Cluster.replicaOn(v, i))!;
    const idle = other === 1 ? 2 : 1;
    const replicaHere = Cluster.replicaOn(v, 0)!.id;
    const replicaThere = Cluster.replicaOn(v, other)!.id;
    const seen = new Set<string>();
    const collect = async (i: number): Promise<Map<string, number>> => {
      const s = await scrape(c, i);
      for (const f of familiesWithSamples(s)) seen.add(f);
      return s;
    };

    // A replicated write load: 16 MiB written (in 1 MiB requests, 4 in flight), 4 MiB read.
    await qemuIo(t, uri, ['aio_write -P 0x5a 0 4M', 'aio_write -P 0x5b 4M 4M', 'aio_write -P 0x5c 8M 4M', 'aio_write -P 0x5d 12M 4M', 'aio_flush', 'read -P 0x5a 0 4M', 'flush']);
    const vol = { volume: 'm', volume_id: v.id, node: 'node-0' };
    let s0 = await collect(0);
    t.is(value(s0, 'cairn_volume_written_bytes_total', vol), 16 * MiB, 'bytes written counted on the engine\'s node');
    t.is(value(s0, 'cairn_volume_read_bytes_total', vol), 4 * MiB);
    const writes = value(s0, 'cairn_volume_requests_total', { ...vol, op: 'write' })!;
    t.true(writes >= 4, `write requests: ${writes}`);
    t.is(value(s0, 'cairn_volume_request_duration_seconds_count', { ...vol, op: 'write' }), writes, 'every write timed');
    t.true(value(s0, 'cairn_volume_request_duration_seconds_sum', { ...vol, op: 'write' })! > 0);
    t.true(value(s0, 'cairn_volume_requests_total', { ...vol, op: 'flush' })! >= 2);
    t.is(value(s0, 'cairn_volume_inflight_requests', vol), 0, 'nothing in flight once qemu-io is done');
    t.is(value(s0, 'cairn_volume_health', { ...vol, health: 'healthy' }), 1);
    t.is(value(s0, 'cairn_volume_in_sync_replicas', vol), 2);
    t.is(value(s0, 'cairn_volume_replicas', vol), 2);
    t.is(value(s0, 'cairn_volume_size_bytes', vol), 64 * MiB);
    t.is(value(s0, 'cairn_replica_data_sent_bytes_total', { replica: replicaThere, replica_node: `node-${other}` }), 16 * MiB, 'the remote replica got every byte');
    t.is(value(s0, 'cairn_replica_state', { replica: replicaHere, state: 'in-sync', node: 'node-0' }), 1);

    // Only the engine's node reports the volume; each replica's node reports its replica; the third node neither.
    const sOther = await collect(other);
    const sIdle = await collect(idle);
    t.deepEqual(matching(sOther, 'cairn_volume_written_bytes_total'), [], 'no engine on the replica\'s node');
    t.is(value(sOther, 'cairn_replica_state', { replica: replicaThere, state: 'in-sync', node: `node-${other}` }), 1);
    t.is(value(sOther, 'cairn_replica_state', { replica: replicaHere }), undefined, 'not the replica of another node');
    t.deepEqual([...sIdle.keys()].filter((k) => k.includes(v.id)), [], 'the third node reports nothing of the volume');
    for (const [i, s] of [[0, s0], [other, sOther], [idle, sIdle]] as const) {
      const total = value(s, 'cairn_pool_total_bytes', { node: `node-${i}` })!;
      const free = value(s, 'cairn_pool_free_bytes', { node: `node-${i}` })!;
      t.true(total > 0 && free > 0 && free <= total, `pool of node-${i}: ${free} free of ${total}`);
      t.is(value(s, 'cairn_node_info', { node: `node-${i}` }), 1);
    }

    // A snapshot (the write barrier's pause) and CSI calls on node 0.
    const snap = await c.ctl(0, ['snapshot', 'create', 'm-snap', '--volume', 'm']);
    t.is(snap.exitCode, 0, snap.stderr);
    const csi = await csiClient(join(c.node(0).dataDir, 'csi.sock'));
    t.teardown(() => csi.close());
    await csi.identity.Probe!({});
    await csi.identity.GetPluginInfo!({});
    await csi.controller.DeleteVolume!({});
    s0 = await collect(0);
    t.true(value(s0, 'cairn_snapshot_barrier_pause_seconds_count')! >= 1);
    t.is(value(s0, 'cairn_volume_snapshots', { volume: 'm' }), 1);
    t.is(value(s0, 'cairn_volume_snapshot_bytes', { volume: 'm' }), 64 * MiB);
    t.is(value(s0, 'cairn_csi_calls_total', { method: 'Probe', code: 'OK' }), 1);
    t.is(value(s0, 'cairn_csi_calls_total', { method: 'DeleteVolume', code: 'INVALID_ARGUMENT' }), 1);

    // The replica's node dies; writes go on (every region dirty for it), then it comes back and is rebuilt.
    await c.crash(other);
    await qemuIo(t, uri, ['write -P 0x6a 0 64M', 'flush']);
    s0 = await waitFor(() => collect(0), (s) => value(s, 'cairn_volume_health', { ...vol, health: 'degraded' }) === 1, 'node 0 to report the volume degraded');
    t.is(value(s0, 'cairn_volume_replica_state', { ...vol, replica: replicaThere, replica_node: `node-${other}`, state: 'faulted' }), 1);
    t.is(value(s0, 'cairn_volume_in_sync_replicas', vol), 1);
    t.is(value(s0, 'cairn_volume_replica_dirty_bytes', { replica: replicaThere }), 64 * MiB);
    t.is(value(s0, 'cairn_volume_written_bytes_total', vol), 80 * MiB, 'bytes written: 16 MiB, then 64 MiB');

    await c.restart(other);
    const during = await waitFor(() => collect(0), (s) => {
      const done = value(s, 'cairn_volume_rebuild_done_bytes', { replica: replicaThere });
      return done !== undefined && done > 0 && done < 64 * MiB && value(s, 'cairn_volume_rebuild_bytes_per_second', { replica: replicaThere })! > 0;
    }, 'node 0 to report the rebuild under way', 60_000, 100);
    t.is(value(during, 'cairn_volume_rebuild_total_bytes', { replica: replicaThere }), 64 * MiB);
    t.is(value(during, 'cairn_volume_replica_state', { replica: replicaThere, state: 'rebuilding' }), 1);
    const hostDuring = await collect(other);
    t.is(value(hostDuring, 'cairn_replica_state', { replica: replicaThere, state: 'rebuilding' }), 1, 'the replica\'s node records the rebuild');
    t.true(value(hostDuring, 'cairn_replica_rebuild_total_bytes', { replica: replicaThere })! > 0);
    t.true(value(hostDuring, 'cairn_replica_rebuild_done_bytes', { replica: replicaThere }) !== undefined);

    await c.waitHealth('m', 'healthy', 120_000, 0);
    s0 = await waitFor(() => collect(0), (s) => value(s, 'cairn_volume_health', { ...vol, health: 'healthy' }) === 1, 'node 0 to report the volume healthy');
    t.deepEqual(matching(s0, 'cairn_volume_rebuild_done_bytes'), [], 'no rebuild figures once in sync');
    t.is(value(s0, 'cairn_volume_in_sync_replicas', vol), 2);
    await collect(other);

    const skipped = new Set(['cairn_pool_metadata_used_bytes', 'cairn_pool_metadata_total_bytes']);
    const absent = documentedMetrics().filter((m) => !skipped.has(m) && !seen.has(m));
    t.deepEqual(absent, [], 'documented metrics without a sample in any scrape');
    t.true(documentedMetrics().length >= 38, `${documentedMetrics().length} metrics documented`);
  });
}
