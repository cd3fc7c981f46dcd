/**
 * In-process watches of the embedded store. The store publishes each committed
 * transaction's events; every watch whose prefix matches gets them, in revision order,
 * one transaction per call, delivered from a microtask (never inside the writer's call).
 */
import type { Logger } from '../../common/log.js';
import type { Watch, WatchEvent, WatchHandlers } from './cluster-store.js';

class HubWatch implements Watch {
  private readonly queue: WatchEvent[][] = [];
  private scheduled = false;
  closed = false;

  constructor(
    readonly prefix: string,
    private readonly handlers: WatchHandlers,
    /** Batches below this revision are dropped (already delivered, or before the start). */
    private next: number,
    private readonly log: Logger,
    private readonly onClose: (w: HubWatch) => void,
  ) {}

  push(events: WatchEvent[]): void {
    const mine = events.filter((e) => e.key.startsWith(this.prefix));
    const revision = mine[0]?.modRevision;
    if (this.closed || revision === undefined || revision < this.next) return;
    this.next = revision + 1;
    this.queue.push(mine);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    while (!this.closed && this.queue.length > 0) {
      const batch = this.queue.shift()!;
      try {
        this.handlers.onEvents(batch);
      } catch (err) {
        this.log.error({ err, revision: batch[0]?.modRevision }, 'cluster store watch handler threw');
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.onClose(this);
  }
}

export class EmbeddedWatchHub {
  private readonly watches = new Set<HubWatch>();

  constructor(private readonly log: Logger) {}

  /**
   * Registers a watch that first receives `backlog` (batches already committed, oldest
   * first), then every batch published from `nextRevision` on. Call it in the same
   * synchronous step as reading the backlog, so that no commit falls in between.
   */
  subscribe(prefix: string, handlers: WatchHandlers, fromRevision: number, backlog: WatchEvent[][]): Watch {
    const watch = new HubWatch(prefix, handlers, fromRevision, this.log, (w) => this.watches.delete(w));
    for (const batch of backlog) watch.push(batch);
    this.watches.add(watch);
    return watch;
  }

  /** One committed transaction's events, all of one revision. */
  publish(events: WatchEvent[]): void {
    if (events.length === 0) return;
    for (const w of this.watches) w.push(events);
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.watches].map((w) => w.close()));
  }
}
