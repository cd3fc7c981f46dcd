/**
 * The /metrics registry of one cairnd (prom-client, one Registry per process). Every sample
 * carries `node` (this cairnd's --node-name). A scrape first gathers a `NodeView` from this
 * process's own state, once, then lets every family read from it: a node reports only what
 * it serves (its engines, the replicas it hosts, its pool), and a scrape calls no other node.
 * docs/metrics.md lists every family.
 */
import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';
import type { Logger } from '../../common/log.js';
import { EMPTY_VIEW, loadNodeView, type MetricSources, type NodeView } from './node-view.js';
import { registerNodeFamilies } from './node-families.js';
import { registerVolumeFamilies } from './volume-families.js';

/** Upper bounds of the CSI call duration buckets, in seconds. */
const CSI_BUCKETS_S = [0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 120];

export interface NodeMetricsOptions {
  nodeName: string;
  role: string;
  version: string;
  sources: MetricSources;
  /** Where a source that failed during a scrape is logged (its figures are left out of that scrape). */
  log?: Logger;
}

export class NodeMetrics {
  readonly registry = new Registry();
  private view: NodeView = EMPTY_VIEW;
  private readonly csiCalls: Counter;
  private readonly csiDurations: Histogram;

  constructor(private readonly opts: NodeMetricsOptions) {
    this.registry.setDefaultLabels({ node: opts.nodeName });
    const view = (): NodeView => this.view;
    registerNodeFamilies(this.registry, view, { role: opts.role, version: opts.version });
    registerVolumeFamilies(this.registry, view);
    this.csiCalls = new Counter({ name: 'cairn_csi_calls_total', help: 'CSI calls this cairnd answered, by method and gRPC code.', labelNames: ['method', 'code'], registers: [this.registry] });
    this.csiDurations = new Histogram({
      name: 'cairn_csi_call_duration_seconds', help: 'Time this cairnd took to answer a CSI call, by method and gRPC code.', labelNames: ['method', 'code'],
      buckets: CSI_BUCKETS_S, registers: [this.registry],
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /** One CSI call answered (the CSI server's observer). */
  csiCall(method: string, code: string, seconds: number): void {
    this.csiCalls.inc({ method, code });
    this.csiDurations.observe({ method, code }, seconds);
  }

  /** The registry in the Prometheus text format, with this moment's figures. */
  async scrape(): Promise<string> {
    this.view = await loadNodeView(this.opts.sources, (what, err) => this.opts.log?.warn({ err: (err as Error).message, source: what }, 'metrics: a source failed; its figures are left out of this scrape'));
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
