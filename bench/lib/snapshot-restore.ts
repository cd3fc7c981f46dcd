/**
 * Snapshot creation and restore timings (issue 12), each against a reference peer measured
 * in the same run:
 * - creation: a snapshot of an exported, idle volume (10 GiB with 1 GiB written) through the
 *   API client alone and through `cairnctl snapshot create` (a new node process each time),
 *   against `cp --reflink=always` of the volume's device file on the pool's own filesystem
 *   (the backend's floor: one FICLONE);
 * - restore of a snapshot of a 1 GiB volume holding 1 GiB of random data, on the same node (a
 *   reflinked child on the copy's node) and across nodes (one replica required on a node
 *   without a copy, filled over the data channel), from the CreateVolume call until every replica is
 *   in sync, against `cp --reflink=never --sparse=never` of a 1 GiB file on the same disk
 *   followed by an fsync of the copy. The page cache is dropped (sync; drop_caches 3) before
 *   every cp and every restore, so both read from the disk.
 */
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { ApiClient, VolumeMessage } from '../../src/cli/api-client.js';
import type { Cluster } from '../../test/helpers/cluster.js';
import type { CtlResult, LogEvent } from '../../test/helpers/daemon.js';
import { run } from '../../test/helpers/run.js';
import { median, printTable } from './machine.js';
import { syncAll, waitHealthy } from './recovery.js';

/** sync, then drop the page cache, dentries and inodes (root only). */
export async function dropCaches(): Promise<void> {
  await syncAll();
  await writeFile('/proc/sys/vm/drop_caches', '3\n');
}

/** The device file of replica `deviceId` in a file pool, in either layout (xfs-image or direct). */
export function deviceFile(poolDir: string, deviceId: string): string | undefined {
  return [join(poolDir, 'xfs', 'devices', `${deviceId}.img`), join(poolDir, 'devices', `${deviceId}.img`)].find((p) => existsSync(p));
}

/* ------------------------------------------------------------------ creation */

export interface CreationTarget {
  label: string;
  api: ApiClient;
  volume: string;
  /** cairnctl against the daemon that serves the volume. */
  ctl(args: string[]): Promise<CtlResult>;
  /** The volume's first replica's device file (for the reflink reference), if found. */
  deviceFile: string | undefined;
}

export interface CreationSample {
  label: string;
  apiMs: number[];
  ctlMs: number[];
  pauseUs: number[];
  /** cp --reflink=always of the device file; empty when the pool's filesystem cannot reflink. */
  reflinkMs: number[];
  reflinkError: string | undefined;
}

export async function measureCreation(t: CreationTarget, reps: number): Promise<CreationSample> {
  const s: CreationSample = { label: t.label, apiMs: [], ctlMs: [], pauseUs: [], reflinkMs: [], reflinkError: undefined };
  const names: string[] = [];
  for (let i = 0; i < reps; i++) {
    const name = `${t.volume}-c${i}`;
    const t0 = performance.now();
    const snap = await t.api.createSnapshot(name, t.volume);
    s.apiMs.push(performance.now() - t0);
    s.pauseUs.push(snap.pauseUs);
    names.push(name);
    const ctlName = `${t.volume}-cli${i}`;
    const t1 = performance.now();
    const r = await t.ctl(['-o', 'json', 'snapshot', 'create', ctlName, '--volume', t.volume]);
    const ms = performance.now() - t1;
    if (r.exitCode !== 0) throw new Error(`cairnctl snapshot create ${ctlName} failed: ${r.stderr}`);
    s.ctlMs.push(ms);
    names.push(ctlName);
    if (t.deviceFile && !s.reflinkError) {
      const dst = join(t.deviceFile, '..', '..', `bench-reflink-${i}.img`);
      const t2 = performance.now();
      try {
        await run('cp', ['--reflink=always', t.deviceFile, dst], { timeoutMs: 600_000 });
        s.reflinkMs.push(performance.now() - t2);
      } catch (err) {
        s.reflinkError = err instanceof Error ? err.message.split('\n')[0] : String(err);
      } finally {
        await rm(dst, { force: true });
      }
    }
  }
  for (const n of names) await t.api.deleteSnapshot(n).catch((err: unknown) => console.warn(`  warning: deleting snapshot ${n} failed: ${String(err)}`));
  return s;
}

