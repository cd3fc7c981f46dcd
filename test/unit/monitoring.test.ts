/**
 * deploy/monitoring/: the PodMonitor and the PrometheusRule are valid Prometheus Operator
 * objects (the operator's schemas, through @kubernetes-models/prometheus-operator), every
 * alert's expression and every dashboard query is PromQL (Prometheus' own lezer grammar),
 * and every metric and label they select is one that cairnd's registry exports.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { parser } from '@prometheus-io/lezer-promql';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { parse } from 'yaml';
import { NodeMetrics } from '../../src/daemon/metrics/node-metrics.js';

const dir = new URL('../../deploy/monitoring/', import.meta.url);
const read = (file: string): string => readFileSync(new URL(file, dir), 'utf8');

/** Every metric family the registry exports, with its label names (`node` on all of them). */
async function exported(): Promise<Map<string, Set<string>>> {
  const metrics = new NodeMetrics({ nodeName: 'n', role: 'all', version: 'test', sources: {} });
  const out = new Map<string, Set<string>>();
  for (const m of metrics.registry.getMetricsAsArray()) {
    const labels = new Set([...((m as unknown as { labelNames?: string[] }).labelNames ?? []), 'node']);
    const suffixes = (await (m as unknown as { get(): Promise<{ type: string }> }).get()).type === 'histogram' ? ['_bucket', '_sum', '_count'] : [''];
    for (const s of suffixes) out.set(`${m.name}${s}`, s === '_bucket' ? new Set([...labels, 'le']) : labels);
  }
  return out;
}

/** Prometheus' own series, which cairnd does not export; target labels any series may carry. */
const PROMETHEUS_SERIES = new Set(['up']);
const TARGET_LABELS = new Set(['job', 'instance', 'namespace', 'pod', 'container', 'endpoint']);

/** The selectors of a PromQL expression: metric name and the label names it matches on or groups by. */
function selectors(t: ExecutionContext, expr: string): { metric: string; labels: string[] }[] {
  // Grafana's variables: a range becomes a duration; "$x" inside label values stays text.
  const text = expr.replaceAll('$__rate_interval', '5m');
  const tree = parser.parse(text);
  const out: { metric: string; labels: string[] }[] = [];
  tree.iterate({
    enter: (node) => {
      if (node.type.isError) t.fail(`not PromQL at ${node.from} in: ${expr}`);
      if (node.name !== 'VectorSelector') return;
      const inner = node.node;
      const id = inner.getChild('Identifier');
      const matchers = inner.getChild('LabelMatchers');
      const labels: string[] = [];
      matchers?.toTree().iterate({ enter: (n) => { if (n.name === 'LabelName') labels.push(text.slice(matchers.from + n.from, matchers.from + n.to)); } });
      if (id) out.push({ metric: text.slice(id.from, id.to), labels });
    },
  });
  t.true(out.length > 0, `no metric in: ${expr}`);
  return out;
}

function checkExpr(t: ExecutionContext, families: Map<string, Set<string>>, expr: string, where: string): void {
  for (const { metric, labels } of selectors(t, expr)) {
    if (PROMETHEUS_SERIES.has(metric)) continue;
    const known = families.get(metric);
    t.truthy(known, `${where}: ${metric} is not a metric cairnd exports (in: ${expr})`);
    for (const l of labels) t.true(known?.has(l) === true || TARGET_LABELS.has(l), `${where}: ${metric} has no label ${l}`);
  }
}

test('the PrometheusRule is valid, and its alerts name metrics and labels cairnd exports', async (t) => {
  const doc = parse(read('prometheus-rule.yaml')) as ConstructorParameters<typeof PrometheusRule>[0];
  t.notThrows(() => new PrometheusRule(doc).validate());
  const families = await exported();
  const alerts = (doc?.spec?.groups ?? []).flatMap((g) => g.rules ?? []);
  t.deepEqual(alerts.map((r) => r.alert).sort(), [
    'CairnNodeDown', 'CairnPoolAlmostFull', 'CairnPoolMetadataAlmostFull', 'CairnRebuildNotProgressing', 'CairnVolumeDegraded', 'CairnVolumeFaulted',
  ]);
  for (const rule of alerts) checkExpr(t, families, String(rule.expr), rule.alert!);
});

test('a PrometheusRule the operator would refuse fails validation (the check is real)', (t) => {
  const doc = parse(read('prometheus-rule.yaml')) as { spec: { groups: { rules: Record<string, unknown>[] }[] } };
  doc.spec.groups[0]!.rules[0]!.for = 'five minutes';
  t.throws(() => new PrometheusRule(doc as unknown as ConstructorParameters<typeof PrometheusRule>[0]).validate());
});

test('the PodMonitor is valid and scrapes the port the cairnd containers name http', (t) => {
  const doc = parse(read('podmonitor.yaml')) as ConstructorParameters<typeof PodMonitor>[0];
  t.notThrows(() => new PodMonitor(doc).validate());
  t.deepEqual(doc!.spec!.podMetricsEndpoints!.map((e) => e.port), ['http']);
  const spec = readFileSync(new URL('../../daemonset.yaml', import.meta.url), 'utf8');
  t.regex(spec, /- name: http\n\s+containerPort: 9470/);
});

test('every dashboard query is PromQL over metrics and labels cairnd exports', async (t) => {
  const dashboard = JSON.parse(read('cairn-dashboard.json')) as {
    panels: { title: string; targets?: { expr: string }[] }[]; templating: { list: { name: string; definition?: string }[] };
  };
  const families = await exported();
  const queries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((q) => ({ expr: q.expr, where: `panel "${p.title}"` })));
  t.true(queries.length >= 15, `${queries.length} queries`);
  for (const q of queries) checkExpr(t, families, q.expr, q.where);
  for (const v of dashboard.templating.list) {
    const m = v.definition && /^label_values\((\w+), (\w+)\)$/.exec(v.definition);
    if (!m) continue;
    t.true(families.get(m[1]!)?.has(m[2]!) === true, `variable ${v.name}: ${v.definition}`);
  }
  // The sections the dashboard promises.
  for (const title of ['Volumes', 'Replication health', 'Rebuilds', 'Pools', 'CSI and snapshots']) t.true(dashboard.panels.some((p) => p.title === title), title);
});
