/**
 * The snapshot barrier's I/O pause under load (issue 12): fio's nbd engine writes 4k at
 * random, QD32, to an exported volume while snapshots are taken through the daemon's API
 * (src/cli/api-client.ts), one every `intervalMs`; the same fio run without snapshots is the
 * reference. Per snapshot: the engine's own pause (pauseUs in the reply: the gate closed ..
 * reopened), the API call's wall time, the engine's split from its 'volume snapshot taken'
 * log line (drain and cut under the gate, then the fill), and from the file pool's 'snapshot
 * copy filled after its cut' line of the engine's node: the longest a write waited for its
 * chunk to be copied first, and the longest single clone call. Client side: fio's IOPS, p99
 * and slowest completion with and without snapshots. The snapshots are deleted after the run.
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { ApiClient } from '../../src/cli/api-client.js';
import type { LogEvent } from '../../test/helpers/daemon.js';
import { runFio, type FioResult, type Workload } from './fio.js';
import { median, printTable } from './machine.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const PAUSE_WORKLOAD: Workload = { name: '4k-randwrite', rw: 'randwrite', blockSize: '4k', iodepth: 32 };

export interface PauseTarget {
  label: string;
  rf: number;
  /** API of the engine's node. */
  api: ApiClient;
  volume: string;
  uri: string;
  /** A log position of the engine's node, and its JSON events after one. */
  logMark(): number;
  events(since: number): LogEvent[];
}

export interface PauseOptions {
  count: number;
  intervalMs: number;
  /** fio runs this long before the first snapshot and after the last one. */
  marginMs: number;
  dir: string;
}

export interface SnapshotTiming {
  pauseUs: number;
  /** The CreateSnapshot call as the API client saw it (barrier, copies, the store's writes). */
  apiMs: number;
  drainMs: number | undefined;
  /** Under the gate, after the drain: until every replica's copy was cut. */
  cutMs: number | undefined;
  /** After the gate opened: until every copy was whole. */
  fillMs: number | undefined;
  /** The engine node's copy: the longest a write waited for its chunk, and the slowest clone call (file pool). */
  maxWaitMs: number | undefined;
  maxCallMs: number | undefined;
}

export interface PauseSample {
  label: string;
  rf: number;
  snapshots: SnapshotTiming[];
  /** Snapshot calls that failed (their error messages). */
  failures: string[];
  withSnapshots: FioResult;
  without: FioResult;
}

