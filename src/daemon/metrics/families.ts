/**
 * Metric families over prom-client whose values are read at scrape time (collect
 * callbacks) from counters that already exist, so that nothing new runs on the I/O path:
 * `gaugeFamily` and `counterFamily` set their samples from a function, `histogramFamily`
 * exposes `BucketHistogram`s (common/histogram.ts) as Prometheus histograms.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { BucketHistogram } from '../../common/histogram.js';

export type Labels = Record<string, string>;
export interface Sample { labels: Labels; value: number }
export interface HistogramSample { labels: Labels; histogram: BucketHistogram }

interface FamilySpec<S> {
  name: string;
  help: string;
  labelNames: readonly string[];
  /** The family's samples now; called on every scrape. */
  samples: () => readonly S[];
}

/** A gauge whose samples are read on each scrape. */
export function gaugeFamily(registry: Registry, spec: FamilySpec<Sample>): void {
  new Gauge({
    name: spec.name, help: spec.help, labelNames: spec.labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const s of spec.samples()) this.set(s.labels, s.value);
    },
  });
}

/** A counter whose running totals are read on each scrape (they only grow while their source lives). */
export function counterFamily(registry: Registry, spec: FamilySpec<Sample>): void {
  new Counter({
    name: spec.name, help: spec.help, labelNames: spec.labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const s of spec.samples()) this.inc(s.labels, s.value);
    },
  });
}

interface ExposedValue { value: number; labels: Record<string, string | number>; metricName: string }

/**
 * A histogram whose buckets are `BucketHistogram`s kept by the code that observes them.
 * prom-client's own Histogram only counts what is observed through it, so this family is
 * a custom metric object in the shape the registry reads (`get()`).
 */
export function histogramFamily(registry: Registry, spec: FamilySpec<HistogramSample>): void {
  const metric = {
    name: spec.name,
    help: spec.help,
    type: 'histogram',
    aggregator: 'sum',
    labelNames: spec.labelNames,
    get: () => ({ name: spec.name, help: spec.help, type: 'histogram', aggregator: 'sum', values: spec.samples().flatMap((s) => histogramValues(spec.name, s)) }),
    reset: () => undefined,
  };
  registry.registerMetric(metric as unknown as Gauge);
}

/** The cumulative buckets, the sum and the count of one histogram sample. */
export function histogramValues(name: string, sample: HistogramSample): ExposedValue[] {
  const { labels, histogram } = sample;
  const out: ExposedValue[] = [];
  let cumulative = 0;
  histogram.bounds.forEach((le, i) => {
    cumulative += histogram.counts[i]!;
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: cumulative });
  });
  cumulative += histogram.counts[histogram.bounds.length]!;
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: cumulative });
  out.push({ metricName: `${name}_sum`, labels, value: histogram.sum });
  out.push({ metricName: `${name}_count`, labels, value: cumulative });
  return out;
}
