/**
 * Snapshot benchmark (issue 12), against reference peers measured in the same run:
 *
 * 1. pause: the write barrier's I/O pause while fio writes 4k at random, QD32, through its
 *    nbd engine to the volume's export: `--count` snapshots one every `--interval-ms`, for
 *    rf=1 on one cairnd (the embedded store, as the quick start) and rf=3 on a 3-node cluster
 *    (etcd, mutual TLS); the engine's pauseUs, the API call's time, and fio's IOPS and
 *    completion latency with snapshots vs the same run without (bench/lib/snapshot-pause.ts).
 * 2. create: snapshot creation of an exported 10 GiB volume with 1 GiB written, through the
 *    API client and through cairnctl, vs one `cp --reflink=always` of its device file (on the
 *    single node; also rf=3 on the cluster when rf 3 is chosen).
 * 3. restore: a snapshot of 1 GiB of random data restored on the same node and across nodes,
 *    until healthy, vs `cp` of a 1 GiB file on the same disk (bench/lib/snapshot-restore.ts).
 *
 * Every volume is filled with random data first. The goals of the issue are printed at the
 * end, each met or MISSED. Nothing here is asserted: it is a benchmark.
 *
 *   npm run build && npm run bench:snapshot -- [--quick] [--parts pause,create,restore] [--rf 1,3]
 *       [--count 30] [--interval-ms 500] [--create-reps 10] [--restore-reps 3]
 *       [--file-pool-layout auto|direct|xfs-image] [--rebuild-rate 0] [--json OUT]
 *
 * --quick: 6 snapshots, volumes of 256 MiB (create: 2 GiB with 256 MiB written), one rep.
 * The daemons run with --replica-timeout-ms 8000 (the default) and --rebuild-rate 0 unless
 * given (the default is 256MiB: a cap, not Cairn's speed).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ApiClient } from '../src/cli/api-client.js';
import { Cluster } from '../test/helpers/cluster.js';
import { Daemon } from '../test/helpers/daemon.js';
import { etcdMissingReason } from '../test/helpers/etcd.js';
import { checkBuild } from './lib/cairnd.js';
import { loadAverage, machineFacts } from './lib/machine.js';
import { copyToExport, writeRandomFile } from './lib/recovery.js';
import { describePause, measurePause, printPause, type PauseSample, type PauseTarget } from './lib/snapshot-pause.js';
import {
  describeRestore, deviceFile, measureCreation, printCreation, printRestore, timeCpHonest, timeRestore,
  type CreationSample, type RestoreContext, type RestoreSample,
} from './lib/snapshot-restore.js';
import { poolFacts } from './lib/snapshot-pool.js';

const PARTS = ['pause', 'create', 'restore'];
const MiB = 2 ** 20;
/** Deletes of volumes that were written after many snapshots were seen to take over 30 s (the client's default) on a loaded machine. */
const API_DEADLINE_MS = 600_000;
const GiB = 2 ** 30;

interface Options {
  parts: Set<string>;
  rfs: number[];
  count: number;
  intervalMs: number;
  marginMs: number;
  pauseBytes: number;
  createBytes: number;
  createWritten: number;
  createReps: number;
  restoreBytes: number;
  restoreReps: number;
  flags: Record<string, string>;
  json: string | undefined;
}

function options(): Options {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      parts: { type: 'string', default: env.BENCH_PARTS ?? PARTS.join(',') },
      rf: { type: 'string', default: env.BENCH_RF ?? '1,3' },
      count: { type: 'string', default: env.BENCH_COUNT ?? '30' },
      'interval-ms': { type: 'string', default: env.BENCH_INTERVAL_MS ?? '500' },
      'create-reps': { type: 'string', default: env.BENCH_CREATE_REPS ?? '10' },
      'restore-reps': { type: 'string', default: env.BENCH_RESTORE_REPS ?? '3' },
      'file-pool-layout': { type: 'string', default: env.BENCH_FILE_POOL_LAYOUT ?? 'auto' },
      'rebuild-rate': { type: 'string', default: env.BENCH_REBUILD_RATE ?? '0' },
      json: { type: 'string', default: env.BENCH_JSON },
    },
  });
  const positive = (name: string, v: string): number => {
    const n = Number(v);
    if (!(n > 0) || !Number.isInteger(n)) throw new Error(`--${name} must be a positive whole number, got "${v}"`);
    return n;
  };
  const parts = values.parts.split(',');
  const unknown = parts.filter((p) => !PARTS.includes(p));
  if (unknown.length > 0) throw new Error(`--parts takes ${PARTS.join(', ')}; unknown: ${unknown.join(', ')}`);
  const rfs = values.rf.split(',').map((x) => positive('rf', x));
  if (rfs.some((rf) => rf !== 1 && rf !== 3)) throw new Error(`--rf takes 1 (one cairnd) and/or 3 (three cairnd and etcd), got "${values.rf}"`);
  const q = values.quick;
  return {
    parts: new Set(parts), rfs,
    count: q ? 6 : positive('count', values.count),
    intervalMs: positive('interval-ms', values['interval-ms']),
    marginMs: q ? 1500 : 3000,
    pauseBytes: q ? 256 * MiB : GiB,
    createBytes: q ? 2 * GiB : 10 * GiB,
    createWritten: q ? 256 * MiB : GiB,
    createReps: q ? 1 : positive('create-reps', values['create-reps']),
    restoreBytes: q ? 256 * MiB : GiB,
    restoreReps: q ? 1 : positive('restore-reps', values['restore-reps']),
    flags: { '--replica-timeout-ms': '8000', '--rebuild-rate': values['rebuild-rate'], '--file-pool-layout': values['file-pool-layout'] },
    json: values.json,
  };
}