/** Prints the creation table and returns the goal lines (creation < 200 ms). */
export function printCreation(samples: CreationSample[], reps: number): string[] {
  console.log(`\nSnapshot creation of an exported, idle 10 GiB volume with 1 GiB written (medians and max of ${reps}; the reference is one FICLONE of the device file)`);
  const rows = [['target', 'what', 'median ms', 'max ms', 'x reflink']];
  const goals: string[] = [];
  for (const s of samples) {
    const ref = s.reflinkMs.length ? median(s.reflinkMs) : undefined;
    const line = (what: string, xs: number[]): string[] => [s.label, what, median(xs).toFixed(1), Math.max(...xs).toFixed(1), ref ? (median(xs) / ref).toFixed(1) : ''];
    rows.push(
      line('CreateSnapshot through the API client', s.apiMs),
      line('cairnctl snapshot create (process start included)', s.ctlMs),
      line('of it, the barrier pause (engine)', s.pauseUs.map((u) => u / 1000)),
      ref ? line('cp --reflink=always of the device file (reference)', s.reflinkMs) : [s.label, `cp --reflink=always: ${s.reflinkError ?? 'device file not found'}`, '', '', ''],
    );
    const api = median(s.apiMs);
    goals.push(`snapshot creation, ${s.label}: ${api.toFixed(0)} ms through the API, ${median(s.ctlMs).toFixed(0)} ms with cairnctl (goal < 200 ms: ${api < 200 ? 'met' : 'MISSED'} through the API, ${median(s.ctlMs) < 200 ? 'met' : 'MISSED'} with cairnctl)`);
  }
  printTable(rows);
  return goals;
}

/* ------------------------------------------------------------------ restore */

export interface RestoreSample {
  kind: 'cp' | 'same node' | 'across nodes';
  /** From the call (or cp's start) until every replica is in sync (or the copy is fsynced). */
  ms: number;
  /** The CreateVolume call alone. */
  callMs: number | undefined;
  replicas: string;
  /** The engine's 'replica rebuild finished': its own copy + verify time and the bytes it copied. */
  rebuildMs: number | undefined;
  copiedBytes: number | undefined;
}

export interface RestoreContext {
  cluster: Cluster;
  /** API of node 0, which holds the snapshot's only copy. */
  api: ApiClient;
  snapshot: string;
  sizeBytes: number;
  /** A file of the same size and data on the same disk (for cp). */
  file: string;
  dir: string;
}

export async function timeCpHonest(file: string, dst: string): Promise<RestoreSample> {
  await rm(dst, { force: true });
  await dropCaches();
  const t0 = performance.now();
  await run('cp', ['--reflink=never', '--sparse=never', file, dst], { timeoutMs: 600_000 });
  await run('sync', [dst], { timeoutMs: 600_000 });
  const ms = performance.now() - t0;
  await rm(dst, { force: true });
  return { kind: 'cp', ms, callMs: undefined, replicas: '', rebuildMs: undefined, copiedBytes: undefined };
}

function rebuildEvent(ctx: RestoreContext, marks: number[], v: VolumeMessage): LogEvent | undefined {
  const ids = new Set(v.replicas.map((r) => r.id));
  for (let i = 0; i < ctx.cluster.size; i++) {
    const e = ctx.cluster.events(i, marks[i]).find((x) => x.msg === 'replica rebuild finished' && ids.has(String(x.replica)));
    if (e) return e;
  }
  return undefined;
}

/**
 * Restores the snapshot into a new 1-replica volume and waits until it is healthy; deletes it
 * after. Same node: on node 0, the copy's node (a reflinked child). Across nodes: required on
 * node 1, which holds no copy (filled over the data channel from a seed replica on node 0).
 */
