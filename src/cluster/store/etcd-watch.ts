/**
 * One watch on an etcd key range, over its own gRPC Watch stream. It remembers the next
 * revision to deliver and, when the stream breaks, opens a new one from exactly that
 * revision, so events are delivered in order, at most once, with no gap. When etcd has
 * compacted the history it needs, it lists the range again, hands the snapshot to
 * onResync and watches on from the snapshot's revision. Only a server-side cancel for
 * another reason (or a compaction with no onResync) ends it for good.
 */
import type { Etcd3, IDuplexStream, IEvent, IWatchRequest, IWatchResponse } from 'etcd3';
import { Code, StorageError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { ListResult, Watch, WatchEvent, WatchHandlers } from './cluster-store.js';
import { decodeValue } from './cluster-store.js';
import { fromEtcdError } from './etcd-errors.js';

type WatchStream = IDuplexStream<IWatchRequest, IWatchResponse>;

export interface EtcdWatchParams {
  client: Etcd3;
  /** The absolute range: [start, end). */
  start: Buffer;
  end: Buffer;
  /** Absolute key → key relative to the cluster prefix. */
  relativeKey: (key: Buffer) => string;
  handlers: WatchHandlers;
  /** Lists the watched range (keys relative), for a resync after a compaction. */
  list: () => Promise<ListResult>;
  fromRevision: number | undefined;
  log: Logger;
  /** How long etcd may take to confirm a new stream's watch before we try again. */
  createTimeoutMs: number;
  minRetryMs?: number;
  maxRetryMs?: number;
  onClosed: (watch: EtcdWatch) => void;
}

export class EtcdWatch implements Watch {
  private next: number | undefined;
  private stream: WatchStream | undefined;
  private closed = false;
  private retryMs: number;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly p: EtcdWatchParams) {
    this.next = p.fromRevision;
    this.retryMs = p.minRetryMs ?? 200;
  }

  /** Opens the first stream (after a resync when its history is gone); rejects (and closes the watch) when that fails. */
  async start(): Promise<void> {
    try {
      try {
        await this.openStream();
      } catch (err) {
        const error = fromEtcdError(err, 'cluster store watch');
        if (error.code !== Code.OUT_OF_RANGE || !this.p.handlers.onResync) throw error;
        await this.resync(error);
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.dropStream();
    this.p.onClosed(this);
  }

  private dropStream(): void {
    const stream = this.stream;
    this.stream = undefined;
    if (!stream) return;
    // end() first: a stream that is no longer writable is not reported to etcd3's pool
    // as a failed connection, so closing one watch does not reset the others.
    stream.end();
    stream.cancel();
  }

  /** Resolves when etcd has created the watch; rejects when the stream fails first. */
  private async openStream(): Promise<void> {
    const stream = await this.p.client.watchClient.watch();
    if (this.closed) {
      stream.end();
      stream.cancel();
      return;
    }
    this.stream = stream;
    await new Promise<void>((resolve, reject) => {
      let created = false;
      const timer = setTimeout(() => fail(new StorageError(Code.UNAVAILABLE,
        `cluster store watch: etcd did not confirm the watch within ${this.p.createTimeoutMs} ms`)), this.p.createTimeoutMs);
      const fail = (err: StorageError): void => {
        clearTimeout(timer);
        if (this.stream !== stream || this.closed) {
          reject(err); // a no-op once settled
          return;
        }
        this.dropStream();
        if (!created) reject(err);
        else this.recover(err);
      };
      stream.on('data', (res) => {
        if (this.stream !== stream || this.closed) return;
        if (res.canceled) return fail(this.cancelError(res));
        if (res.created) {
          created = true;
          clearTimeout(timer);
          this.next ??= Number(res.header.revision) + 1;
          this.retryMs = this.p.minRetryMs ?? 200;
          resolve();
        }
        this.onResponse(res);
      });
      stream.on('error', (err) => fail(fromEtcdError(err, 'cluster store watch')));
      stream.on('end', () => fail(new StorageError(Code.UNAVAILABLE, 'cluster store watch: etcd ended the stream')));
      const request: IWatchRequest = {
        create_request: { key: this.p.start, range_end: this.p.end, progress_notify: true, ...(this.next === undefined ? {} : { start_revision: this.next }) },
      };
      stream.write(request);
    });
  }

  private onResponse(res: IWatchResponse): void {
    if (res.events.length === 0) {
      // A progress notification: everything up to header.revision has been sent.
      if (!res.created && this.next !== undefined) this.next = Math.max(this.next, Number(res.header.revision) + 1);
      return;
    }
    let events: WatchEvent[];
    try {
      events = res.events.filter((e) => this.next === undefined || Number(e.kv.mod_revision) >= this.next).map((e) => this.toEvent(e));
    } catch (err) {
      this.fatal(err as StorageError);
      return;
    }
    if (events.length === 0) return;
    this.next = events[events.length - 1]!.modRevision + 1;
    try {
      this.p.handlers.onEvents(events);
    } catch (err) {
      this.p.log.error({ err, revision: this.next - 1 }, 'cluster store watch handler threw');
    }
  }

  private toEvent(e: IEvent): WatchEvent {
    const key = this.p.relativeKey(e.kv.key);
    if (e.type === 'Delete') return { type: 'delete', key, modRevision: Number(e.kv.mod_revision), createRevision: 0 };
    return {
      type: 'put',
      key,
      value: decodeValue(key, e.kv.value.toString('utf8')),
      modRevision: Number(e.kv.mod_revision),
      createRevision: Number(e.kv.create_revision),
    };
  }

  private cancelError(res: IWatchResponse): StorageError {
    const compacted = Number(res.compact_revision);
    if (compacted > 0) {
      return new StorageError(Code.OUT_OF_RANGE,
        `cluster store watch from revision ${this.next ?? 'now'}: etcd compacted its history up to revision ${compacted}; list again and watch from there`,
        { details: { fromRevision: this.next, compactRevision: compacted } });
    }
    return new StorageError(Code.INTERNAL, `cluster store watch cancelled by etcd: ${res.cancel_reason || 'no reason given'}`);
  }

  /**
   * The stream (or an attempt to open one) failed: reconnect from `next` when etcd is
   * away, list again first when etcd compacted the history from `next` on, else end.
   */
  private recover(err: StorageError): void {
    if (this.closed) return;
    const resync = err.code === Code.OUT_OF_RANGE && this.p.handlers.onResync !== undefined;
    if (err.code !== Code.UNAVAILABLE && !resync) {
      this.fatal(err);
      return;
    }
    const delayMs = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, this.p.maxRetryMs ?? 2000);
    if (!resync) this.p.log.warn({ err: err.message, fromRevision: this.next, delayMs }, 'cluster store watch reconnecting');
    this.retryTimer = setTimeout(() => {
      (resync ? this.resync(err) : this.openStream()).then(
        () => this.p.log.info({ fromRevision: this.next }, 'cluster store watch resumed'),
        (e: unknown) => this.recover(fromEtcdError(e, 'cluster store watch')),
      );
    }, delayMs);
  }

  /** Lists the range, hands the snapshot to onResync, and watches on from its revision. */
  private async resync(err: StorageError): Promise<void> {
    this.p.log.warn({ err: err.message, fromRevision: this.next }, 'cluster store watch needs compacted history; listing again');
    const snapshot = await this.p.list();
    if (this.closed) return;
    this.next = snapshot.revision + 1;
    try {
      this.p.handlers.onResync?.(snapshot);
    } catch (e) {
      this.p.log.error({ err: e, revision: snapshot.revision }, 'cluster store watch handler threw');
    }
    await this.openStream();
  }

  private fatal(err: StorageError): void {
    if (this.closed) return;
    this.p.log.error({ err: err.message, code: err.code }, 'cluster store watch ended');
    void this.close();
    this.p.handlers.onError?.(err);
  }
}
