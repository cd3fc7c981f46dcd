/**
 * NBD benchmark against the real daemon. It starts cairnd (the compiled dist/: run
 * `npm run build` first), creates a 1 GiB volume, fills its backing file, exports it, and
 * serves that same file with `nbdkit file` and `qemu-nbd -t -e 8 -f raw`; the raw target is
 * fio with libaio and direct=1 on the file itself. Each target runs 4k randwrite/randread
 * at QD32 and 1M sequential write/read at QD8, with fio's nbd engine for every NBD server,
 * one target at a time; between runs the file is fdatasync'd so that no target pays for the
 * previous one's dirty pages. Prints IOPS, MB/s, CPU seconds per GiB (fio's + the
 * server's, from /proc/PID/stat) and Cairn's ratio to nbdkit, with the load average.
 *
 *   npm run build && npm run bench:nbd -- [--duration 20] [--reps 3] [--quick]
 *       [--targets raw,nbdkit,qemu-nbd,cairn] [--workloads 4k-randwrite,...] [--json OUT]
 *       [--cpu-prof DIR]
 *
 * With --cpu-prof, cairnd runs under `node --cpu-prof` (its profile lands in DIR when it
 * stops) and the functions with the most self time are printed at the end.
 */
import { mkdir, mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BenchCairnd, type BenchVolume } from './lib/cairnd.js';
import { summarizeCpuProfile } from './lib/cpu-profile.js';
import { runFio, type FioResult, type FioTarget, type Workload } from './lib/fio.js';
import { cpuSeconds, startServer, stopServer, type ServerProcess, type ServerSpec } from './lib/servers.js';

const WORKLOADS: Workload[] = [
  { name: '4k-randwrite', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '4k-randread', rw: 'randread', blockSize: '4k', iodepth: 32 },
  { name: '1M-write', rw: 'write', blockSize: '1M', iodepth: 8 },
  { name: '1M-read', rw: 'read', blockSize: '1M', iodepth: 8 },
];
const TARGETS = ['raw', 'nbdkit', 'qemu-nbd', 'cairn'] as const;
type TargetName = (typeof TARGETS)[number];
const FILE_BYTES = 1 << 30;

interface Sample extends FioResult {
  serverCpuSec: number;
  /** 1-minute load average when the run ended. */
  load: number;
}

/** How fio reaches a target and which process's CPU counts as the server's. */
interface Target {
  fio: FioTarget;
  pid?: number;
}

function serverSpec(target: 'nbdkit' | 'qemu-nbd', dir: string, file: string): ServerSpec {
  const socketPath = join(dir, `${target}.sock`);
  if (target === 'nbdkit') return { name: target, command: 'nbdkit', args: ['-f', '-U', socketPath, 'file', file], socketPath };
  return { name: target, command: 'qemu-nbd', args: ['-t', '-e', '8', '-f', 'raw', '-k', socketPath, file], socketPath };
}

/** Writes every byte of the file (a pattern, not zeros), so reads hit allocated blocks on every target. */
async function fillFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let at = 0; at < FILE_BYTES; at += chunk.length) await fh.write(chunk, 0, chunk.length, at);
  await fh.datasync();
  await fh.close();
}

/** Writes back the dirty pages the last run left, so that the next target does not pay for them. */
async function quiesce(path: string): Promise<void> {
  const fh = await open(path, 'r');
  await fh.datasync();
  await fh.close();
}

