/**
 * Latency samples for the benchmarks: time one call, and summarise many as percentiles
 * (nearest rank, so a p99 of 20 samples is the slowest one: nothing is interpolated).
 */

/** Runs `fn` and returns how long it took, in milliseconds, with what it returned. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value };
}

/** The nearest-rank percentile `p` (0-100) of `values`; NaN when there are none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export interface LatencySummary {
  n: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export function summarize(samplesMs: readonly number[]): LatencySummary {
  return { n: samplesMs.length, p50Ms: percentile(samplesMs, 50), p99Ms: percentile(samplesMs, 99), maxMs: percentile(samplesMs, 100) };
}

/** "12.3 ms", "1.42 s", or "" when there is no figure. */
export function formatMs(ms: number | undefined): string {
  if (ms === undefined || Number.isNaN(ms)) return '';
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;
}
