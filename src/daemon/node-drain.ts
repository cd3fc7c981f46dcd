/**
 * The node's preStop drain (GET or POST /drain on the HTTP server; the DaemonSet's preStop
 * calls it before kubelet sends SIGTERM, so a rolling upgrade restarts one node at a time
 * with little left to do). Draining is one-way until the process exits:
 *
 * - /readyz answers 503 and CSI NodeStageVolume answers UNAVAILABLE (kubelet retries it
 *   against the restarted cairnd), so no new volume starts here;
 * - every engine here is flushed, so what it acknowledged is durable on each in-sync
 *   replica before the restart. Volumes keep serving I/O until SIGTERM, whose shutdown
 *   stops the exports, lets in-flight requests finish and flushes once more.
 *
 * Nothing is marked in the cluster: replicas on this node that other nodes' engines fault
 * during the restart are caught up from dirty-region maps when it is back, and replaced
 * (a full rebuild elsewhere) only after --repair-wait-ms (docs/kubernetes.md).
 * Repeated calls share the first flush, then answer its result again.
 */
import type { Logger } from '../common/log.js';

export interface DrainResult {
  /** Volumes whose engines here were flushed. */
  flushed: string[];
  /** Engines whose flush failed (the engine faulted the replica that failed it). */
  failed: { volume: string; err: string }[];
  durationMs: number;
}

export class NodeDrain {
  private result: Promise<DrainResult> | undefined;

  /** `engines`: the writing engines of this node by volume name (EngineHost.writingEngines). */
  constructor(private readonly engines: () => [string, { flush(): Promise<void> }][], private readonly log: Logger) {}

  get draining(): boolean {
    return this.result !== undefined;
  }

  drain(): Promise<DrainResult> {
    this.result ??= this.run();
    return this.result;
  }

  private async run(): Promise<DrainResult> {
    const started = performance.now();
    this.log.info('node draining for a restart: no new volume is staged here; flushing every engine');
    const engines = this.engines();
    const results = await Promise.allSettled(engines.map(([, engine]) => engine.flush()));
    const flushed: string[] = [];
    const failed: DrainResult['failed'] = [];
    results.forEach((r, i) => {
      const volume = engines[i]![0];
      if (r.status === 'fulfilled') flushed.push(volume);
      else failed.push({ volume, err: (r.reason as Error).message });
    });
    const result = { flushed, failed, durationMs: Math.round(performance.now() - started) };
    if (failed.length > 0) this.log.warn({ ...result }, 'node drained; some engines failed to flush');
    else this.log.info({ ...result }, 'node drained; waiting for SIGTERM');
    return result;
  }
}
