/**
 * A histogram with fixed bucket bounds, cheap enough for the hot I/O path: `observe` is a
 * short loop over the bounds and two additions, with no allocation. Counts are kept per
 * bucket (not cumulative); /metrics adds them up when it exposes them, as Prometheus wants.
 */
export class BucketHistogram {
  /** Non-cumulative counts per bucket; the last slot is +Inf. */
  readonly counts: Float64Array;
  /** Sum of every observed value. */
  sum = 0;

  /** `bounds`: the buckets' upper bounds, ascending (the +Inf bucket is implied). */
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    this.sum += value;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
  }

  /** How many values were observed. */
  get count(): number {
    let n = 0;
    for (const c of this.counts) n += c;
    return n;
  }
}