/** Stops every daemon and etcd still running (for Ctrl-C; the normal path stops them in its finally blocks). */
const cleanups = new Set<() => Promise<void>>();

interface Bench {
  opts: Options;
  dir: string;
  goals: string[];
  json: Record<string, unknown>;
  pause: PauseSample[];
  creation: CreationSample[];
}

/** Creates volume `name`, exports it on the engine's node and fills its first `fillBytes` with random data. */
async function filledVolume(api: ApiClient, name: string, sizeBytes: number, rf: number, node: string, fillBytes: number, dir: string): Promise<string> {
  await api.createVolume(name, sizeBytes, { replicas: rf, preferredNode: node });
  const exp = await api.exportVolume(name);
  const fill = join(dir, `${name}.fill`);
  await writeRandomFile(fill, fillBytes);
  await copyToExport(fill, exp.uri);
  await rm(fill, { force: true });
  return exp.uri;
}

/** Deletes a volume and says how long it took (the pause runs leave it with many reflinked, then overwritten, extents). */
async function timedDelete(api: ApiClient, name: string): Promise<void> {
  const t0 = performance.now();
  await api.deleteVolume(name, true);
  console.log(`  volume ${name} deleted in ${(performance.now() - t0).toFixed(0)} ms`);
}

function daemonTarget(label: string, rf: number, api: ApiClient, volume: string, uri: string, d: Daemon): PauseTarget {
  return { label, rf, api, volume, uri, logMark: () => d.logMark(), events: (since) => d.events(since) };
}

/** rf=1 on one cairnd with the embedded store: the pause and the creation parts. */
async function singleNode(b: Bench): Promise<void> {
  const { opts } = b;
  const d = await Daemon.start({ extraArgs: ['--log-level', 'info', ...Object.entries(opts.flags).flat()] });
  const api = new ApiClient(d.apiSocket, API_DEADLINE_MS);
  const stop = async (): Promise<void> => {
    cleanups.delete(stop);
    api.close();
    await d.destroy();
  };
  cleanups.add(stop);
  try {
    console.log(`\none cairnd (pid ${d.pid}, embedded store): ${poolFacts(join(d.dataDir, 'pool'))}`);
    if (opts.parts.has('pause')) {
      const uri = await filledVolume(api, 'pause-rf1', opts.pauseBytes, 1, '', opts.pauseBytes, b.dir);
      const s = await measurePause(daemonTarget('rf=1, one cairnd', 1, api, 'pause-rf1', uri, d), { count: opts.count, intervalMs: opts.intervalMs, marginMs: opts.marginMs, dir: b.dir });
      console.log(`  ${describePause(s)}`);
      b.pause.push(s);
      await timedDelete(api, 'pause-rf1');
    }
    if (opts.parts.has('create')) {
      await filledVolume(api, 'create-rf1', opts.createBytes, 1, '', opts.createWritten, b.dir);
      const v = await api.getVolume('create-rf1');
      const s = await measureCreation({ label: 'rf=1, one cairnd', api, volume: 'create-rf1', ctl: (args) => d.ctl(args), deviceFile: deviceFile(join(d.dataDir, 'pool'), v.replicas[0]!.deviceId) }, opts.createReps);
      b.creation.push(s);
      await api.deleteVolume('create-rf1', true);
    }
  } finally {
    await stop();
  }
}

async function restorePart(b: Bench, cluster: Cluster, api: ApiClient): Promise<void> {
  const { opts } = b;
  const size = opts.restoreBytes;
  const file = join(b.dir, 'restore-src.img');
  await writeRandomFile(file, size);
  await api.createVolume('restore-src', size, { replicas: 1, preferredNode: cluster.nodeName(0) });
  const exp = await api.exportVolume('restore-src');
  await copyToExport(file, exp.uri);
  await api.createSnapshot('restore-src-snap', 'restore-src');
  const ctx: RestoreContext = { cluster, api, snapshot: 'restore-src-snap', sizeBytes: size, file, dir: b.dir };
  const samples: RestoreSample[] = [];
  console.log(`\nrestore: source volume restore-src (${(size / MiB).toFixed(0)} MiB, 1 replica on ${cluster.nodeName(0)}), snapshot restore-src-snap`);
  for (let rep = 0; rep < opts.restoreReps; rep++) {
    for (const s of [
      await timeCpHonest(file, join(b.dir, 'cp-dst.img')),
      await timeRestore(ctx, `restore-same-${rep}`, 'same node'),
      await timeRestore(ctx, `restore-cross-${rep}`, 'across nodes'),
    ]) {
      samples.push(s);
      console.log(`  #${rep + 1} ${describeRestore(s, size)}`);
    }
  }
  b.goals.push(...printRestore(samples, size, opts.restoreReps));
  b.json.restore = samples;
  await api.deleteSnapshot('restore-src-snap');
  await api.deleteVolume('restore-src', true);
  await rm(file, { force: true });
}

