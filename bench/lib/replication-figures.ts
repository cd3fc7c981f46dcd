/**
 * The replication bench's derived figures (issue 11): QD1 latency per replica count, the CPU
 * one remote replica adds to a replicated write (engine side and replica side), and the
 * issue's goals, each marked met or missed. Pure functions over the fio samples, so the
 * bench file keeps only the running of things.
 */
import type { FioResult } from './fio.js';
import { median, printTable } from './machine.js';
import type { ThreadCpu } from './thread-cpu.js';

const GiB = 2 ** 30;

export interface FioSample extends FioResult {
  /** CPU seconds of the server side: nbdkit, or every cairnd. */
  serverCpuSec: number;
  /** Of serverCpuSec, per cairnd node (node-0 is the engine's). */
  cpuByNode: number[];
  /** The same split into each process's main thread and its other threads (GC helpers, libuv pool). */
  threadsByNode: ThreadCpu[];
  load: number;
  /** The volume was not healthy after the run (a replica was faulted): the figure is not an rf=N figure. */
  degraded: boolean;
}

/** What the figures need to know of a cairn target: its replica count and where its replicas are. */
export interface ReplicatedTarget {
  label: string;
  rf: number;
  /** Node indexes of the replicas other than the engine's (node-0). */
  remoteNodes: number[];
}

/** "<what>: <figure> (goal <goal>: met|MISSED)", the form every goal line of the bench takes. */
export function goalLine(what: string, figure: string, goal: string, met: boolean): string {
  return `${what}: ${figure} (goal ${goal}: ${met ? 'met' : 'MISSED'})`;
}

/* ------------------------------------------------------------------ CPU per remote replica */

/** CPU of one sample split by role, per unit of work (µs per request, or s per GiB). */
interface CpuShares {
  engine: number;
  /** Every remote replica's node together. */
  remotes: number;
  /** Nodes that hold no replica of the volume (their background: leases, etcd watches). */
  idle: number;
  all: number;
}

type Unit = 'us-per-io' | 's-per-GiB';

function shares(s: FioSample, t: ReplicatedTarget, unit: Unit): CpuShares {
  const per = (sec: number): number => (unit === 'us-per-io' ? (sec * 1e6) / s.ios : sec / (s.ioBytes / GiB));
  const remotes = t.remoteNodes.reduce((sum, i) => sum + (s.cpuByNode[i] ?? 0), 0);
  const engine = s.cpuByNode[0] ?? 0;
  return { engine: per(engine), remotes: per(remotes), idle: per(s.serverCpuSec - engine - remotes), all: per(s.serverCpuSec) };
}

function medianShares(samples: FioSample[], t: ReplicatedTarget, unit: Unit): CpuShares {
  const all = samples.map((s) => shares(s, t, unit));
  const m = (f: (c: CpuShares) => number): number => median(all.map(f));
  return { engine: m((c) => c.engine), remotes: m((c) => c.remotes), idle: m((c) => c.idle), all: m((c) => c.all) };
}

export interface PerRemoteCpu {
  rf: number;
  /** The engine's extra CPU over rf=1's engine, per remote replica. */
  engineSide: number;
  /** A remote replica's own daemon. */
  replicaSide: number;
  /** Every cairnd at rf=N minus every cairnd at rf=1, per remote replica: the "today about 70 µs" figure. */
  total: number;
}

/**
 * Prints every cairnd's CPU per request (or per GiB) by role for each replica count, and
 * what one remote replica adds over rf=1; returns the per-remote figures (empty without rf=1).
 */
export function printCpuPerReplica(title: string, unit: Unit, byTarget: Map<string, FioSample[]>, targets: ReplicatedTarget[]): PerRemoteCpu[] {
  const digits = unit === 'us-per-io' ? 1 : 2;
  const one = targets.find((t) => t.rf === 1);
  const base = one && byTarget.get(one.label)?.length ? medianShares(byTarget.get(one.label)!, one, unit) : undefined;
  const rows = [['target', 'engine node', 'remote nodes', 'idle nodes', 'all cairnd', 'per remote: engine side', 'replica side', 'total (all - rf=1)']];
  const out: PerRemoteCpu[] = [];
  for (const t of targets) {
    const samples = byTarget.get(t.label);
    if (!samples?.length) continue;
    const c = medianShares(samples, t, unit);
    const remotes = t.remoteNodes.length;
    const row = [t.label, c.engine.toFixed(digits), remotes ? c.remotes.toFixed(digits) : '', c.idle.toFixed(digits), c.all.toFixed(digits)];
    if (remotes && base) {
      const r: PerRemoteCpu = { rf: t.rf, engineSide: (c.engine - base.engine) / remotes, replicaSide: c.remotes / remotes, total: (c.all - base.all) / remotes };
      out.push(r);
      row.push(r.engineSide.toFixed(digits), r.replicaSide.toFixed(digits), r.total.toFixed(digits));
    }
    rows.push(row);
  }
  console.log(`\n${title}`);
  printTable(rows, 1);
  if (!base) console.log('  (no rf=1 run: the per-remote-replica figures need it; add 1 to --rf)');
  return out;
}

