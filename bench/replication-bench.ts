/**
 * Replication benchmark (issue 4), all in one run on loopback peers: a real 3-node cluster
 * (test/helpers/cluster.ts: one etcd, three cairnd of the compiled dist/, mutual TLS
 * between peers) and fio's nbd engine against the volume's export on node-0, as bench:nbd.
 *
 * 1. Throughput: 4k random write at QD32 and 1M sequential write at QD8 on volumes of
 *    1 GiB with 1, 2 and 3 replicas (one of them always on node-0, the engine's node), and
 *    `nbdkit file` on a file of the same size as the single-node anchor. Every volume and
 *    the file are filled with random data first; after every run everything is synced.
 *    CPU s/GiB = (fio's CPU + every cairnd's utime+stime) / GiB written.
 * 2. Full rebuild: a 2-replica volume filled with random data; the other replica's node is
 *    killed (-9), the whole volume is written again (its dirty map is full), the node is
 *    restarted and the time to healthy is measured, against `cp --sparse=never` of a file
 *    of the same size on the same filesystem, then `sync` of the copy.
 * 3. Resync: the same, with only 1 % of the regions written while the node is down.
 * 4. QD1 latency (issue 11): 4k random write at iodepth 1 on the same targets, fio's
 *    completion-latency p50/p99.
 * 5. CPU per remote replica (issue 11): from the 4k QD32 run (and the 1M run when it ran),
 *    every cairnd's CPU per write split into the engine's node, the remote replicas' nodes
 *    and idle nodes; what one remote replica adds over rf=1, engine side and replica side.
 * 6. Sparse rebuild (issue 11): a new replica of a fully written and of a half-written
 *    volume (rf 2 -> 3), built from scratch; the half one should take half the time.
 * The issue's goals are printed at the end, each met or MISSED, for the parts that ran.
 *
 * Parts (--parts, any of): fio (the throughput table for --workloads), latency (4), cpu (5;
 * runs the 4k QD32 workload even without fio), rebuild (2 and 3), sparse (6). fio, latency and cpu
 * share one set of filled volumes; e.g. `--quick --parts latency,cpu` is a cheap check.
 *
 *   npm run build && npm run bench:replication -- [--runtime 20] [--reps 3] [--quick]
 *       [--rf 1,2,3] [--workloads 4k-randwrite,1M-write] [--parts fio,latency,cpu,rebuild]
 *       [--rebuild-mib 1024] [--rebuild-reps 1] [--resync-reps 3] [--resync-percent 1]
 *       [--peer-insecure] [--cpu-prof DIR] [--json OUT] [--h2-window BYTES] [--transport channel|grpc]
 *
 * Each flag has an env var: BENCH_RUNTIME, BENCH_REPS, BENCH_RF, BENCH_WORKLOADS,
 * BENCH_PARTS, BENCH_REBUILD_MIB, BENCH_REBUILD_REPS, BENCH_RESYNC_REPS,
 * BENCH_RESYNC_PERCENT, BENCH_CPU_PROF, BENCH_JSON. With --cpu-prof, extra runs (not in
 * the medians) profile every cairnd's JS thread: one fio run per workload at the highest
 * replica count, and one extra full rebuild. --h2-window is a diagnostic experiment that
 * changes the daemons (see experimentHttp2Window); its figures are not Cairn's.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ApiClient } from '../src/cli/api-client.js';
import { regionBytesFor } from '../src/cluster/volume-doc.js';
import { Cluster } from '../test/helpers/cluster.js';
import { etcdMissingReason } from '../test/helpers/etcd.js';
import { checkBuild } from './lib/cairnd.js';
import { runFio, type Workload } from './lib/fio.js';
import { loadAverage, machineFacts, median, printTable } from './lib/machine.js';
import { ClusterProfiler, experimentHttp2Window, printProfiles } from './lib/profiling.js';
import { sparseRebuildPart } from './lib/sparse-rebuild.js';
import {
  cairndProcesses, copyToExport, describeSample, dirtyRegions, measureRecovery, syncAll, timeCp, waitHealthy, writeRandomFile,
  type BenchVolumeRef, type CpSample, type RecoveryContext, type RecoverySample,
} from './lib/recovery.js';
import {
  fioGoals, goalLine, printCpuPerReplica, printLatency, type FioSample, type PerRemoteCpu, type ReplicatedTarget,
} from './lib/replication-figures.js';
import { cpuSeconds, startServer, stopServer, type ServerProcess } from './lib/servers.js';
import { threadCpu, threadCpuDelta } from './lib/thread-cpu.js';

const WORKLOADS: Workload[] = [
  { name: '4k-randwrite', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '1M-write', rw: 'write', blockSize: '1M', iodepth: 8 },
];
const LATENCY_WORKLOAD: Workload = { name: '4k-randwrite-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1 };
const PARTS = ['fio', 'latency', 'cpu', 'rebuild', 'sparse'];
const FIO_VOLUME_BYTES = 1 << 30;
const GiB = 2 ** 30;
/** cairnd flags over the harness's test defaults: the daemon's own replica timeout, so a busy 2-vCPU machine does not fault replicas. */
const CLUSTER_FLAGS = { '--rebuild-rate': '0', '--replica-timeout-ms': '8000' };