/** rf=3 on three cairnd and etcd: the pause (and creation) at rf=3 and the restore part. */
async function threeNodes(b: Bench): Promise<void> {
  const { opts } = b;
  const missing = await etcdMissingReason();
  if (missing) throw new Error(`cannot run the 3-node parts here: ${missing}`);
  const cluster = await Cluster.start({ nodes: 3, flags: opts.flags, extraArgs: ['--log-level', 'info'] });
  const api = new ApiClient(cluster.node(0).apiSocket, API_DEADLINE_MS);
  let failed = false;
  const stop = async (): Promise<void> => {
    cleanups.delete(stop);
    api.close();
    await cluster.destroy({ failed });
  };
  cleanups.add(stop);
  try {
    console.log(`\ncluster ${cluster.name}: 3 cairnd (pids ${[0, 1, 2].map((i) => cluster.node(i).pid).join(', ')}), etcd, mutual TLS; node-0 ${poolFacts(join(cluster.node(0).dataDir, 'pool'))}`);
    const node0 = cluster.node(0);
    if (opts.rfs.includes(3) && opts.parts.has('pause')) {
      const uri = await filledVolume(api, 'pause-rf3', opts.pauseBytes, 3, cluster.nodeName(0), opts.pauseBytes, b.dir);
      const s = await measurePause(daemonTarget('rf=3, three cairnd', 3, api, 'pause-rf3', uri, node0), { count: opts.count, intervalMs: opts.intervalMs, marginMs: opts.marginMs, dir: b.dir });
      console.log(`  ${describePause(s)}`);
      b.pause.push(s);
      await timedDelete(api, 'pause-rf3');
    }
    if (opts.rfs.includes(3) && opts.parts.has('create')) {
      await filledVolume(api, 'create-rf3', opts.createBytes, 3, cluster.nodeName(0), opts.createWritten, b.dir);
      const v = await api.getVolume('create-rf3');
      const local = v.replicas.find((r) => r.nodeName === cluster.nodeName(0));
      const s = await measureCreation({ label: 'rf=3, three cairnd', api, volume: 'create-rf3', ctl: (args) => node0.ctl(args),
        deviceFile: local ? deviceFile(join(node0.dataDir, 'pool'), local.deviceId) : undefined }, opts.createReps);
      b.creation.push(s);
      await api.deleteVolume('create-rf3', true);
    }
    if (opts.parts.has('restore')) await restorePart(b, cluster, api);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    await stop();
  }
}

async function main(): Promise<void> {
  const opts = options();
  checkBuild();
  const dir = await mkdtemp('/tmp/cairn-snap-bench-');
  const b: Bench = { opts, dir, goals: [], json: {}, pause: [], creation: [] };
  console.log('Machine:');
  for (const line of machineFacts(dir)) console.log(`  ${line}`);
  console.log(`  daemon flags: ${Object.entries(opts.flags).map(([k, v]) => `${k} ${v}`).join(' ')}${opts.parts.has('restore') ? '; restore and cp drop the page cache (sync; echo 3 > /proc/sys/vm/drop_caches) first' : ''}`);
  process.once('SIGINT', () => {
    console.error('interrupted: stopping the daemons and etcd');
    void Promise.allSettled([...cleanups].map((c) => c()))
      .then(() => rm(dir, { recursive: true, force: true }))
      .finally(() => process.exit(130));
  });
  try {
    const single = opts.rfs.includes(1) && (opts.parts.has('pause') || opts.parts.has('create'));
    if (single) await singleNode(b);
    if ((opts.rfs.includes(3) && (opts.parts.has('pause') || opts.parts.has('create'))) || opts.parts.has('restore')) await threeNodes(b);
    if (b.pause.length) b.goals.unshift(...printPause(b.pause, { count: opts.count, intervalMs: opts.intervalMs, marginMs: opts.marginMs, dir }));
    if (b.creation.length) b.goals.push(...printCreation(b.creation, opts.createReps));
    console.log(`\nGoals (load average now ${loadAverage()}):`);
    for (const g of b.goals) console.log(`  ${g}`);
    if (opts.json) await writeFile(opts.json, JSON.stringify({ ...b.json, pause: b.pause, creation: b.creation, goals: b.goals }, null, 2));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
