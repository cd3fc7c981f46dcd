/**
 * Timing a replica's return: the non-engine replica's node is killed (kill -9), the volume
 * is written while it is away (so the engine's dirty-region map says what it missed), and
 * the node is started again; the engine then rebuilds the replica from its map. One
 * `RecoverySample` splits the time from the restart to "healthy" into its phases, from the
 * bench's clock and the engine's own log events ('replica rebuild copying' / 'replica
 * rebuild finished' and others, pino `time` in epoch ms on the same machine).
 *
 * Also the reference: `cp --sparse=never` of a file of the same size on the same
 * filesystem, followed by `sync` of the copy (an fsync of that file).
 */
import { randomFillSync } from 'node:crypto';
import { open, readFile, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { ApiClient, VolumeMessage } from '../../src/cli/api-client.js';
import type { Cluster } from '../../test/helpers/cluster.js';
import type { LogEvent } from '../../test/helpers/daemon.js';
import { run } from '../../test/helpers/run.js';
import { NbdBlockClient } from '../../test/helpers/verified-writer.js';
import { cpuSeconds } from './servers.js';
import type { ClusterProfiler, ProfiledProcess } from './profiling.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface BenchVolumeRef {
  name: string;
  uri: string;
  sizeBytes: number;
  regionBytes: number;
  /** The node of the replica that is killed and comes back (not the engine's). */
  targetNode: number;
  targetReplica: string;
}

export interface RecoverySample {
  kind: 'full rebuild' | 'resync';
  /** Bytes the engine marked dirty for the replica before it came back. */
  dirtyBytes: number;
  /** Restart of the node until its /readyz answers. */
  startupMs: number;
  /** /readyz until the engine logged 'replica rebuild starting' (its reconnect, retried every ~2 s). */
  reconnectMs: number | undefined;
  /** The engine's own duration of the rebuild (copy, checkpoints, checksum comparison). */
  copyMs: number | undefined;
  /** Bytes of the regions the rebuild brought up to date (data copied plus holes discarded). */
  doneBytes: number | undefined;
  copiedBytes: number | undefined;
  zeroedBytes: number | undefined;
  /** 'replica rebuild finished' until the engine logged that the replica rejoined the in-sync set (the store's compare-and-swap). */
  finishToRejoinMs: number | undefined;
  /** 'replica rebuild finished' until `volume inspect` showed the volume healthy (includes the 100 ms polling). */
  finishToHealthyMs: number | undefined;
  /** /readyz of the node until healthy. */
  readyToHealthyMs: number;
  /** Restart until healthy: everything. */
  totalMs: number;
  /** CPU seconds of every cairnd from /readyz of the node until healthy. */
  cpuSec: number;
  load: number;
  profiles: string[];
}

/** Every running cairnd of the cluster, by node name and pid. */
export function cairndProcesses(cluster: Cluster): ProfiledProcess[] {
  const out: ProfiledProcess[] = [];
  for (let i = 0; i < cluster.size; i++) if (cluster.node(i).running) out.push({ node: cluster.nodeName(i), pid: cluster.node(i).pid });
  return out;
}

/** User + system CPU seconds of every running cairnd of the cluster so far. */
export async function clusterCpuSeconds(cluster: Cluster): Promise<number> {
  let sum = 0;
  for (const p of cairndProcesses(cluster)) sum += await cpuSeconds(p.pid).catch(() => 0);
  return sum;
}