interface Options {
  runtimeSec: number;
  reps: number;
  rfs: number[];
  workloads: Workload[];
  parts: Set<string>;
  rebuildBytes: number;
  rebuildReps: number;
  resyncReps: number;
  resyncPercent: number;
  insecure: boolean;
  cpuProfDir: string | undefined;
  json: string | undefined;
  h2WindowBytes: number | undefined;
  transport: 'channel' | 'grpc';
}

function options(): Options {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      runtime: { type: 'string', default: env.BENCH_RUNTIME ?? '20' },
      reps: { type: 'string', default: env.BENCH_REPS ?? '3' },
      quick: { type: 'boolean', default: false },
      rf: { type: 'string', default: env.BENCH_RF ?? '1,2,3' },
      workloads: { type: 'string', default: env.BENCH_WORKLOADS ?? WORKLOADS.map((w) => w.name).join(',') },
      parts: { type: 'string', default: env.BENCH_PARTS ?? PARTS.join(',') },
      'rebuild-mib': { type: 'string', default: env.BENCH_REBUILD_MIB ?? '1024' },
      'rebuild-reps': { type: 'string', default: env.BENCH_REBUILD_REPS ?? '1' },
      'resync-reps': { type: 'string', default: env.BENCH_RESYNC_REPS ?? '3' },
      'resync-percent': { type: 'string', default: env.BENCH_RESYNC_PERCENT ?? '1' },
      'peer-insecure': { type: 'boolean', default: false },
      'cpu-prof': { type: 'string', default: env.BENCH_CPU_PROF },
      json: { type: 'string', default: env.BENCH_JSON },
      'h2-window': { type: 'string', default: env.BENCH_H2_WINDOW },
      transport: { type: 'string', default: env.BENCH_TRANSPORT ?? 'channel' },
    },
  });
  const positive = (name: string, v: string): number => {
    const n = Number(v);
    if (!(n > 0)) throw new Error(`--${name} must be a positive number, got "${v}"`);
    return n;
  };
  const rfs = values.rf.split(',').map((x) => positive('rf', x));
  if (rfs.some((rf) => !Number.isInteger(rf) || rf > 3)) throw new Error(`--rf takes replica counts 1-3, got "${values.rf}"`);
  const workloads = WORKLOADS.filter((w) => values.workloads.split(',').includes(w.name));
  if (workloads.length === 0) throw new Error(`--workloads names none of ${WORKLOADS.map((w) => w.name).join(', ')}`);
  const parts = values.parts.split(',');
  const unknown = parts.filter((p) => !PARTS.includes(p));
  if (unknown.length > 0) throw new Error(`--parts takes ${PARTS.join(', ')}; unknown: ${unknown.join(', ')}`);
  return {
    runtimeSec: values.quick ? 5 : positive('runtime', values.runtime),
    reps: values.quick ? 1 : positive('reps', values.reps),
    rfs, workloads, parts: new Set(parts),
    rebuildBytes: positive('rebuild-mib', values['rebuild-mib']) * 2 ** 20,
    rebuildReps: values.quick ? 1 : positive('rebuild-reps', values['rebuild-reps']),
    resyncReps: values.quick ? 1 : positive('resync-reps', values['resync-reps']),
    resyncPercent: positive('resync-percent', values['resync-percent']),
    insecure: values['peer-insecure'], cpuProfDir: values['cpu-prof'], json: values.json,
    h2WindowBytes: values['h2-window'] ? positive('h2-window', values['h2-window']) : undefined,
    transport: transportOf(values.transport),
  };
}

