/**
 * The "half-empty volume rebuilds in half the time" figure (issue 11): two rf=2 volumes of
 * the same size, one written in full and one in its first half only (the rest never
 * written), each given a third replica (`volume modify --replicas 3`), which the engine
 * builds from scratch on the third node. The engine's 'replica rebuild finished' line gives
 * the copy + verify time and the bytes it copied and discarded.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ApiClient } from '../../src/cli/api-client.js';
import type { Cluster } from '../../test/helpers/cluster.js';
import { printTable } from './machine.js';
import { copyToExport, waitHealthy, writeRandomFile } from './recovery.js';
import { goalLine } from './replication-figures.js';

export interface SparseRebuildSample {
  fill: number;
  durationMs: number;
  /** Of it, the checksum comparison. */
  verifyMs: number;
  copiedBytes: number;
  discardedBytes: number;
}

async function addReplica(cluster: Cluster, api: ApiClient, dir: string, sizeBytes: number, fill: number): Promise<SparseRebuildSample> {
  const name = `bench-add-${Math.round(fill * 100)}`;
  const file = join(dir, `${name}.img`);
  await writeRandomFile(file, Math.round(sizeBytes * fill));
  await cluster.createVolume(name, String(sizeBytes), 2, 0, ['--prefer-node', cluster.nodeName(0)]);
  const exp = await cluster.exportVolume(0, name);
  await copyToExport(file, exp.uri);
  await rm(file, { force: true });
  const mark = cluster.node(0).logMark();
  await api.modifyVolume(name, { replicas: 3 });
  await waitHealthy(api, name, 600_000);
  const done = cluster.events(0, mark).find((e) => e.msg === 'replica rebuild finished');
  if (!done) throw new Error(`no 'replica rebuild finished' in node-0's log for ${name}`);
  await api.deleteVolume(name, true).catch(() => undefined);
  return { fill, durationMs: Number(done.durationMs), verifyMs: Number(done.verifyMs), copiedBytes: Number(done.copiedBytes), discardedBytes: Number(done.discardedBytes ?? 0) };
}

/** Runs the full and the half-written case once each, prints them and adds the goal line. */
export async function sparseRebuildPart(cluster: Cluster, api: ApiClient, dir: string, sizeBytes: number, goals: string[]): Promise<SparseRebuildSample[]> {
  const samples: SparseRebuildSample[] = [];
  for (const fill of [1, 0.5]) samples.push(await addReplica(cluster, api, dir, sizeBytes, fill));
  const [full, half] = samples as [SparseRebuildSample, SparseRebuildSample];
  const mib = (b: number): string => (b / 2 ** 20).toFixed(0);
  console.log(`\nA new replica built from scratch (${mib(sizeBytes)} MiB volume, rf 2 -> 3, --rebuild-rate 0; the engine's copy + verify time)`);
  printTable([
    ['volume', 'time', 'of it verify', 'copied MiB', 'discarded MiB', 'x full'],
    ...samples.map((s) => [`${Math.round(s.fill * 100)}% written`, `${s.durationMs} ms`, `${s.verifyMs} ms`, mib(s.copiedBytes), mib(s.discardedBytes),
      (s.durationMs / full.durationMs).toFixed(2)]),
  ], 1);
  const ratio = half.durationMs / full.durationMs;
  goals.push(goalLine('half-written volume / full volume, time to build a new replica', ratio.toFixed(2), '<= 0.5', ratio <= 0.5));
  return samples;
}