/** CPU seconds of this process's children that have exited and been waited for. */
async function reapedChildrenCpuSeconds(): Promise<number> {
  const text = await readFile('/proc/self/stat', 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

/** A file of `sizeBytes` random bytes (no region of it is zeros). */
export async function writeRandomFile(path: string, sizeBytes: number): Promise<void> {
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(4 << 20);
  for (let at = 0; at < sizeBytes; at += chunk.length) {
    randomFillSync(chunk);
    await fh.write(chunk, 0, Math.min(chunk.length, sizeBytes - at), at);
  }
  await fh.datasync();
  await fh.close();
}

/** Copies a file over the whole export (nbdcopy, flushed at the end). */
export async function copyToExport(file: string, uri: string): Promise<void> {
  await run('nbdcopy', ['--flush', file, uri], { timeoutMs: 600_000 });
}

export async function syncAll(): Promise<void> {
  await run('sync', [], { timeoutMs: 600_000 });
}

export interface CpSample {
  ms: number;
  cpuSec: number;
  load: number;
}

/**
 * `cp --sparse=never src dst` then `sync dst` (an fsync of that file only: a plain `sync`
 * would also wait for whatever else the machine has dirty). Before it, dst is removed and
 * everything is synced.
 */
export async function timeCp(src: string, dst: string): Promise<CpSample> {
  await rm(dst, { force: true });
  await syncAll();
  const cpu0 = await reapedChildrenCpuSeconds();
  const t0 = performance.now();
  await run('cp', ['--sparse=never', src, dst], { timeoutMs: 600_000 });
  await run('sync', [dst], { timeoutMs: 600_000 });
  const ms = performance.now() - t0;
  const cpuSec = (await reapedChildrenCpuSeconds()) - cpu0;
  await rm(dst, { force: true });
  return { ms, cpuSec, load: loadavg()[0]! };
}

function replicaOf(v: VolumeMessage, id: string): VolumeMessage['replicas'][number] {
  const r = v.replicas.find((x) => x.id === id);
  if (!r) throw new Error(`volume ${v.name} has no replica ${id} any more: ${JSON.stringify(v.replicas)}`);
  return r;
}

function isHealthy(v: VolumeMessage): boolean {
  return v.health === 'healthy' && v.replicas.every((r) => r.state === 'in-sync');
}

/** Polls the engine node's API until the volume is healthy (every replica in sync); returns what it saw then. */
export async function waitHealthy(api: ApiClient, name: string, timeoutMs: number, intervalMs = 100): Promise<VolumeMessage> {
  const deadline = Date.now() + timeoutMs;
  let last = 'nothing yet';
  for (;;) {
    try {
      const v = await api.getVolume(name);
      if (isHealthy(v)) return v;
      last = JSON.stringify({ health: v.health, replicas: v.replicas.map((r) => ({ node: r.nodeName, state: r.state, rebuild: r.rebuild, dirtyBytes: r.dirtyBytes })) });
    } catch (err) {
      last = `error: ${err instanceof Error ? err.message : String(err)}`;
    }
    if (Date.now() > deadline) throw new Error(`volume ${name} not healthy after ${timeoutMs} ms; last seen: ${last}`);
    await sleep(intervalMs);
  }
}

export interface RecoveryContext {
  cluster: Cluster;
  /** API of node 0, the engine's node. */
  api: ApiClient;
  profiler: ClusterProfiler | undefined;
  timeoutMs: number;
}

/**
 * Kills the target replica's node, runs `dirty` (writes while it is away), restarts the
 * node and times its return to the in-sync set. With `profileLabel`, the engine's and the
 * returning node's JS threads are profiled from the restart (resp. its /readyz) to healthy.
 */
export async function measureRecovery(ctx: RecoveryContext, vol: BenchVolumeRef, kind: RecoverySample['kind'], dirty: () => Promise<void>, profileLabel?: string): Promise<RecoverySample> {
  const { cluster, api } = ctx;
  await cluster.crash(vol.targetNode);
  await dirty();
  // The engine must have seen the replica go (its writes failed): otherwise the map is not what we think.
  const away = await api.getVolume(vol.name);
  const before = replicaOf(away, vol.targetReplica);
  if (before.state === 'in-sync') throw new Error(`the engine still counts replica ${vol.targetReplica} in sync after writes while its node was down`);
  await syncAll();
  const mark = cluster.node(0).logMark();
  const engineProc: ProfiledProcess = { node: cluster.nodeName(0), pid: cluster.node(0).pid };
  if (profileLabel) ctx.profiler?.start([engineProc]);
  const t0 = performance.now();
  await cluster.restart(vol.targetNode);
  const t1 = performance.now();
  const readyWall = Date.now();
  const targetProc: ProfiledProcess = { node: cluster.nodeName(vol.targetNode), pid: cluster.node(vol.targetNode).pid };
  if (profileLabel) ctx.profiler?.start([targetProc]);
  const cpu0 = await clusterCpuSeconds(cluster);
  await waitHealthy(api, vol.name, ctx.timeoutMs);
  const t2 = performance.now();
  const healthyWall = Date.now();
  const cpuSec = (await clusterCpuSeconds(cluster)) - cpu0;
  const profiles = profileLabel && ctx.profiler ? await ctx.profiler.stop([engineProc, targetProc], profileLabel) : [];
  const events = cluster.events(0, mark).filter((e) => e.replica === vol.targetReplica);
  // The engine logs 'replica rebuild starting' once the replica is back in its write path
  // and its map is settled; rebuild.ts logs 'copying' after StartRebuild and 'finished' with
  // its own duration; the engine logs 'rejoined' once the store says in sync again.
  const starting = events.find((e) => e.msg === 'replica rebuild starting') ?? events.find((e) => e.msg === 'replica rebuild copying');
  const finished = events.find((e) => e.msg === 'replica rebuild finished');
  const rejoined = events.find((e) => e.msg === 'replica rebuilt; it rejoined the in-sync set');
  if (!finished) {
    console.warn(`  note: no 'replica rebuild finished' event for replica ${vol.targetReplica} in node-0's log; copy figures come from the bench's clock only. Events seen: ${[...new Set(events.map((e) => String(e.msg)))].join(', ')}`);
  }
  const num = (e: LogEvent | undefined, key: string): number | undefined => (typeof e?.[key] === 'number' ? e[key] : undefined);
  const startingAt = num(starting, 'time');
  const finishedAt = num(finished, 'time');
  const rejoinedAt = num(rejoined, 'time');
  return {
    kind, dirtyBytes: before.dirtyBytes,
    startupMs: t1 - t0,
    reconnectMs: startingAt !== undefined ? startingAt - readyWall : undefined,
    copyMs: num(finished, 'durationMs'),
    doneBytes: num(finished, 'doneBytes') ?? num(finished, 'copiedBytes'),
    copiedBytes: num(finished, 'copiedBytes'),
    zeroedBytes: num(finished, 'zeroedBytes'),
    finishToRejoinMs: finishedAt !== undefined && rejoinedAt !== undefined ? rejoinedAt - finishedAt : undefined,
    finishToHealthyMs: finishedAt !== undefined ? healthyWall - finishedAt : undefined,
    readyToHealthyMs: t2 - t1,
    totalMs: t2 - t0,
    cpuSec, load: loadavg()[0]!, profiles,
  };
}

/** Writes random data over `count` whole regions spread evenly over the volume (shifted by `rep`), then flushes. */
export async function dirtyRegions(vol: BenchVolumeRef, count: number, rep: number): Promise<void> {
  const regions = Math.ceil(vol.sizeBytes / vol.regionBytes);
  const step = Math.max(1, Math.floor(regions / count));
  const client = await NbdBlockClient.connectUri(vol.uri, { ioTimeoutMs: 120_000 });
  try {
    const data = Buffer.alloc(vol.regionBytes);
    const writes: Promise<void>[] = [];
    for (let k = 0; k < count; k++) {
      const region = (k * step + rep) % regions;
      const offset = region * vol.regionBytes;
      randomFillSync(data);
      writes.push(client.write(offset, Buffer.from(data.subarray(0, Math.min(vol.regionBytes, vol.sizeBytes - offset)))));
    }
    await Promise.all(writes);
    await client.flush();
  } finally {
    await client.close();
  }
}

export function describeSample(s: RecoverySample): string {
  const ms = (v: number | undefined): string => (v === undefined ? '?' : `${Math.round(v)} ms`);
  const mb = (v: number | undefined): string => (v === undefined ? '?' : `${(v / 2 ** 20).toFixed(0)} MiB`);
  return `dirty ${mb(s.dirtyBytes)}; node start-up ${ms(s.startupMs)}, reconnect ${ms(s.reconnectMs)}, engine rebuild ${ms(s.copyMs)} `
    + `(${mb(s.doneBytes)} brought up to date: copied ${mb(s.copiedBytes)}, of it zeroes ${mb(s.zeroedBytes)}), finished→rejoined ${ms(s.finishToRejoinMs)}, finished→healthy seen ${ms(s.finishToHealthyMs)}; `
    + `ready→healthy ${ms(s.readyToHealthyMs)}, restart→healthy ${ms(s.totalMs)}; cairnd CPU ${s.cpuSec.toFixed(1)} s; load ${s.load.toFixed(1)}`;
}
