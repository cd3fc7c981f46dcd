/**
 * NBD benchmark: on one 1 GiB file, the raw file (fio libaio, direct=1), `nbdkit file`,
 * `qemu-nbd -t -e 8 -f raw` and Cairn, each under 4k randwrite/randread at QD32 and 1M
 * sequential write/read at QD8, with fio's nbd engine for every NBD target. Prints IOPS,
 * MB/s, CPU seconds per GiB (fio's + the server's) and Cairn's ratio to nbdkit.
 *
 *   npm run bench:nbd -- [--duration 20] [--reps 3] [--quick] [--dir DIR] [--json OUT]
 *                        [--targets raw,nbdkit,qemu-nbd,cairn] [--workloads 4k-randwrite,...]
 *
 * Cairn is served by bench/serve-cairn.ts (NbdExportServer over openFileDevice) in a child
 * process until cairnd can create and export volumes; then this should run cairnd.
 */
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
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
}

function serverSpec(target: Exclude<TargetName, 'raw'>, dir: string, file: string): ServerSpec {
  const socketPath = join(dir, `${target}.sock`);
  switch (target) {
    case 'nbdkit':
      return { name: target, command: 'nbdkit', args: ['-f', '-U', socketPath, 'file', file], socketPath };
    case 'qemu-nbd':
      return { name: target, command: 'qemu-nbd', args: ['-t', '-e', '8', '-f', 'raw', '-k', socketPath, file], socketPath };
    case 'cairn':
      return {
        name: target, command: process.execPath, cwd: process.cwd(), socketPath,
        args: ['--import', 'tsx', 'bench/serve-cairn.ts', '--file', file, '--socket', socketPath],
      };
  }
}

/** A fully written (not sparse) file, so that the raw target reads real blocks too. */
async function makeFile(path: string): Promise<void> {
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let at = 0; at < FILE_BYTES; at += chunk.length) await fh.write(chunk, 0, chunk.length, at);
  await fh.datasync();
  await fh.close();
}

async function measure(target: TargetName, server: ServerProcess | undefined, file: string, w: Workload, durationSec: number, dir: string): Promise<Sample> {
  const fioTarget: FioTarget = server ? { kind: 'nbd', socketPath: server.socketPath } : { kind: 'file', path: file };
  const pid = server?.child.pid;
  const before = pid ? await cpuSeconds(pid) : 0;
  const r = await runFio(fioTarget, w, durationSec, join(dir, `fio-${target}.json`));
  const after = pid ? await cpuSeconds(pid) : 0;
  return { ...r, serverCpuSec: after - before };
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
  const rows: string[][] = [['workload', 'target', 'IOPS', 'MB/s', 'CPU s/GiB', 'cairn/nbdkit']];
  for (const [workload, byTarget] of results) {
    const kit = byTarget.get('nbdkit');
    const cairn = byTarget.get('cairn');
    for (const t of targets) {
      const samples = byTarget.get(t);
      if (!samples?.length) continue;
      const s = summarize(samples);
      const ratio = t === 'cairn' && kit?.length && cairn?.length ? (s.iops / summarize(kit).iops).toFixed(2) : '';
      rows.push([workload, t, Math.round(s.iops).toString(), s.mbps.toFixed(0), s.cpuPerGiB.toFixed(2), ratio]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
}

function options(): { durationSec: number; reps: number; dir?: string; json?: string; targets: TargetName[]; workloads: Workload[] } {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '20' },
      reps: { type: 'string', default: '3' },
      quick: { type: 'boolean', default: false },
      dir: { type: 'string' },
      json: { type: 'string' },
      targets: { type: 'string', default: TARGETS.join(',') },
      workloads: { type: 'string', default: WORKLOADS.map((w) => w.name).join(',') },
    },
  });
  const targets = values.targets.split(',').filter((t): t is TargetName => (TARGETS as readonly string[]).includes(t));
  const workloads = WORKLOADS.filter((w) => values.workloads.split(',').includes(w.name));
  return {
    durationSec: values.quick ? 5 : Number(values.duration),
    reps: values.quick ? 1 : Number(values.reps),
    dir: values.dir, json: values.json, targets, workloads,
  };
}

async function main(): Promise<void> {
  const opts = options();
  const dir = await mkdtemp(join(opts.dir ?? tmpdir(), 'cairn-nbd-bench-'));
  const file = join(dir, 'disk.img');
  const servers = new Map<TargetName, ServerProcess>();
  const cleanup = async (): Promise<void> => {
    await Promise.all([...servers.values()].map((s) => stopServer(s)));
    await rm(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    console.log(`preparing ${file} (1 GiB); ${opts.reps} x ${opts.durationSec} s per workload and target`);
    await makeFile(file);
    for (const t of opts.targets) if (t !== 'raw') servers.set(t, await startServer(serverSpec(t, dir, file)));
    const results = new Map<string, Map<TargetName, Sample[]>>();
    for (const w of opts.workloads) {
      const byTarget = new Map<TargetName, Sample[]>(opts.targets.map((t) => [t, []]));
      results.set(w.name, byTarget);
      for (let rep = 0; rep < opts.reps; rep++) {
        for (const t of opts.targets) {
          const sample = await measure(t, servers.get(t), file, w, opts.durationSec, dir);
          byTarget.get(t)!.push(sample);
          console.log(`  ${w.name} ${t} #${rep + 1}: ${Math.round(sample.iops)} IOPS, ${(sample.bytesPerSec / 1e6).toFixed(0)} MB/s, fio cpu ${sample.cpuSec.toFixed(1)} s, server cpu ${sample.serverCpuSec.toFixed(1)} s`);
        }
      }
    }
    printTable(results, opts.targets);
    if (opts.json) await writeFile(opts.json, JSON.stringify(Object.fromEntries([...results].map(([k, v]) => [k, Object.fromEntries(v)])), null, 2));
  } finally {
    await cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
