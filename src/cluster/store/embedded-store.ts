/**
 * The cluster store of a single-node Cairn: SQLite (better-sqlite3, WAL,
 * synchronous=FULL) in a file of its own, `<data-dir>/cluster.db`. It is the default when
 * no etcd endpoints are configured. It keeps the etcd contract: one revision counter
 * bumped in the same SQLite transaction as the change, compare-and-swap on mod
 * revisions, leases whose keys vanish when they expire (checked on a timer and whenever
 * a lease is used), and in-process watches that can resume from a past revision.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Code, StorageError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type {
  CallOptions, ClusterStore, KeyValue, Lease, LeaseId, ListResult, TxnOp, TxnRequest, TxnResult, Watch, WatchEvent, WatchHandlers, WatchOptions,
} from './cluster-store.js';
import { decodeValue, encodeValue, validateKey, validatePrefix, validateTtlMs, validateTxn } from './cluster-store.js';
import { migrateEmbedded, type EventRow, type KvRow } from './embedded-schema.js';
import { EmbeddedWatchHub } from './embedded-watch-hub.js';
import { clusterPrefix, prefixEnd } from './keys.js';

export interface EmbeddedStoreOptions {
  /** The database file (created with its directory), or ':memory:'. */
  path: string;
  /** Cluster name; a file written for another cluster is refused (FAILED_PRECONDITION). */
  cluster: string;
  /** How often expired leases are reaped; default 500 ms. */
  leaseCheckIntervalMs?: number;
  /** Revisions of history kept for watches to resume from; default 10000. */
  historyRevisions?: number;
  /** Wall clock in ms; tests may pass their own. */
  nowMs?: () => number;
  log: Logger;
}

const bytes = (key: string): Buffer => Buffer.from(key, 'utf8');

function toKeyValue(r: KvRow): KeyValue {
  const key = r.key.toString('utf8');
  const kv: KeyValue = { key, value: decodeValue(key, r.value), createRevision: r.create_revision, modRevision: r.mod_revision, version: r.version };
  if (r.lease_id !== null) kv.leaseId = String(r.lease_id) as LeaseId;
  return kv;
}

function toEvent(r: EventRow): WatchEvent {
  const key = r.key.toString('utf8');
  return r.type === 'put'
    ? { type: 'put', key, value: decodeValue(key, r.value ?? 'null'), modRevision: r.revision, createRevision: r.create_revision }
    : { type: 'delete', key, modRevision: r.revision, createRevision: 0 };
}

/** Lease ids are positive integers in decimal; anything else names no lease. */
function leaseNumber(id: LeaseId): number | undefined {
  return /^[1-9][0-9]{0,15}$/.test(id) ? Number(id) : undefined;
}

export class EmbeddedStore implements ClusterStore {
  readonly kind = 'embedded' as const;
  private readonly hub: EmbeddedWatchHub;
  private readonly timer: NodeJS.Timeout;
  private readonly nowMs: () => number;
  private readonly historyRevisions: number;
  private readonly log: Logger;
  private closed = false;

  private constructor(private readonly db: Database.Database, options: EmbeddedStoreOptions) {
    this.log = options.log;
    this.nowMs = options.nowMs ?? Date.now;
    this.historyRevisions = options.historyRevisions ?? 10_000;
    this.hub = new EmbeddedWatchHub(options.log);
    this.timer = setInterval(() => this.reapSafely(options.log), options.leaseCheckIntervalMs ?? 500);
    this.timer.unref();
  }

  /** Opens (creating if needed) the store and runs pending migrations. */
  static open(options: EmbeddedStoreOptions): EmbeddedStore {
    clusterPrefix(options.cluster); // validates the name
    if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
    let db: Database.Database;
    try {
      db = new Database(options.path);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 2000');
      migrateEmbedded(db, options.cluster, options.log);
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new StorageError(Code.UNAVAILABLE, `cannot open the cluster store at ${options.path}: ${(err as Error).message}`, { cause: err });
    }
    options.log.info({ path: options.path, cluster: options.cluster }, 'cluster store opened on SQLite');
    return new EmbeddedStore(db, options);
  }

  private run<T>(what: string, options: CallOptions | undefined, fn: () => T): T {
    if (this.closed) throw new StorageError(Code.FAILED_PRECONDITION, `${what}: the cluster store is closed`);
    if (options?.signal?.aborted) throw new StorageError(Code.CANCELLED, `${what}: cancelled`, { cause: options.signal.reason });
    try {
      return fn();
    } catch (err) {
      if (err instanceof StorageError) throw err;
      const code = (err as { code?: unknown }).code;
      const busy = code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED';
      throw new StorageError(busy ? Code.UNAVAILABLE : Code.INTERNAL, `${what}: ${(err as Error).message}`, { cause: err });
    }
  }

  private revision(): number {
    return (this.db.prepare('SELECT revision FROM state WHERE id = 1').get() as { revision: number }).revision;
  }