function transportOf(v: string): 'channel' | 'grpc' {
  if (v !== 'channel' && v !== 'grpc') throw new Error(`--transport takes channel or grpc, got "${v}"`);
  return v;
}

interface Bench {
  opts: Options;
  cluster: Cluster;
  api: ApiClient;
  dir: string;
  profiler: ClusterProfiler | undefined;
  goals: string[];
  json: Record<string, unknown>;
}

/* ------------------------------------------------------------------ throughput */

interface FioTarget {
  label: string;
  uri: string;
  rf?: number;
  volume?: string;
  /** Node indexes of the replicas off node-0 (the engine's). */
  remoteNodes?: number[];
  pids(): number[];
}

async function createExported(b: Bench, name: string, sizeBytes: number, rf: number, fill: string): Promise<{ uri: string; nodes: string[] }> {
  await b.cluster.createVolume(name, String(sizeBytes), rf, 0, ['--prefer-node', b.cluster.nodeName(0)]);
  const exp = await b.cluster.exportVolume(0, name);
  await copyToExport(fill, exp.uri);
  const v = await b.api.getVolume(name);
  return { uri: exp.uri, nodes: v.replicas.map((r) => r.nodeName) };
}

async function measureFio(b: Bench, t: FioTarget, w: Workload): Promise<FioSample> {
  const pids = t.pids();
  const before = await Promise.all(pids.map((p) => cpuSeconds(p)));
  const threadsBefore = await Promise.all(pids.map((p) => threadCpu(p)));
  const r = await runFio({ kind: 'nbd', uri: t.uri }, w, b.opts.runtimeSec, join(b.dir, 'fio.json'));
  const after = await Promise.all(pids.map((p) => cpuSeconds(p)));
  const threadsByNode = await Promise.all(pids.map(async (p, i) => threadCpuDelta(await threadCpu(p), threadsBefore[i]!)));
  const cpuByNode = after.map((a, i) => a - before[i]!);
  const load = loadavg()[0]!;
  let degraded = false;
  if (t.volume) {
    const v = await b.api.getVolume(t.volume);
    if (v.health !== 'healthy') {
      degraded = true;
      console.warn(`  WARNING: ${t.volume} is ${v.health} after the run (${v.replicas.map((x) => `${x.nodeName} ${x.state} ${x.reason}`).join(', ')}); waiting for it to heal`);
      await waitHealthy(b.api, t.volume, 600_000);
    }
  }
  await syncAll();
  return { ...r, serverCpuSec: cpuByNode.reduce((s, x) => s + x, 0), cpuByNode, threadsByNode, load, degraded };
}

/** "node-0 2.1+0.9 s, ..." : main thread + other threads of each cairnd, in node order. */
function describeThreads(s: FioSample): string {
  return s.threadsByNode.map((t, i) => `${i}: ${t.mainSec.toFixed(1)}+${t.otherSec.toFixed(1)}`).join(', ') + ' s (main+other threads)';
}

function summarize(samples: FioSample[]): { iops: number; mbps: number; cpuPerGiB: number } {
  return {
    iops: median(samples.map((s) => s.iops)),
    mbps: median(samples.map((s) => s.bytesPerSec / 1e6)),
    cpuPerGiB: median(samples.map((s) => (s.cpuSec + s.serverCpuSec) / (s.ioBytes / GiB))),
  };
}

