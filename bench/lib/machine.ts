/**
 * Facts about the machine a benchmark ran on, printed with its results: CPUs, memory,
 * kernel, the filesystem under the data, tool versions and the load average.
 */
import { execFileSync } from 'node:child_process';
import { cpus, loadavg, release, totalmem } from 'node:os';

function firstLine(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!.trim();
  } catch {
    return 'unknown';
  }
}

/** One line per fact, e.g. "cpus: 2 x AMD EPYC". */
export function machineFacts(dataPath: string): string[] {
  const cpuList = cpus();
  return [
    `cpus: ${cpuList.length} x ${cpuList[0]?.model ?? 'unknown'} (shared by the client, every cairnd and etcd)`,
    `memory: ${(totalmem() / 2 ** 30).toFixed(1)} GiB; kernel ${release()}; node ${process.version}`,
    `filesystem under ${dataPath}: ${firstLine('findmnt', ['-n', '-o', 'FSTYPE,SOURCE', '-T', dataPath])}`,
    `${firstLine('fio', ['--version'])}; ${firstLine('nbdkit', ['--version'])}; ${firstLine('nbdcopy', ['--version'])}; ${firstLine('etcd', ['--version'])}`,
    `load average now: ${loadAverage()}`,
  ];
}

export function loadAverage(): string {
  return loadavg().map((l) => l.toFixed(2)).join(' ');
}

/** The middle value; for an even count, the mean of the two middle ones. */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  if (s.length === 0) return NaN;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Prints rows as a table, the first row the header; the first `textColumns` columns left-aligned. */
export function printTable(rows: string[][], textColumns = 2): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) console.log(r.map((c, i) => (i < textColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd());
}
