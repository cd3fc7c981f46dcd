/** Reading the Prometheus text format in tests: samples by name and labels. */

/** `name{labels}` → value, for every sample line of a Prometheus text body. */
export function parseSamples(body: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    out.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return out;
}

/** The samples of `name` (exactly that name) whose labels include every pair of `labels`. */
export function matching(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): [string, number][] {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  return [...samples].filter(([key]) => (key === name || key.startsWith(`${name}{`)) && want.every((w) => key.includes(w)));
}

/** The value of the one sample of `name` with `labels`; undefined when none; throws when several match. */
export function value(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = matching(samples, name, labels);
  if (hits.length > 1) throw new Error(`${hits.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return hits[0]?.[1];
}

/** The metric names of every sample (histogram series under their family's name). */
export function familiesWithSamples(samples: Map<string, number>): Set<string> {
  return new Set([...samples.keys()].map((k) => k.replace(/\{.*$/, '').replace(/_(bucket|sum|count)$/, '')));
}
