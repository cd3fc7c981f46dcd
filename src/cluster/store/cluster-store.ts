/**
 * The cluster store: the one place where Cairn keeps cluster-wide state (nodes, volumes,
 * in-sync sets, epochs, leaders). Two implementations satisfy this contract: `EtcdStore`
 * (multi-node) and `EmbeddedStore` (SQLite, single node, the default). See
 * docs/cluster-store.md for the key layout and the behaviour while etcd is away.
 *
 * Promises every implementation keeps:
 * - Keys are strings relative to the store's cluster prefix (`/cairn/<cluster>/`); values
 *   are JSON documents.
 * - Revisions only grow. A transaction that changes something gets a revision greater
 *   than every earlier one, and all its changes carry it. The counter belongs to the
 *   backend: on a shared etcd other clusters' writes bump it too, so never expect +1.
 * - Every state change is a compare-and-swap transaction (`txn`): its puts and deletes
 *   happen all together only if every guard holds. A failed guard is a normal result
 *   (`succeeded: false`), not an error.
 * - A call that resolved was durably applied and is never lost (etcd: committed by a
 *   quorum; embedded: SQLite with synchronous=FULL).
 * - A write that failed with UNAVAILABLE or CANCELLED may or may not have been applied.
 *   Writes are guarded by revisions, so the caller re-reads and decides again.
 */
import { Code, StorageError } from '../../common/errors.js';
import type { Brand } from '../../common/ids.js';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** A lease id as the backend gives it (etcd's are 64-bit, so a decimal string). */
export type LeaseId = Brand<string, 'LeaseId'>;

export interface KeyValue {
  key: string;
  value: JsonValue;
  /** Revision of the transaction that created the key (since its last deletion). */
  createRevision: number;
  /** Revision of the transaction that last changed the key: what guards compare. */
  modRevision: number;
  /** Number of changes since creation: 1 right after creation. */
  version: number;
  /** The lease the key is attached to; it vanishes when that lease ends. */
  leaseId?: LeaseId;
}

export interface ListResult {
  items: KeyValue[];
  /** The store revision the list was read at: watch from `revision + 1` to miss nothing. */
  revision: number;
}

/** Holds when `key`'s mod revision equals `modRevision`; `modRevision: 0` means "absent". */
export interface Guard {
  key: string;
  modRevision: number;
}

export type TxnOp =
  | { type: 'put'; key: string; value: JsonValue; leaseId?: LeaseId }
  | { type: 'delete'; key: string };

export interface TxnRequest {
  /** All must hold for `ops` to run. An empty list always holds. */
  guards: readonly Guard[];
  /** Applied atomically in one revision. A key may appear at most once. */
  ops: readonly TxnOp[];
}

export type TxnResult =
  | { succeeded: true; revision: number }
  | {
    succeeded: false;
    /** The store revision when the guards were checked. */
    revision: number;
    /** The current state of every guarded key (undefined: absent), to decide again. */
    current: Map<string, KeyValue | undefined>;
  };

export interface Lease {
  id: LeaseId;
  /** The TTL granted, which may be longer than asked (etcd rounds up to whole seconds, at least 2 s). */
  ttlMs: number;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  /** The new value of a put; undefined for a delete. */
  value?: JsonValue;
  /** Revision of the change (for a delete: the revision of the deletion). */
  modRevision: number;
  /** For a put, the key's create revision; 0 for a delete. */
  createRevision: number;
}

export interface WatchHandlers {
  /**
   * Called in revision order, at most once per event, never concurrently. The events of
   * one transaction are never split across calls; one call may carry several
   * transactions (etcd batches history). A handler that throws is logged, not retried.
   */
  onEvents: (events: WatchEvent[]) => void;
  /**
   * Called instead of the events the watch missed when the history it needs is gone (etcd
   * compacted it while the watch was away or behind, or `fromRevision` was already too
   * old): every key under the prefix as it is at `snapshot.revision`. Events go on from
   * `snapshot.revision + 1`. The watcher must treat it as the whole truth: a key it knew
   * that the snapshot lacks was deleted. Same ordering promises as `onEvents`. Every
   * long-lived watcher should give it: without it, the watch ends with OUT_OF_RANGE.
   */
  onResync?: (snapshot: ListResult) => void;
  /**
   * Called once when the watch ends for good: OUT_OF_RANGE when the needed history was
   * compacted and there is no `onResync`; INTERNAL or DATA_LOSS for what no retry mends.
   * Lost connections are not errors: the watch resumes by itself where it stopped.
   */
  onError?: (err: StorageError) => void;
}

export interface WatchOptions extends CallOptions {
  /** First revision to deliver; default: changes after the watch is set up. */
  fromRevision?: number;
}

export interface Watch {
  /** Stops delivery; no handler is called after it resolves. Idempotent. */
  close(): Promise<void>;
}

export interface CallOptions {
  /** Deadline for this call; the store's default (`callTimeoutMs`) when unset. */
  timeoutMs?: number;
  /** Aborting rejects the call with CANCELLED. */
  signal?: AbortSignal;
}

/**
 * Errors every method may throw, besides the ones listed on it:
 * - UNAVAILABLE: the backend could not be reached or did not answer before the deadline.
 *   Callers retry later; reads are safe to repeat, writes are re-decided after a re-read.
 * - CANCELLED: `signal` was aborted.
 * - INVALID_ARGUMENT: a malformed key, value, TTL or transaction.
 * - FAILED_PRECONDITION: the store was closed.
 * - DATA_LOSS: a stored value is not valid JSON.
 */
export interface ClusterStore {
  /** 'etcd' or 'embedded', for logs and status. */
  readonly kind: 'etcd' | 'embedded';

  /** The key's current value; undefined (not an error) when it does not exist. */
  get(key: string, options?: CallOptions): Promise<KeyValue | undefined>;

  /** Every key starting with `prefix`, sorted by key, read at one revision. */
  list(prefix: string, options?: CallOptions): Promise<ListResult>;

  /**
   * Compare-and-swap. Not an error when a guard fails: the result says so and carries
   * the guarded keys' current state. NOT_FOUND when the guards hold but a put names a
   * lease that no longer exists (nothing is applied). Deleting an absent key is not an
   * error.
   */
  txn(request: TxnRequest, options?: CallOptions): Promise<TxnResult>;

  /** Grants a lease of at least `ttlMs` (INVALID_ARGUMENT below 1 ms or above a day). */
  grantLease(ttlMs: number, options?: CallOptions): Promise<Lease>;

  /**
   * Renews the lease for its full TTL and returns that TTL in ms. NOT_FOUND when it has
   * already expired or was revoked: its keys are gone, grant a new one.
   */
  keepAliveLease(id: LeaseId, options?: CallOptions): Promise<number>;

  /** Ends the lease now and deletes its keys. Not an error when it has already ended. */
  revokeLease(id: LeaseId, options?: CallOptions): Promise<void>;

  /**
   * Watches every key under `prefix`. Resolves once the watch is set up (UNAVAILABLE
   * when it cannot be); from then on it survives backend outages, resuming from the
   * revision after the last one delivered. When the history it needs is gone it lists
   * the prefix again and goes on (`onResync`); without `onResync`, OUT_OF_RANGE (thrown,
   * or later via onError).
   */
  watch(prefix: string, handlers: WatchHandlers, options?: WatchOptions): Promise<Watch>;

  /** Closes watches, timers and connections. Idempotent. Leases are left to expire. */
  close(): Promise<void>;
}

const MAX_KEY_LENGTH = 1024;
export const MAX_LEASE_TTL_MS = 24 * 3600 * 1000;

/** Keys are relative: non-empty, no leading '/', no NUL, at most 1024 characters. */
export function validateKey(key: string, what = 'key'): string {
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_KEY_LENGTH || key.startsWith('/') || key.includes('\0')) {
    throw new StorageError(Code.INVALID_ARGUMENT,
      `cluster store ${what} "${String(key).slice(0, 80)}" is not valid: use 1-${MAX_KEY_LENGTH} characters, no leading '/', no NUL`);
  }
  return key;
}