async function measure(target: Target, name: TargetName, w: Workload, durationSec: number, dir: string): Promise<Sample> {
  const before = target.pid ? await cpuSeconds(target.pid) : 0;
  const r = await runFio(target.fio, w, durationSec, join(dir, `fio-${name}.json`));
  const after = target.pid ? await cpuSeconds(target.pid) : 0;
  return { ...r, serverCpuSec: after - before, load: loadavg()[0]! };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

function summarize(samples: Sample[]): { iops: number; mbps: number; cpuPerGiB: number } {
  return {
    iops: median(samples.map((s) => s.iops)),
    mbps: median(samples.map((s) => s.bytesPerSec / 1e6)),
    cpuPerGiB: median(samples.map((s) => (s.cpuSec + s.serverCpuSec) / (s.ioBytes / 2 ** 30))),
  };
}

function printTable(results: Map<string, Map<TargetName, Sample[]>>, targets: TargetName[]): void {
  const rows: string[][] = [['workload', 'target', 'IOPS', 'MB/s', 'CPU s/GiB', 'cairn/nbdkit', 'load']];
  for (const [workload, byTarget] of results) {
    const kit = byTarget.get('nbdkit');
    for (const t of targets) {
      const samples = byTarget.get(t);
      if (!samples?.length) continue;
      const s = summarize(samples);
      const ratio = t === 'cairn' && kit?.length ? (s.iops / summarize(kit).iops).toFixed(2) : '';
      const load = samples.map((x) => x.load.toFixed(1)).join('/');
      rows.push([workload, t, Math.round(s.iops).toString(), s.mbps.toFixed(0), s.cpuPerGiB.toFixed(2), ratio, load]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
}

interface Options {
  durationSec: number;
  reps: number;
  json?: string;
  cpuProfDir?: string;
  targets: TargetName[];
  workloads: Workload[];
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '20' },
      reps: { type: 'string', default: '3' },
      quick: { type: 'boolean', default: false },
      json: { type: 'string' },
      'cpu-prof': { type: 'string' },
      targets: { type: 'string', default: TARGETS.join(',') },
      workloads: { type: 'string', default: WORKLOADS.map((w) => w.name).join(',') },
    },
  });
  const targets = values.targets.split(',').filter((t): t is TargetName => (TARGETS as readonly string[]).includes(t));
  const workloads = WORKLOADS.filter((w) => values.workloads.split(',').includes(w.name));
  return {
    durationSec: values.quick ? 5 : Number(values.duration),
    reps: values.quick ? 1 : Number(values.reps),
    json: values.json, cpuProfDir: values['cpu-prof'], targets, workloads,
  };
}

async function main(): Promise<void> {
  const opts = options();
  const dir = await mkdtemp(join(tmpdir(), 'cairn-nbd-bench-'));
  const servers: ServerProcess[] = [];
  let cairn: BenchVolume | undefined;
  if (opts.cpuProfDir) await mkdir(opts.cpuProfDir, { recursive: true });
  const daemon = await BenchCairnd.start('bench', FILE_BYTES, opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : []);
  const cleanup = async (): Promise<void> => {
    await Promise.all(servers.map((s) => stopServer(s)));
    await daemon.stop();
    await rm(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    const file = daemon.file;
    console.log(`cairnd pid ${daemon.pid}; filling volume "bench" (1 GiB) at ${file}; ${opts.reps} x ${opts.durationSec} s per workload and target`);
    await fillFile(file);
    cairn = await daemon.exportVolume();
    const targets = new Map<TargetName, Target>();
    for (const t of opts.targets) {
      if (t === 'raw') targets.set(t, { fio: { kind: 'file', path: file } });
      else if (t === 'cairn') targets.set(t, { fio: { kind: 'nbd', uri: cairn.uri }, pid: cairn.pid });
      else {
        const server = await startServer(serverSpec(t, dir, file));
        servers.push(server);
        targets.set(t, { fio: { kind: 'nbd', uri: `nbd+unix:///?socket=${server.socketPath}` }, pid: server.child.pid });
      }
    }
    const results = new Map<string, Map<TargetName, Sample[]>>();
    for (const w of opts.workloads) {
      const byTarget = new Map<TargetName, Sample[]>(opts.targets.map((t) => [t, []]));
      results.set(w.name, byTarget);
      for (let rep = 0; rep < opts.reps; rep++) {
        for (const t of opts.targets) {
          const sample = await measure(targets.get(t)!, t, w, opts.durationSec, dir);
          await quiesce(file);
          byTarget.get(t)!.push(sample);
          console.log(`  ${w.name} ${t} #${rep + 1}: ${Math.round(sample.iops)} IOPS, ${(sample.bytesPerSec / 1e6).toFixed(0)} MB/s, fio cpu ${sample.cpuSec.toFixed(1)} s, server cpu ${sample.serverCpuSec.toFixed(1)} s, load ${sample.load.toFixed(1)}`);
        }
      }
    }
    printTable(results, opts.targets);
    if (opts.json) await writeFile(opts.json, JSON.stringify(Object.fromEntries([...results].map(([k, v]) => [k, Object.fromEntries(v)])), null, 2));
  } finally {
    await cleanup();
  }
  if (opts.cpuProfDir) await printProfiles(opts.cpuProfDir);
}

async function printProfiles(dir: string): Promise<void> {
  for (const name of (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'))) {
    const { wallSec, top } = await summarizeCpuProfile(join(dir, name));
    console.log(`cairnd's JS thread, ${join(dir, name)} (${wallSec.toFixed(0)} s), self time:`);
    for (const [fn, share] of top) console.log(`  ${(share * 100).toFixed(1).padStart(5)}%  ${fn}`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