/** The value at fraction q (0..1) of the sorted values, nearest rank. */
export function percentile(values: number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

function num(e: LogEvent | undefined, key: string): number | undefined {
  return typeof e?.[key] === 'number' ? e[key] : undefined;
}

/**
 * Takes `count` snapshots of the target, one every intervalMs (the next starts at once if a
 * call ran longer), none started after `stopAt` (performance.now()): every one is under load.
 */
async function snapshotLoop(t: PauseTarget, opts: PauseOptions, tag: string, stopAt: number): Promise<{ names: string[]; replies: { id: string; pauseUs: number; apiMs: number }[]; failures: string[] }> {
  const names: string[] = [];
  const replies: { id: string; pauseUs: number; apiMs: number }[] = [];
  const failures: string[] = [];
  const start = performance.now();
  for (let i = 0; i < opts.count; i++) {
    const wait = start + i * opts.intervalMs - performance.now();
    if (wait > 0) await sleep(wait);
    if (performance.now() > stopAt) {
      console.warn(`  ${t.label}: fio's run ends soon: ${i} of ${opts.count} snapshots taken under load`);
      break;
    }
    const name = `${t.volume}-${tag}-${i}`;
    const t0 = performance.now();
    try {
      const s = await t.api.createSnapshot(name, t.volume);
      replies.push({ id: s.id, pauseUs: s.pauseUs, apiMs: performance.now() - t0 });
      names.push(name);
    } catch (err) {
      failures.push(err instanceof Error ? err.message : String(err));
    }
  }
  return { names, replies, failures };
}

/**
 * One fio run with snapshots, stopped when the last snapshot returned (every snapshot is
 * taken under load), then one without them on the same volume for as long.
 */
export async function measurePause(t: PauseTarget, opts: PauseOptions): Promise<PauseSample> {
  const limitSec = Math.ceil((2 * opts.marginMs + 4 * opts.count * opts.intervalMs) / 1000);
  const fioOut = join(opts.dir, `fio-pause-${t.rf}.json`);
  const mark = t.logMark();
  const stop = new AbortController();
  const fioStart = performance.now();
  const fio = runFio({ kind: 'nbd', uri: t.uri }, PAUSE_WORKLOAD, limitSec, fioOut, stop.signal);
  const stopAt = fioStart + limitSec * 1000 - opts.marginMs;
  // fio starts its clock once connected; the margin covers that too.
  const loop = sleep(opts.marginMs).then(async () => {
    const done = await snapshotLoop(t, opts, `p${Date.now().toString(36)}`, stopAt);
    await sleep(opts.marginMs);
    stop.abort();
    return done;
  });
  const [withSnapshots, { names, replies, failures }] = await Promise.all([fio, loop]);
  const without = await runFio({ kind: 'nbd', uri: t.uri }, PAUSE_WORKLOAD, Math.max(1, Math.round(withSnapshots.runtimeSec)), fioOut);
  const events = t.events(mark);
  const taken = events.filter((e) => e.msg === 'volume snapshot taken');
  const fills = events.filter((e) => e.msg === 'snapshot copy filled after its cut');
  const snapshots = replies.map((r): SnapshotTiming => {
    const e = taken.find((x) => x.snapshot === r.id);
    const f = fills.find((x) => x.device === r.id);
    return {
      pauseUs: r.pauseUs, apiMs: r.apiMs, drainMs: num(e, 'drainMs'), cutMs: num(e, 'cutMs'), fillMs: num(e, 'fillMs'),
      maxWaitMs: num(f, 'maxWaitMs'), maxCallMs: num(f, 'maxCallMs'),
    };
  });
  for (const n of names) await t.api.deleteSnapshot(n).catch((err: unknown) => console.warn(`  warning: deleting snapshot ${n} failed: ${String(err)}`));
  return { label: t.label, rf: t.rf, snapshots, failures, withSnapshots, without };
}

export function describePause(s: PauseSample): string {
  const p = s.snapshots.map((x) => x.pauseUs / 1000);
  return `${s.label}: ${s.snapshots.length} snapshots${s.failures.length ? ` (${s.failures.length} FAILED: ${s.failures[0]})` : ''}, pause p50 ${percentile(p, 0.5).toFixed(1)} ms, `
    + `max ${Math.max(...p).toFixed(1)} ms; fio ${Math.round(s.withSnapshots.iops)} IOPS with, ${Math.round(s.without.iops)} without`;
}

/** Prints the pause table and returns the goal lines (pause p99 < 20 ms for a single volume). */
export function printPause(samples: PauseSample[], opts: PauseOptions): string[] {
  const ms = (us: number): string => (us / 1000).toFixed(1);
  const fmt = (v: number | undefined): string => (v === undefined || Number.isNaN(v) ? '?' : v.toFixed(1));
  console.log(`\nBarrier pause under 4k random write QD32 (fio nbd engine), ${opts.count} snapshots one every ${opts.intervalMs} ms through the API; `
    + 'engine = pauseUs of the reply (gate closed .. reopened); drain/cut/fill = medians from the engine\'s log; write wait = the longest a write waited for its chunk to be copied first, '
    + 'per snapshot (engine node\'s copy); clone call = the slowest FICLONERANGE run; fio figures over the whole run, with snapshots vs the same run without');
  const rows = [['target', 'what', 'p50', 'p99', 'max', 'reference', 'ratio']];
  for (const s of samples) {
    const pause = s.snapshots.map((x) => x.pauseUs);
    const api = s.snapshots.map((x) => x.apiMs * 1000);
    const med = (f: (x: SnapshotTiming) => number | undefined): number | undefined => {
      const v = s.snapshots.map(f).filter((x): x is number => x !== undefined);
      return v.length ? median(v) : undefined;
    };
    const series = (f: (x: SnapshotTiming) => number | undefined): string[] => {
      const v = s.snapshots.map(f).filter((x): x is number => x !== undefined);
      return v.length ? [fmt(percentile(v, 0.5)), fmt(percentile(v, 0.99)), fmt(Math.max(...v))] : ['-', '-', '-'];
    };
    const w = s.withSnapshots;
    const o = s.without;
    rows.push(
      [s.label, 'engine pause, ms', ms(percentile(pause, 0.5)), ms(percentile(pause, 0.99)), ms(Math.max(...pause)), 'goal p99 20', (percentile(pause, 0.99) / 20_000).toFixed(2)],
      [s.label, 'CreateSnapshot call, ms', ms(percentile(api, 0.5)), ms(percentile(api, 0.99)), ms(Math.max(...api)), '', ''],
      [s.label, 'drain/cut/fill median, ms', `${fmt(med((x) => x.drainMs))}/${fmt(med((x) => x.cutMs))}/${fmt(med((x) => x.fillMs))}`, '', '', '', ''],
      [s.label, 'write wait for its chunk, ms', ...series((x) => x.maxWaitMs), '', ''],
      [s.label, 'slowest clone call, ms', ...series((x) => x.maxCallMs), '', ''],
      [s.label, 'fio clat with snapshots, ms', ms(w.clatP50Us), ms(w.clatP99Us), ms(w.clatMaxUs), `without: ${ms(o.clatP50Us)}/${ms(o.clatP99Us)}/${ms(o.clatMaxUs)}`, (w.clatMaxUs / o.clatMaxUs).toFixed(2)],
      [s.label, 'fio IOPS with snapshots', Math.round(w.iops).toString(), '', '', `without: ${Math.round(o.iops)}`, (w.iops / o.iops).toFixed(2)],
    );
  }
  printTable(rows);
  return samples.map((s) => {
    const p99 = percentile(s.snapshots.map((x) => x.pauseUs), 0.99) / 1000;
    const failed = s.failures.length ? `; ${s.failures.length} snapshot(s) FAILED` : '';
    return `barrier pause p99, ${s.label}: ${p99.toFixed(1)} ms (goal < 20 ms: ${p99 < 20 ? 'met' : 'MISSED'})${failed}`;
  });
}