/** A prefix may be empty (the whole cluster) but otherwise follows the key rules. */
export function validatePrefix(prefix: string): string {
  return prefix === '' ? prefix : validateKey(prefix, 'prefix');
}

export function validateTtlMs(ttlMs: number): number {
  if (!Number.isInteger(ttlMs) || ttlMs < 1 || ttlMs > MAX_LEASE_TTL_MS) {
    throw new StorageError(Code.INVALID_ARGUMENT, `lease TTL ${ttlMs} ms is not valid: use a whole number of ms from 1 to ${MAX_LEASE_TTL_MS}`);
  }
  return ttlMs;
}

/** Checks a transaction's shape; every implementation calls it first. */
export function validateTxn(request: TxnRequest): void {
  for (const g of request.guards) {
    validateKey(g.key, 'guard key');
    if (!Number.isSafeInteger(g.modRevision) || g.modRevision < 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, `guard on "${g.key}" has mod revision ${g.modRevision}: use 0 (absent) or a revision`);
    }
  }
  const seen = new Set<string>();
  for (const op of request.ops) {
    validateKey(op.key, `${op.type} key`);
    if (seen.has(op.key)) throw new StorageError(Code.INVALID_ARGUMENT, `transaction touches "${op.key}" twice`);
    seen.add(op.key);
  }
}

/** JSON text of a value; INVALID_ARGUMENT for what JSON cannot hold (undefined, NaN, cycles). */
export function encodeValue(key: string, value: JsonValue): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new StorageError(Code.INVALID_ARGUMENT, `value for "${key}" is not JSON: ${(err as Error).message}`, { cause: err });
  }
  if (text === undefined) throw new StorageError(Code.INVALID_ARGUMENT, `value for "${key}" is not JSON`);
  return text;
}

export function decodeValue(key: string, text: string): JsonValue {
  try {
    return JSON.parse(text) as JsonValue;
  } catch (err) {
    throw new StorageError(Code.DATA_LOSS, `cluster store value at "${key}" is not valid JSON`, { cause: err, details: { key } });
  }
}

/** For callers that treat a lost race as an error: ABORTED when the guards failed. */
export function requireCommitted(result: TxnResult, what: string): number {
  if (!result.succeeded) {
    throw new StorageError(Code.ABORTED, `${what}: changed concurrently (store revision ${result.revision}), read again and retry`, {
      details: { revision: result.revision, keys: [...result.current.keys()] },
    });
  }
  return result.revision;
}

/** A guard for "the key is as I read it" (or absent when `kv` is undefined). */
export function guardFor(key: string, kv: KeyValue | undefined): Guard {
  return { key, modRevision: kv?.modRevision ?? 0 };
}