async function throughputPart(b: Bench): Promise<void> {
  const { cluster, opts } = b;
  const fill = join(b.dir, 'fill-1g.img');
  await writeRandomFile(fill, FIO_VOLUME_BYTES);
  const ref = join(b.dir, 'nbdkit.img');
  await writeRandomFile(ref, FIO_VOLUME_BYTES);
  const nbdkit: ServerProcess = await startServer({ name: 'nbdkit', command: 'nbdkit', args: ['-f', '-U', join(b.dir, 'nbdkit.sock'), 'file', ref], socketPath: join(b.dir, 'nbdkit.sock') });
  try {
    const targets: FioTarget[] = [{ label: 'nbdkit file (1 node)', uri: `nbd+unix:///?socket=${nbdkit.socketPath}`, pids: () => [nbdkit.child.pid!] }];
    for (const rf of opts.rfs) {
      const name = `bench-rf${rf}`;
      const { uri, nodes } = await createExported(b, name, FIO_VOLUME_BYTES, rf, fill);
      console.log(`volume ${name}: replicas on ${nodes.join(', ')}; engine and export on ${cluster.nodeName(0)}`);
      const remoteNodes = Array.from({ length: cluster.size }, (_, i) => i).filter((i) => i !== 0 && nodes.includes(cluster.nodeName(i)));
      // cpuByNode is indexed by node, so every daemon must be up for the CPU split to mean anything.
      const pids = (): number[] => cairndProcesses(cluster).map((p) => p.pid);
      targets.push({ label: `cairn rf=${rf}`, uri, rf, volume: name, remoteNodes, pids });
    }
    await syncAll();
    const results = new Map<string, Map<string, FioSample[]>>();
    for (const w of fioWorkloads(opts)) {
      const byTarget = new Map<string, FioSample[]>(targets.map((t) => [t.label, []]));
      results.set(w.name, byTarget);
      for (let rep = 0; rep < opts.reps; rep++) {
        for (const t of targets) {
          const s = await measureFio(b, t, w);
          byTarget.get(t.label)!.push(s);
          const perNode = t.rf ? `, cairnd cpu by node ${describeThreads(s)}` : `, server cpu ${s.serverCpuSec.toFixed(1)} s`;
          console.log(`  ${w.name} ${t.label} #${rep + 1}: ${Math.round(s.iops)} IOPS, ${(s.bytesPerSec / 1e6).toFixed(0)} MB/s, fio cpu ${s.cpuSec.toFixed(1)} s${perNode}, load ${s.load.toFixed(1)}${s.degraded ? ' DEGRADED' : ''}`);
        }
      }
    }
    printFioFigures(b, results, targets);
    if (b.profiler) await profileThroughput(b, targets);
    b.json.throughput = Object.fromEntries([...results].map(([k, v]) => [k, Object.fromEntries(v)]));
  } finally {
    await stopServer(nbdkit);
    await rm(ref, { force: true });
    for (const rf of opts.rfs) await b.api.deleteVolume(`bench-rf${rf}`, true).catch(() => undefined);
    await rm(fill, { force: true });
  }
}

/** The workloads the chosen parts need: the throughput ones, 4k QD32 for the CPU figures, QD1 for latency. */
function fioWorkloads(opts: Options): Workload[] {
  const out = opts.parts.has('fio') ? [...opts.workloads] : [];
  if (opts.parts.has('cpu') && !out.some((w) => w.name === '4k-randwrite')) out.push(WORKLOADS[0]!);
  if (opts.parts.has('latency')) out.push(LATENCY_WORKLOAD);
  return out;
}

