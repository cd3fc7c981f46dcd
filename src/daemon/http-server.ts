/**
 * /healthz (the process is alive), /readyz (recovery finished, serving) and /metrics
 * (Prometheus text format, from the process's prom-client registry: metrics/node-metrics.ts)
 * for kubelet probes and Prometheus.
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from '../common/log.js';
import type { NodeMetrics } from './metrics/node-metrics.js';

export interface HttpContext {
  metrics: NodeMetrics;
  isReady: () => boolean;
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
    if (req.url === '/readyz') return ctx.isReady() ? reply(200, 'ready\n') : reply(503, 'recovering\n');
    if (req.url === '/metrics') {
      ctx.metrics.scrape().then((body) => reply(200, body, ctx.metrics.contentType), (err: unknown) => {
        ctx.log.error({ err }, 'metrics failed');
        reply(500, 'metrics failed: see the cairnd log\n');
      });
      return;
    }
    reply(404, 'not found: try /healthz, /readyz or /metrics\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