/* ------------------------------------------------------------------ QD1 latency */

export interface LatencyRow {
  label: string;
  rf: number | undefined;
  p50Us: number;
  p99Us: number;
}

/** Medians over the repetitions of fio's completion-latency p50 and p99; prints them with the difference to rf=1. */
export function printLatency(title: string, byTarget: Map<string, FioSample[]>, rfOf: (label: string) => number | undefined): LatencyRow[] {
  const rows: LatencyRow[] = [...byTarget].filter(([, s]) => s.length > 0).map(([label, s]) => ({
    label, rf: rfOf(label), p50Us: median(s.map((x) => x.clatP50Us)), p99Us: median(s.map((x) => x.clatP99Us)),
  }));
  const one = rows.find((r) => r.rf === 1);
  const iops = (label: string): string => Math.round(median(byTarget.get(label)!.map((x) => x.iops))).toString();
  const table = [['target', 'p50 µs', 'p99 µs', 'IOPS', 'p50 - rf=1 p50', 'load']];
  for (const r of rows) {
    const diff = r.rf && one ? `${r.p50Us - one.p50Us >= 0 ? '+' : ''}${(r.p50Us - one.p50Us).toFixed(0)} µs` : '';
    table.push([r.label, r.p50Us.toFixed(0), r.p99Us.toFixed(0), iops(r.label), diff, byTarget.get(r.label)!.map((x) => x.load.toFixed(1)).join('/')]);
  }
  console.log(`\n${title}`);
  printTable(table, 1);
  return rows;
}

/* ------------------------------------------------------------------ goals */

/** The goals on the fio figures, for whichever workloads and replica counts ran. */
export function fioGoals(input: {
  iopsRatio: (workload: string, rf: number) => number | undefined;
  cpu4k: PerRemoteCpu[];
  cpu1M: PerRemoteCpu[];
  latency: LatencyRow[];
}): string[] {
  const goals: string[] = [];
  const ratio = (workload: string, rf: number, min: number, what: string): void => {
    const r = input.iopsRatio(workload, rf);
    if (r !== undefined) goals.push(goalLine(what, r.toFixed(2), `>= ${min}`, r >= min));
  };
  ratio('4k-randwrite', 3, 0.6, '4k randwrite QD32, rf=3 / rf=1');
  ratio('4k-randwrite', 2, 0.75, '4k randwrite QD32, rf=2 / rf=1');
  for (const c of input.cpu4k) {
    goals.push(goalLine(`4k randwrite QD32, CPU per remote replica per write at rf=${c.rf} (engine ${c.engineSide.toFixed(1)} + replica ${c.replicaSide.toFixed(1)})`,
      `${c.total.toFixed(1)} µs`, '<= 10 µs', c.total <= 10));
  }
  ratio('1M-write', 3, 0.3, '1M seq write QD8, rf=3 / rf=1 (peers as configured)');
  for (const c of input.cpu1M) {
    goals.push(goalLine(`1M seq write, CPU per remote replica at rf=${c.rf} (engine ${c.engineSide.toFixed(2)} + replica ${c.replicaSide.toFixed(2)})`,
      `${c.total.toFixed(2)} CPU s/GiB`, '<= 1.5', c.total <= 1.5));
  }
  const one = input.latency.find((r) => r.rf === 1);
  const three = input.latency.find((r) => r.rf === 3);
  if (one && three) {
    const diff = three.p50Us - one.p50Us;
    goals.push(goalLine('QD1 4k write p50, rf=3 - rf=1', `${diff.toFixed(0)} µs (${three.p50Us.toFixed(0)} against ${one.p50Us.toFixed(0)})`, '<= +100 µs', diff <= 100));
  }
  return goals;
}