function printFioFigures(b: Bench, results: Map<string, Map<string, FioSample[]>>, targets: FioTarget[]): void {
  const throughput = new Map([...results].filter(([w]) => w !== LATENCY_WORKLOAD.name));
  if (throughput.size > 0) printThroughput(b, throughput, targets);
  const replicated: ReplicatedTarget[] = targets.filter((t) => t.rf).map((t) => ({ label: t.label, rf: t.rf!, remoteNodes: t.remoteNodes ?? [] }));
  const qd1 = results.get(LATENCY_WORKLOAD.name);
  const latency = qd1 ? printLatency(`QD1 4k random write latency: fio's completion latency, medians of ${b.opts.reps} x ${b.opts.runtimeSec} s`, qd1, (l) => targets.find((t) => t.label === l)?.rf) : [];
  let cpu4k: PerRemoteCpu[] = [];
  let cpu1M: PerRemoteCpu[] = [];
  if (b.opts.parts.has('cpu')) {
    const note = 'cairnd utime+stime per node during the run; idle nodes hold no replica of the volume; per remote: engine side = (engine node - rf=1 engine node) / remotes, replica side = remote nodes / remotes';
    const four = results.get('4k-randwrite');
    if (four) cpu4k = printCpuPerReplica(`CPU per 4k write at QD32, µs (${note})`, 'us-per-io', four, replicated);
    const big = results.get('1M-write');
    if (big) cpu1M = printCpuPerReplica(`CPU per GiB of 1M writes at QD8, s (${note})`, 's-per-GiB', big, replicated);
  }
  const iopsRatio = (workload: string, rf: number): number | undefined => {
    const byTarget = results.get(workload);
    const one = byTarget?.get('cairn rf=1');
    const n = byTarget?.get(`cairn rf=${rf}`);
    return one?.length && n?.length ? median(n.map((s) => s.iops)) / median(one.map((s) => s.iops)) : undefined;
  };
  b.goals.push(...fioGoals({ iopsRatio, cpu4k, cpu1M, latency }));
}

function printThroughput(b: Bench, results: Map<string, Map<string, FioSample[]>>, targets: FioTarget[]): void {
  console.log(`\nThroughput: medians of ${b.opts.reps} x ${b.opts.runtimeSec} s (CPU s/GiB = fio + every cairnd, or fio + nbdkit)`);
  const rows = [['workload', 'target', 'IOPS', 'MB/s', 'CPU s/GiB', 'x rf=1', 'x nbdkit', 'load']];
  for (const [workload, byTarget] of results) {
    const kit = summarize(byTarget.get(targets[0]!.label)!);
    const rf1 = byTarget.get('cairn rf=1');
    const one = rf1?.length ? summarize(rf1) : undefined;
    for (const t of targets) {
      const samples = byTarget.get(t.label)!;
      const s = summarize(samples);
      const degraded = samples.some((x) => x.degraded) ? ' (degraded run!)' : '';
      rows.push([workload, t.label + degraded, Math.round(s.iops).toString(), s.mbps.toFixed(0), s.cpuPerGiB.toFixed(2),
        t.rf && one ? (s.iops / one.iops).toFixed(2) : '', t.rf ? (s.iops / kit.iops).toFixed(2) : '', samples.map((x) => x.load.toFixed(1)).join('/')]);
    }
  }
  printTable(rows);
}

async function profileThroughput(b: Bench, targets: FioTarget[]): Promise<void> {
  const t = [...targets].reverse().find((x) => x.rf);
  if (!t) return;
  for (const w of fioWorkloads(b.opts)) {
    const procs = cairndProcesses(b.cluster);
    b.profiler!.start(procs);
    const s = await measureFio(b, t, w);
    const paths = await b.profiler!.stop(procs, `${w.name}-rf${t.rf}`);
    console.log(`\nProfiled extra run (not in the table): ${w.name} ${t.label}: ${Math.round(s.iops)} IOPS, ${(s.bytesPerSec / 1e6).toFixed(0)} MB/s, cairnd cpu by node ${describeThreads(s)}`);
    await printProfiles(paths);
  }
}

/* ------------------------------------------------------------------ rebuild and resync */

