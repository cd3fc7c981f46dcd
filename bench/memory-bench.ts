/**
 * cairnd's resident memory with 100 volumes created and 10 exported, each export having
 * served some I/O from a real client (qemu-io). Prints RSS at each step.
 *   npm run bench:memory [-- --volumes 100 --exported 10]
 */
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { Daemon } from '../test/helpers/daemon.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

function rssMiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024;
}

const volumes = arg('volumes', 100);
const exported = arg('exported', 10);
const d = await Daemon.start({ extraArgs: ['--log-level', 'warn'] });
try {
  const rows: [string, number][] = [['started', rssMiB(d.pid)]];
  const client = d.client();
  for (let i = 0; i < volumes; i++) await client.createVolume(`vol-${String(i).padStart(3, '0')}`, 1024 ** 3);
  rows.push([`${volumes} volumes created`, rssMiB(d.pid)]);
  const uris: string[] = [];
  for (let i = 0; i < exported; i++) uris.push((await client.exportVolume(`vol-${String(i).padStart(3, '0')}`)).uri);
  rows.push([`${exported} exported`, rssMiB(d.pid)]);
  // What kernels and nbdcopy send: requests of up to 2 MiB, many in flight.
  await Promise.all(uris.map((uri) => execa('nbdcopy', ['--', '[', 'nbdkit', 'pattern', 'size=256M', ']', uri])));
  rows.push(['after nbdcopy of 256 MiB into each export', rssMiB(d.pid)]);
  await Promise.all(uris.map((uri) => execa('nbdcopy', [uri, 'null:'])));
  rows.push(['after nbdcopy of each export to null:', rssMiB(d.pid)]);
  // The largest requests the server accepts (32 MiB), one per export at a time.
  await Promise.all(uris.map((uri) => execa('qemu-io', ['-f', 'raw', '-c', 'write -P 0x1 0 32M', '-c', 'read -P 0x1 0 32M', uri])));
  rows.push(['after one 32 MiB write + read on each export', rssMiB(d.pid)]);
  await client.listVolumes();
  rows.push(['after listing every volume', rssMiB(d.pid)]);
  client.close();
  console.log('step                                          cairnd RSS');
  for (const [step, mib] of rows) console.log(`${step.padEnd(46)}${mib.toFixed(1)} MiB`);
} finally {
  await d.destroy();
}
