/**
 * /healthz (the process is alive), /readyz (recovery finished, serving) and /metrics
 * (Prometheus text format, from the process's prom-client registry: metrics/node-metrics.ts)
 * for kubelet probes and Prometheus, and in the node role /drain (node-drain.ts), which
 * the DaemonSet's preStop calls.
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from '../common/log.js';
import type { NodeMetrics } from './metrics/node-metrics.js';
import type { NodeDrain } from './node-drain.js';

export interface HttpContext {
  metrics: NodeMetrics;
  isReady: () => boolean;
  /** The node role's preStop drain (/drain); absent in the controller role. */
  drain?: Pick<NodeDrain, 'draining' | 'drain'>;
  log: Logger;
}

export async function startHttpServer(listen: string, ctx: HttpContext): Promise<Server> {
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon);
  const port = Number(listen.slice(colon + 1));
  const server = createServer((req, res) => {
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      res.writeHead(status, { 'content-type': type }).end(body);
    };
    if (req.url === '/healthz') return reply(200, 'ok\n');
    if (req.url === '/readyz') {
      if (ctx.drain?.draining) return reply(503, 'draining\n');
      return ctx.isReady() ? reply(200, 'ready\n') : reply(503, 'recovering\n');
    }
    if (req.url === '/drain' && ctx.drain) {
      // GET too: a preStop httpGet hook can only GET. Draining is idempotent.
      ctx.drain.drain().then((r) => reply(r.failed.length > 0 ? 500 : 200, `${JSON.stringify(r)}\n`, 'application/json'), (err: unknown) => {
        ctx.log.error({ err }, 'drain failed');
        reply(500, `drain failed: ${(err as Error).message}\n`);
      });
      return;
    }
    if (req.url === '/metrics') {
      ctx.metrics.scrape().then((body) => reply(200, body, ctx.metrics.contentType), (err: unknown) => {
        ctx.log.error({ err }, 'metrics failed');
        reply(500, 'metrics failed: see the cairnd log\n');
      });
      return;
    }
    reply(404, `not found: try /healthz, /readyz, /metrics${ctx.drain ? ' or /drain' : ''}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