async function recoveryPart(b: Bench): Promise<void> {
  const { cluster, opts } = b;
  const size = opts.rebuildBytes;
  const files = [join(b.dir, 'rebuild-a.img'), join(b.dir, 'rebuild-b.img')];
  for (const f of files) await writeRandomFile(f, size);
  const name = 'bench-rebuild';
  const { uri } = await createExported(b, name, size, 2, files[0]!);
  const v = await b.api.getVolume(name);
  const target = v.replicas.find((r) => r.nodeName !== cluster.nodeName(0));
  if (!target) throw new Error(`volume ${name} has no replica off ${cluster.nodeName(0)}: ${JSON.stringify(v.replicas)}`);
  const targetNode = Array.from({ length: cluster.size }, (_, i) => i).find((i) => cluster.nodeName(i) === target.nodeName)!;
  const vol: BenchVolumeRef = { name, uri, sizeBytes: v.sizeBytes, regionBytes: regionBytesFor(v.sizeBytes), targetNode, targetReplica: target.id };
  const ctx: RecoveryContext = { cluster, api: b.api, profiler: b.profiler, timeoutMs: Math.max(300_000, (size / 5e6) * 1000) };
  const sizeMiB = (size / 2 ** 20).toFixed(0);
  console.log(`\nvolume ${name}: ${sizeMiB} MiB, regions of ${vol.regionBytes / 2 ** 20} MiB, replicas on ${v.replicas.map((r) => r.nodeName).join(', ')}; the replica on ${target.nodeName} is killed and comes back`);

  const cp: CpSample[] = [];
  for (let rep = 0; rep < Math.max(3, opts.rebuildReps); rep++) {
    const s = await timeCp(files[0]!, join(b.dir, 'cp-target.img'));
    cp.push(s);
    console.log(`  cp --sparse=never + sync of the copy #${rep + 1}: ${Math.round(s.ms)} ms, ${(size / s.ms / 1e3).toFixed(0)} MB/s, cpu ${s.cpuSec.toFixed(1)} s, load ${s.load.toFixed(1)}`);
  }
  const full: RecoverySample[] = [];
  for (let rep = 0; rep < opts.rebuildReps + (b.profiler ? 1 : 0); rep++) {
    const profiled = rep === opts.rebuildReps;
    const s = await measureRecovery(ctx, vol, 'full rebuild', () => copyToExport(files[(rep + 1) % 2]!, uri), profiled ? 'full-rebuild' : undefined);
    console.log(`  full rebuild #${rep + 1}${profiled ? ' (profiled, not in the table)' : ''}: ${describeSample(s)}`);
    if (profiled) await printProfiles(s.profiles);
    else full.push(s);
  }
  const regions = Math.ceil(size / vol.regionBytes);
  const dirtyCount = Math.max(1, Math.round((regions * opts.resyncPercent) / 100));
  const resync: RecoverySample[] = [];
  for (let rep = 0; rep < opts.resyncReps; rep++) {
    const s = await measureRecovery(ctx, vol, 'resync', () => dirtyRegions(vol, dirtyCount, rep));
    resync.push(s);
    console.log(`  resync of ${dirtyCount}/${regions} regions #${rep + 1}: ${describeSample(s)}`);
  }
  const verify = await cluster.verify(name);
  const agree = verify.exitCode === 0 && verify.result?.mismatches.length === 0;
  console.log(`  volume verify after the runs: ${agree ? `the ${verify.result?.replicas.length} replicas agree in all ${verify.result?.regionsCompared} regions` : `FAILED: ${verify.stderr || JSON.stringify(verify.result?.mismatches.slice(0, 5))}`}`);
  printRecovery(b, size, cp, full, resync, dirtyCount, regions);
  b.json.recovery = { sizeBytes: size, regionBytes: vol.regionBytes, cp, full, resync, verifyAgrees: agree };
  await b.api.deleteVolume(name, true).catch(() => undefined);
  for (const f of files) await rm(f, { force: true });
}

