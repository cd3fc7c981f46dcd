/** Runs one fio job and reads the figures the benchmark reports from its JSON output. */
import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';

export interface Workload {
  name: string;
  rw: 'randwrite' | 'randread' | 'write' | 'read';
  blockSize: string;
  iodepth: number;
}

export interface FioResult {
  iops: number;
  bytesPerSec: number;
  ioBytes: number;
  runtimeSec: number;
  /** Client CPU seconds (fio's usr + sys over the run). */
  cpuSec: number;
  /** Requests completed (reads + writes). */
  ios: number;
  /** fio's completion-latency percentiles (submission to completion) of the busier direction, in µs. */
  clatP50Us: number;
  clatP99Us: number;
  /** The slowest request's completion latency, in µs. */
  clatMaxUs: number;
}

export type FioTarget = { kind: 'nbd'; uri: string } | { kind: 'file'; path: string };

function targetArgs(t: FioTarget): string[] {
  if (t.kind === 'nbd') return ['--ioengine=nbd', `--uri=${t.uri}`];
  return ['--ioengine=libaio', '--direct=1', `--filename=${t.path}`];
}

/**
 * Runs fio for `durationSec`, or until `stop` fires: fio then gets SIGINT, ends its jobs and
 * still writes its figures (over the time it ran).
 */
export async function runFio(target: FioTarget, w: Workload, durationSec: number, outPath: string, stop?: AbortSignal): Promise<FioResult> {
  const args = [
    '--name=bench', `--rw=${w.rw}`, `--bs=${w.blockSize}`, `--iodepth=${w.iodepth}`, '--numjobs=1', '--size=1G',
    `--runtime=${durationSec}`, '--time_based', '--output-format=json', `--output=${outPath}`, ...targetArgs(target),
  ];
  const stderr: string[] = [];
  const code = await new Promise<number | null>((resolve, reject) => {
    const child = spawn('fio', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr.on('data', (d: Buffer) => stderr.push(d.toString()));
    child.on('error', reject);
    child.on('close', resolve);
    stop?.addEventListener('abort', () => child.kill('SIGINT'), { once: true });
  });
  if (code !== 0 && !stop?.aborted) throw new Error(`fio exited with ${code}: ${stderr.join('').slice(-500)}`);
  const text = await readFile(outPath, 'utf8');
  await rm(outPath, { force: true });
  return parseFioJson(text.slice(text.indexOf('{')));
}

interface FioJobSide {
  iops: number;
  bw_bytes: number;
  io_bytes: number;
  total_ios: number;
  runtime: number;
  /** Keys as fio prints them, e.g. "50.000000"; absent when the side did no I/O. */
  clat_ns?: { percentile?: Record<string, number>; max?: number };
}

/** Percentile `key` of one side's completion latency in µs; NaN when fio did not report it. */
function clatUs(side: FioJobSide, key: string): number {
  const ns = side.clat_ns?.percentile?.[key];
  return ns === undefined ? NaN : ns / 1000;
}

export function parseFioJson(text: string): FioResult {
  const doc = JSON.parse(text) as { jobs: { read: FioJobSide; write: FioJobSide; usr_cpu: number; sys_cpu: number; job_runtime: number }[] };
  const job = doc.jobs[0];
  if (!job) throw new Error('fio JSON has no job');
  const runtimeSec = job.job_runtime / 1000;
  // The benchmarks' jobs only read or only write: take the percentiles of the side that did the I/O.
  const busy = job.write.total_ios >= job.read.total_ios ? job.write : job.read;
  return {
    iops: job.read.iops + job.write.iops,
    bytesPerSec: job.read.bw_bytes + job.write.bw_bytes,
    ioBytes: job.read.io_bytes + job.write.io_bytes,
    runtimeSec,
    cpuSec: ((job.usr_cpu + job.sys_cpu) / 100) * runtimeSec,
    ios: job.read.total_ios + job.write.total_ios,
    clatP50Us: clatUs(busy, '50.000000'),
    clatP99Us: clatUs(busy, '99.000000'),
    clatMaxUs: busy.clat_ns?.max === undefined ? NaN : busy.clat_ns.max / 1000,
  };
}