  private getRow(key: string): KvRow | undefined {
    return this.db.prepare('SELECT * FROM kv WHERE key = ?').get(bytes(key)) as KvRow | undefined;
  }

  async get(key: string, options?: CallOptions): Promise<KeyValue | undefined> {
    validateKey(key);
    return this.run(`get ${key}`, options, () => {
      const row = this.getRow(key);
      return row ? toKeyValue(row) : undefined;
    });
  }

  async list(prefix: string, options?: CallOptions): Promise<ListResult> {
    validatePrefix(prefix);
    return this.run(`list ${prefix}`, options, () => this.snapshot(prefix));
  }

  private snapshot(prefix: string): ListResult {
    return this.db.transaction(() => {
      const start = bytes(prefix);
      const end = prefixEnd(start);
      const rows = (end
        ? this.db.prepare('SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key').all(start, end)
        : this.db.prepare('SELECT * FROM kv WHERE key >= ? ORDER BY key').all(start)) as KvRow[];
      return { items: rows.map(toKeyValue), revision: this.revision() };
    })();
  }

  async txn(request: TxnRequest, options?: CallOptions): Promise<TxnResult> {
    validateTxn(request);
    const values = request.ops.map((op) => (op.type === 'put' ? encodeValue(op.key, op.value) : ''));
    const { result, events } = this.run('transaction', options, () => this.db.transaction(() => this.applyTxn(request, values))());
    this.hub.publish(events);
    return result;
  }

  /** Inside a SQLite transaction: check the guards, apply the ops, record the history. */
  private applyTxn(request: TxnRequest, values: string[]): { result: TxnResult; events: WatchEvent[] } {
    const revision = this.revision();
    const rows = new Map(request.guards.map((g) => [g.key, this.getRow(g.key)]));
    if (!request.guards.every((g) => (rows.get(g.key)?.mod_revision ?? 0) === g.modRevision)) {
      const current = new Map([...rows].map(([k, r]) => [k, r ? toKeyValue(r) : undefined]));
      return { result: { succeeded: false, revision, current }, events: [] };
    }
    for (const op of request.ops) {
      if (op.type === 'put' && op.leaseId !== undefined && !this.leaseAlive(op.leaseId)) {
        throw new StorageError(Code.NOT_FOUND, `lease ${op.leaseId} has expired or was revoked`, { details: { lease: op.leaseId } });
      }
    }
    const next = revision + 1;
    const events: WatchEvent[] = [];
    request.ops.forEach((op, i) => {
      const event = this.applyOp(op, values[i]!, next);
      if (event) events.push(event);
    });
    if (events.length === 0) return { result: { succeeded: true, revision }, events };
    this.commitRevision(next, events);
    return { result: { succeeded: true, revision: next }, events };
  }

  private applyOp(op: TxnOp, value: string, revision: number): WatchEvent | undefined {
    const existing = this.getRow(op.key);
    if (op.type === 'delete') {
      if (!existing) return undefined;
      this.db.prepare('DELETE FROM kv WHERE key = ?').run(bytes(op.key));
      return { type: 'delete', key: op.key, modRevision: revision, createRevision: 0 };
    }
    const createRevision = existing?.create_revision ?? revision;
    this.db.prepare(`INSERT INTO kv (key, value, create_revision, mod_revision, version, lease_id) VALUES (?, ?, ?, ?, ?, ?)
      ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision, version = excluded.version, lease_id = excluded.lease_id`)
      .run(bytes(op.key), value, createRevision, revision, (existing?.version ?? 0) + 1, op.leaseId === undefined ? null : leaseNumber(op.leaseId));
    return { type: 'put', key: op.key, value: decodeValue(op.key, value), modRevision: revision, createRevision };
  }

  /** Records the new revision and its history; drops history past the retention. */
  private commitRevision(revision: number, events: WatchEvent[]): void {
    const insert = this.db.prepare('INSERT INTO events (revision, seq, key, type, value, create_revision) VALUES (?, ?, ?, ?, ?, ?)');
    events.forEach((e, seq) => insert.run(revision, seq, bytes(e.key), e.type, e.type === 'put' ? JSON.stringify(e.value) : null, e.createRevision));
    this.db.prepare('UPDATE state SET revision = ? WHERE id = 1').run(revision);
    if (revision % 100 === 0 && revision > this.historyRevisions) {
      const upTo = revision - this.historyRevisions;
      this.db.prepare('DELETE FROM events WHERE revision <= ?').run(upTo);
      this.db.prepare('UPDATE state SET compact_revision = max(compact_revision, ?) WHERE id = 1').run(upTo);
    }
  }

  private leaseAlive(id: LeaseId): boolean {
    const n = leaseNumber(id);
    if (n === undefined) return false;
    const row = this.db.prepare('SELECT expires_at_ms FROM leases WHERE id = ?').get(n) as { expires_at_ms: number } | undefined;
    return row !== undefined && row.expires_at_ms > this.nowMs();
  }

