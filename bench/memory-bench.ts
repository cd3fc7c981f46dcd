/**
 * cairnd's resident memory with 100 volumes created and 10 exported, each export then
 * serving I/O from real clients (nbdcopy, qemu-io) on all exports at once. Prints, for each
 * step, the highest RSS sampled while it ran (every 20 ms) and the RSS after it, then
 * cairnd's lifetime peak (VmHWM). Uses the compiled dist/ (npm run build).
 *   npm run bench:memory [-- --volumes 100 --exported 10]
 */
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { Daemon } from '../test/helpers/daemon.js';
import { checkBuild } from './lib/cairnd.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

function statusMiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024;
}

const rssMiB = (pid: number): number => statusMiB(pid, 'VmRSS');

/** Runs `step`, sampling the RSS meanwhile; returns the highest sample and the RSS after. */
async function sampled(pid: number, step: () => Promise<unknown>): Promise<[number, number]> {
  let peak = rssMiB(pid);
  const timer = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 20);
  try {
    await step();
  } finally {
    clearInterval(timer);
  }
  const after = rssMiB(pid);
  return [Math.max(peak, after), after];
}

const volumes = arg('volumes', 100);
const exported = arg('exported', 10);
checkBuild();
const d = await Daemon.start({ extraArgs: ['--log-level', 'warn'] });
try {
  const rows: [string, number, number][] = [['started', rssMiB(d.pid), rssMiB(d.pid)]];
  const client = d.client();
  const name = (i: number): string => `vol-${String(i).padStart(3, '0')}`;
  const step = async (label: string, run: () => Promise<unknown>): Promise<void> => {
    rows.push([label, ...(await sampled(d.pid, run))]);
  };
  await step(`${volumes} volumes created`, async () => {
    for (let i = 0; i < volumes; i++) await client.createVolume(name(i), 1024 ** 3);
  });
  const uris: string[] = [];
  await step(`${exported} exported`, async () => {
    for (let i = 0; i < exported; i++) uris.push((await client.exportVolume(name(i))).uri);
  });
  // What kernels and nbdcopy send: requests of up to 2 MiB, many in flight (4 connections
  // x 64 requests per export), on every export at once.
  await step('nbdcopy of 256 MiB into each export', () =>
    Promise.all(uris.map((uri) => execa('nbdcopy', ['--', '[', 'nbdkit', 'pattern', 'size=256M', ']', uri]))));
  await step('nbdcopy of each export to null:', () => Promise.all(uris.map((uri) => execa('nbdcopy', [uri, 'null:']))));
  // The largest requests the server accepts (32 MiB), one per export at a time.
  await step('one 32 MiB write + read on each export', () =>
    Promise.all(uris.map((uri) => execa('qemu-io', ['-f', 'raw', '-c', 'write -P 0x1 0 32M', '-c', 'read -P 0x1 0 32M', uri]))));
  await step('listing every volume', () => client.listVolumes());
  client.close();
  console.log(`${'step'.padEnd(42)}${'peak RSS'.padStart(12)}${'RSS after'.padStart(12)}`);
  for (const [label, peak, after] of rows) console.log(`${label.padEnd(42)}${`${peak.toFixed(1)} MiB`.padStart(12)}${`${after.toFixed(1)} MiB`.padStart(12)}`);
  console.log(`cairnd's peak RSS over the whole run (VmHWM): ${statusMiB(d.pid, 'VmHWM').toFixed(1)} MiB`);
} finally {
  await d.destroy();
}