export async function timeRestore(ctx: RestoreContext, name: string, kind: 'same node' | 'across nodes'): Promise<RestoreSample> {
  await dropCaches();
  const marks = Array.from({ length: ctx.cluster.size }, (_, i) => ctx.cluster.node(i).logMark());
  const t0 = performance.now();
  const place = kind === 'same node' ? { preferredNode: ctx.cluster.nodeName(0) } : { requiredNodes: [ctx.cluster.nodeName(1)] };
  await ctx.api.createVolume(name, 0, { replicas: 1, sourceSnapshot: ctx.snapshot, ...place });
  const callMs = performance.now() - t0;
  const v = await waitHealthy(ctx.api, name, 600_000, 20);
  const ms = performance.now() - t0;
  const e = rebuildEvent(ctx, marks, v);
  await ctx.api.deleteVolume(name, true);
  return {
    kind, ms, callMs, replicas: v.replicas.map((r) => r.nodeName).join('+'),
    rebuildMs: typeof e?.durationMs === 'number' ? e.durationMs : undefined,
    copiedBytes: typeof e?.copiedBytes === 'number' ? e.copiedBytes : undefined,
  };
}

export function describeRestore(s: RestoreSample, sizeBytes: number): string {
  const extra = s.kind === 'cp' ? '' : `, call ${s.callMs?.toFixed(0)} ms, replicas on ${s.replicas}${s.rebuildMs !== undefined ? `, engine rebuild ${s.rebuildMs} ms (${((s.copiedBytes ?? 0) / 2 ** 20).toFixed(0)} MiB copied)` : ''}`;
  return `${s.kind}: ${s.ms.toFixed(0)} ms, ${(sizeBytes / s.ms / 1e3).toFixed(0)} MB/s${extra}`;
}

/** Prints the restore table and returns the goal line (across nodes >= 0.8 x cp). */
export function printRestore(samples: RestoreSample[], sizeBytes: number, reps: number): string[] {
  const of = (k: RestoreSample['kind']): RestoreSample[] => samples.filter((s) => s.kind === k);
  const mbps = (ms: number): number => sizeBytes / ms / 1e3;
  const cpMbps = mbps(median(of('cp').map((s) => s.ms)));
  console.log(`\nRestore of a snapshot of ${(sizeBytes / 2 ** 20).toFixed(0)} MiB of random data (medians of ${reps}; page cache dropped before each; time = CreateVolume call .. every replica in sync; `
    + 'across nodes = a 1-replica restore required on a node without a copy, filled over the data channel from a seed replica on the copy node)');
  const rows = [['what', 'time ms', 'MB/s', 'x cp', 'call ms', 'engine rebuild ms']];
  rows.push(['cp --reflink=never --sparse=never + fsync of the copy, same disk', median(of('cp').map((s) => s.ms)).toFixed(0), cpMbps.toFixed(0), '1.00', '', '']);
  for (const k of ['same node', 'across nodes'] as const) {
    const xs = of(k);
    if (xs.length === 0) continue;
    const ms = median(xs.map((s) => s.ms));
    const rebuild = xs.map((s) => s.rebuildMs).filter((x): x is number => x !== undefined);
    rows.push([`restore ${k} (${xs[0]!.replicas})`, ms.toFixed(0), mbps(ms).toFixed(0), (mbps(ms) / cpMbps).toFixed(2), median(xs.map((s) => s.callMs ?? NaN)).toFixed(0),
      rebuild.length ? median(rebuild).toFixed(0) : '']);
  }
  printTable(rows, 1);
  const cross = of('across nodes');
  if (cross.length === 0) return [];
  const ratio = mbps(median(cross.map((s) => s.ms))) / cpMbps;
  return [`cross-node restore / cp: ${ratio.toFixed(2)} (goal >= 0.8: ${ratio >= 0.8 ? 'met' : 'MISSED'})`];
}