  async grantLease(ttlMs: number, options?: CallOptions): Promise<Lease> {
    validateTtlMs(ttlMs);
    return this.run('grant lease', options, () => {
      const r = this.db.prepare('INSERT INTO leases (ttl_ms, expires_at_ms) VALUES (?, ?)').run(ttlMs, this.nowMs() + ttlMs);
      return { id: String(r.lastInsertRowid) as LeaseId, ttlMs };
    });
  }

  async keepAliveLease(id: LeaseId, options?: CallOptions): Promise<number> {
    const ttlMs = this.run(`keep lease ${id} alive`, options, () => this.db.transaction(() => {
      const n = leaseNumber(id);
      const row = n === undefined ? undefined : this.db.prepare('SELECT ttl_ms FROM leases WHERE id = ?').get(n) as { ttl_ms: number } | undefined;
      if (!row || !this.leaseAlive(id)) return undefined;
      this.db.prepare('UPDATE leases SET expires_at_ms = ? WHERE id = ?').run(this.nowMs() + row.ttl_ms, n);
      return row.ttl_ms;
    })());
    if (ttlMs === undefined) {
      this.reap(); // it may be expired but not yet reaped: its keys go now
      throw new StorageError(Code.NOT_FOUND, `lease ${id} has expired or was revoked`, { details: { lease: id } });
    }
    return ttlMs;
  }

  async revokeLease(id: LeaseId, options?: CallOptions): Promise<void> {
    const n = leaseNumber(id);
    if (n === undefined) return;
    const events = this.run(`revoke lease ${id}`, options, () => this.db.transaction(() => this.endLease(n))());
    this.hub.publish(events);
  }

  /** Inside a SQLite transaction: deletes a lease and its keys in one new revision. */
  private endLease(id: number): WatchEvent[] {
    const keys = this.db.prepare('SELECT key FROM kv WHERE lease_id = ? ORDER BY key').all(id) as { key: Buffer }[];
    this.db.prepare('DELETE FROM kv WHERE lease_id = ?').run(id);
    this.db.prepare('DELETE FROM leases WHERE id = ?').run(id);
    if (keys.length === 0) return [];
    const revision = this.revision() + 1;
    const events: WatchEvent[] = keys.map((k) => ({ type: 'delete', key: k.key.toString('utf8'), modRevision: revision, createRevision: 0 }));
    this.commitRevision(revision, events);
    return events;
  }

  /** Ends every lease past its expiry; each in its own revision, as etcd does. */
  private reap(): void {
    if (this.closed) return;
    const due = this.db.prepare('SELECT id FROM leases WHERE expires_at_ms <= ? ORDER BY expires_at_ms').all(this.nowMs()) as { id: number }[];
    for (const { id } of due) {
      const events = this.db.transaction(() => this.endLease(id))();
      this.hub.publish(events);
    }
  }

  private reapSafely(log: Logger): void {
    try {
      this.reap();
    } catch (err) {
      log.error({ err }, 'cluster store lease expiry failed');
    }
  }

  async watch(prefix: string, handlers: WatchHandlers, options?: WatchOptions): Promise<Watch> {
    validatePrefix(prefix);
    return this.run(`watch ${prefix}`, options, () => {
      const state = this.db.prepare('SELECT revision, compact_revision FROM state WHERE id = 1').get() as { revision: number; compact_revision: number };
      const from = options?.fromRevision ?? state.revision + 1;
      if (from <= state.compact_revision && handlers.onResync) {
        // As etcd does (etcd-watch.ts): the history is gone, so the watcher gets the state now.
        this.log.warn({ watch: prefix, fromRevision: from, compactRevision: state.compact_revision }, 'cluster store watch needs dropped history; listing again');
        const snapshot = this.snapshot(prefix);
        return this.hub.subscribe(prefix, handlers, snapshot.revision + 1, snapshot);
      }
      if (from <= state.compact_revision) {
        throw new StorageError(Code.OUT_OF_RANGE,
          `cluster store watch from revision ${from}: history is kept only after revision ${state.compact_revision}; list again and watch from there`,
          { details: { fromRevision: from, compactRevision: state.compact_revision } });
      }
      return this.hub.subscribe(prefix, handlers, from, this.backlog(prefix, from));
    });
  }

  /** Committed events under `prefix` from revision `from` on, grouped by revision. */
  private backlog(prefix: string, from: number): WatchEvent[][] {
    const start = bytes(prefix);
    const end = prefixEnd(start);
    const rows = (end
      ? this.db.prepare('SELECT * FROM events WHERE revision >= ? AND key >= ? AND key < ? ORDER BY revision, seq').all(from, start, end)
      : this.db.prepare('SELECT * FROM events WHERE revision >= ? AND key >= ? ORDER BY revision, seq').all(from, start)) as EventRow[];
    const batches: WatchEvent[][] = [];
    for (const row of rows) {
      const last = batches[batches.length - 1];
      if (last && last[0]!.modRevision === row.revision) last.push(toEvent(row));
      else batches.push([toEvent(row)]);
    }
    return batches;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.hub.closeAll();
    this.db.close();
  }
}
