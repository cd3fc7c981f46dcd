/**
 * In-process watches of the embedded store. The store publishes each committed
 * transaction's events; every watch whose prefix matches gets them, in revision order,
 * one transaction per call, delivered from a microtask (never inside the writer's call).
 * A watch that starts from history no longer kept gets a snapshot first (onResync).
 */
import type { Logger } from '../../common/log.js';
import type { ListResult, Watch, WatchEvent, WatchHandlers } from './cluster-store.js';

class HubWatch implements Watch {
  /** Event batches, or a snapshot (a resync), in delivery order. */
  private readonly queue: (WatchEvent[] | ListResult)[] = [];
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
    this.enqueue(mine);
  }

  /** The whole prefix at `snapshot.revision`; later batches from the revision after it. */
  resync(snapshot: ListResult): void {
    this.next = Math.max(this.next, snapshot.revision + 1);
    this.enqueue(snapshot);
  }

  private enqueue(item: WatchEvent[] | ListResult): void {
    this.queue.push(item);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    while (!this.closed && this.queue.length > 0) {
      const item = this.queue.shift()!;
      try {
        if (Array.isArray(item)) this.handlers.onEvents(item);
        else this.handlers.onResync?.(item);
      } catch (err) {
        this.log.error({ err, revision: Array.isArray(item) ? item[0]?.modRevision : item.revision }, 'cluster store watch handler threw');
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
   * first, or a snapshot for onResync), then every batch published from `fromRevision` on. Call it in the same
   * synchronous step as reading the backlog, so that no commit falls in between.
   */
  subscribe(prefix: string, handlers: WatchHandlers, fromRevision: number, backlog: WatchEvent[][] | ListResult): Watch {
    const watch = new HubWatch(prefix, handlers, fromRevision, this.log, (w) => this.watches.delete(w));
    if (Array.isArray(backlog)) for (const batch of backlog) watch.push(batch);
    else watch.resync(backlog);
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