function printRecovery(b: Bench, size: number, cp: CpSample[], full: RecoverySample[], resync: RecoverySample[], dirtyCount: number, regions: number): void {
  const med = <T>(xs: T[], f: (x: T) => number | undefined): number | undefined => {
    const vals = xs.map(f).filter((x): x is number => x !== undefined);
    return vals.length ? median(vals) : undefined;
  };
  const fmtMs = (ms: number | undefined): string => (ms === undefined ? '?' : ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);
  const mbps = (bytes: number | undefined, ms: number | undefined): number | undefined => (bytes !== undefined && ms ? bytes / ms / 1e3 : undefined);
  const fmt = (x: number | undefined, digits = 0): string => (x === undefined ? '?' : x.toFixed(digits));
  const cpMs = median(cp.map((s) => s.ms));
  const cpMbps = size / cpMs / 1e3;
  const fullCopyMs = med(full, (s) => s.copyMs);
  const fullCopied = med(full, (s) => s.doneBytes);
  const fullCopyMbps = mbps(fullCopied, fullCopyMs);
  const fullReady = med(full, (s) => s.readyToHealthyMs)!;
  const fullTotal = med(full, (s) => s.totalMs)!;
  const rsCopyMs = med(resync, (s) => s.copyMs);
  const rsReady = med(resync, (s) => s.readyToHealthyMs)!;
  const rsTotal = med(resync, (s) => s.totalMs)!;
  const rsAfterReconnect = med(resync, (s) => (s.reconnectMs === undefined ? undefined : s.readyToHealthyMs - s.reconnectMs));
  const fullAfterReconnect = med(full, (s) => (s.reconnectMs === undefined ? undefined : s.readyToHealthyMs - s.reconnectMs));
  const pct = (a: number | undefined, c: number | undefined): string => (a !== undefined && c ? `${((a / c) * 100).toFixed(1)}% of full` : '');
  const cpuPerGiB = (xs: RecoverySample[]): string => fmt(med(xs, (s) => s.cpuSec / ((s.doneBytes ?? s.dirtyBytes) / GiB)), 2);
  console.log(`\nRebuild and resync (${(size / 2 ** 20).toFixed(0)} MiB volume, 2 replicas, --rebuild-rate 0; medians; CPU = every cairnd from the node's /readyz to healthy, per GiB copied)`);
  const rows = [
    ['what', 'time', 'MB/s', 'CPU s/GiB', 'ratio'],
    ['cp --sparse=never + sync of the copy, same fs', fmtMs(cpMs), cpMbps.toFixed(0), fmt(median(cp.map((s) => s.cpuSec / (size / GiB))), 2), '1.00 (reference)'],
    ['full rebuild: engine copy + verify (its log)', fmtMs(fullCopyMs), fmt(fullCopyMbps), cpuPerGiB(full), fullCopyMbps ? `${(fullCopyMbps / cpMbps).toFixed(2)} x cp` : ''],
    ['full rebuild: reconnect .. healthy', fmtMs(fullAfterReconnect), fmt(mbps(size, fullAfterReconnect)), '', fullAfterReconnect ? `${(size / fullAfterReconnect / 1e3 / cpMbps).toFixed(2)} x cp` : ''],
    ['full rebuild: node ready .. healthy', fmtMs(fullReady), fmt(mbps(size, fullReady)), '', `${(size / fullReady / 1e3 / cpMbps).toFixed(2)} x cp`],
    ['full rebuild: restart .. healthy', fmtMs(fullTotal), fmt(mbps(size, fullTotal)), '', `${(size / fullTotal / 1e3 / cpMbps).toFixed(2)} x cp`],
    [`resync ${dirtyCount}/${regions} regions: engine copy + verify`, fmtMs(rsCopyMs), '', '', pct(rsCopyMs, fullCopyMs)],
    ['resync: reconnect .. healthy', fmtMs(rsAfterReconnect), '', '', pct(rsAfterReconnect, fullAfterReconnect)],
    ['resync: node ready .. healthy', fmtMs(rsReady), '', '', pct(rsReady, fullReady)],
    ['resync: restart .. healthy', fmtMs(rsTotal), '', '', pct(rsTotal, fullTotal)],
  ];
  printTable(rows, 1);
  console.log(`  reconnect (node ready .. the engine's 'replica rebuild starting'): full ${fmtMs(med(full, (s) => s.reconnectMs))}, resync ${fmtMs(med(resync, (s) => s.reconnectMs))}; node start-up (restart .. /readyz): ${fmtMs(med([...full, ...resync], (s) => s.startupMs))}`);
  if (fullCopyMbps) b.goals.push(`full rebuild / cp: ${(fullCopyMbps / cpMbps).toFixed(2)} on the engine's copy+verify time, ${(size / fullReady / 1e3 / cpMbps).toFixed(2)} from node ready to healthy (goal >= 0.8: ${fullCopyMbps / cpMbps >= 0.8 ? 'met' : 'MISSED'} on the copy time)`);
  const rebuildCpu = med(full, (s) => s.cpuSec / ((s.doneBytes ?? s.dirtyBytes) / GiB));
  if (rebuildCpu !== undefined) b.goals.push(goalLine('full rebuild CPU, every cairnd, per GiB copied', `${rebuildCpu.toFixed(2)} s/GiB`, '<= 1.5', rebuildCpu <= 1.5));
  const share = (a: number | undefined, c: number | undefined): string => (a !== undefined && c ? `${((a / c) * 100).toFixed(1)}%` : '?');
  const copyShare = rsCopyMs !== undefined && fullCopyMs ? rsCopyMs / fullCopyMs : undefined;
  b.goals.push(`resync of ${b.opts.resyncPercent}% / full rebuild: ${share(rsCopyMs, fullCopyMs)} on the engine's copy+verify time, ${share(rsAfterReconnect, fullAfterReconnect)} from reconnect to healthy, `
    + `${share(rsReady, fullReady)} from node ready to healthy (reconnect delay included), ${share(rsTotal, fullTotal)} from restart to healthy `
    + `(goal <= 3%: ${copyShare === undefined ? '?' : copyShare <= 0.03 ? 'met' : 'MISSED'} on the copy time)`);
}

