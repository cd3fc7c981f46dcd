/**
 * The write barrier's pause, for /metrics: one histogram for the whole process,
 * `cairn_snapshot_barrier_pause_seconds` (how long new writes waited at each snapshot,
 * failed ones included). Buckets are cumulative when exposed, as Prometheus wants them.
 */

/** Upper bounds of the pause buckets, in seconds (the last bucket is +Inf). */
export const PAUSE_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

export const BARRIER_PAUSE_METRIC = 'cairn_snapshot_barrier_pause_seconds';

export class PauseHistogram {
  /** Non-cumulative counts per bucket; one more slot for +Inf. */
  readonly counts = new Float64Array(PAUSE_BUCKETS_S.length + 1);
  sumS = 0;

  observe(seconds: number): void {
    this.sumS += seconds;
    let i = 0;
    while (i < PAUSE_BUCKETS_S.length && seconds > PAUSE_BUCKETS_S[i]!) i++;
    this.counts[i]!++;
  }

  get count(): number {
    let n = 0;
    for (const c of this.counts) n += c;
    return n;
  }

  /** The histogram in the Prometheus text format, one line per element. */
  prometheusLines(): string[] {
    const name = BARRIER_PAUSE_METRIC;
    const lines = [`# HELP ${name} How long new writes waited at a snapshot's write barrier.`, `# TYPE ${name} histogram`];
    let cumulative = 0;
    PAUSE_BUCKETS_S.forEach((le, i) => {
      cumulative += this.counts[i]!;
      lines.push(`${name}_bucket{le="${le}"} ${cumulative}`);
    });
    cumulative += this.counts[PAUSE_BUCKETS_S.length]!;
    lines.push(`${name}_bucket{le="+Inf"} ${cumulative}`, `${name}_sum ${this.sumS}`, `${name}_count ${cumulative}`);
    return lines;
  }
}

/** Every engine of this process observes its barriers' pauses here. */
export const barrierPauses = new PauseHistogram();