/* ------------------------------------------------------------------ main */

async function main(): Promise<void> {
  const opts = options();
  checkBuild();
  const missing = await etcdMissingReason();
  if (missing) throw new Error(`cannot run a cluster here: ${missing}`);
  const dir = await mkdtemp('/tmp/cairn-repl-bench-');
  if (opts.cpuProfDir) await mkdir(opts.cpuProfDir, { recursive: true });
  const profiler = opts.cpuProfDir ? ClusterProfiler.enable(opts.cpuProfDir) : undefined;
  if (opts.h2WindowBytes) {
    experimentHttp2Window(opts.h2WindowBytes);
    console.log(`EXPERIMENT: every cairnd runs with HTTP/2 windows of ${opts.h2WindowBytes} bytes (a preload patches node:http2); these are not Cairn's figures`);
  }
  console.log('Machine:');
  for (const line of machineFacts(dir)) console.log(`  ${line}`);
  const cluster = await Cluster.start({ nodes: 3, tls: opts.insecure ? 'insecure' : true, flags: { ...CLUSTER_FLAGS, '--replica-transport': opts.transport },
    extraArgs: ['--log-level', 'info'] });
  const api = cluster.node(0).client();
  const b: Bench = { opts, cluster, api, dir, profiler, goals: [], json: {} };
  let failed = false;
  const cleanup = async (): Promise<void> => {
    api.close();
    await cluster.destroy({ failed });
    await rm(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    console.log(`cluster ${cluster.name}: 3 cairnd (pids ${cairndProcesses(cluster).map((p) => p.pid).join(', ')}), peers ${opts.insecure ? 'in plaintext' : 'with mutual TLS'}, block I/O on ${opts.transport === 'channel' ? 'the data channel' : 'gRPC Io streams'}, `
      + `flags ${Object.entries(CLUSTER_FLAGS).map(([k, v]) => `${k} ${v}`).join(' ')} (and the harness's --node-ttl-ms 3000 --repair-wait-ms 600000), log level info`);
    if (['fio', 'latency', 'cpu'].some((p) => opts.parts.has(p))) await throughputPart(b);
    if (opts.parts.has('rebuild')) await recoveryPart(b);
    if (opts.parts.has('sparse')) b.json.sparseRebuild = await sparseRebuildPart(cluster, api, dir, opts.rebuildBytes, b.goals);
    console.log(`\nGoals (load average now ${loadAverage()}):`);
    for (const g of b.goals) console.log(`  ${g}`);
    if (opts.json) await writeFile(opts.json, JSON.stringify({ ...b.json, goals: b.goals }, null, 2));
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    await cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
