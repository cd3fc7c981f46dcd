/**
 * The node registry. Each cairnd writes its record (`nodes/<id>`: address, zone, labels,
 * pool capacity, version, heartbeat time) and a liveness key (`nodes/<id>/alive`) attached
 * to a lease it keeps renewing. A node is up while its liveness key exists: when the lease
 * expires (the daemon died, froze, or lost the store for longer than the TTL), the key
 * vanishes and the node is down. The record stays, so a down node is still listed.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { ClusterStore, JsonValue, KeyValue, TxnOp } from './store/cluster-store.js';
import { guardFor } from './store/cluster-store.js';
import { keys } from './store/keys.js';
import { LeaseKeeper } from './store/lease-keeper.js';
import type { PlacementNode } from './placement.js';

export interface NodeCapacity {
  totalBytes: number;
  freeBytes: number;
}

export interface NodeRecord {
  nodeId: NodeId;
  name: string;
  /** host:port of the node's peer gRPC endpoint. */
  peerAddress: string;
  /** host:port of the node's replica data channel; absent when it serves none (or runs an older cairnd). */
  dataAddress?: string;
  zone?: string;
  labels: Record<string, string>;
  capacity: NodeCapacity;
  version: string;
  /** When the node last rewrote its record (ISO 8601). */
  heartbeatAt: string;
}

export type NodeRegistration = Omit<NodeRecord, 'heartbeatAt'>;

export interface NodeStatus extends NodeRecord {
  /** True while the node's lease is alive. */
  up: boolean;
}

export interface NodeRegistryOptions {
  /** Lease TTL: how long a silent node stays up; default 10000 ms. */
  ttlMs?: number;
  /** How often the record's heartbeatAt is rewritten; default 30000 ms. */
  heartbeatIntervalMs?: number;
  /** Delay between attempts to come back after the lease was lost; default 1000 ms. */
  retryMs?: number;
  log: Logger;
}

const MAX_CAS_ATTEMPTS = 5;

function isRecord(v: JsonValue): v is { [key: string]: JsonValue } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function recordToJson(r: NodeRecord): JsonValue {
  return {
    nodeId: r.nodeId, name: r.name, peerAddress: r.peerAddress, ...(r.dataAddress ? { dataAddress: r.dataAddress } : {}),
    ...(r.zone === undefined ? {} : { zone: r.zone }), labels: { ...r.labels },
    capacity: { totalBytes: r.capacity.totalBytes, freeBytes: r.capacity.freeBytes }, version: r.version, heartbeatAt: r.heartbeatAt,
  };
}

/** Reads a stored node record; undefined when it does not have the expected shape. */
export function parseNodeRecord(value: JsonValue): NodeRecord | undefined {
  if (!isRecord(value)) return undefined;
  const { nodeId, name, peerAddress, dataAddress, zone, labels, capacity, version, heartbeatAt } = value;
  if (typeof nodeId !== 'string' || typeof name !== 'string' || typeof peerAddress !== 'string' || typeof version !== 'string'
    || typeof heartbeatAt !== 'string' || (zone !== undefined && typeof zone !== 'string') || (dataAddress !== undefined && typeof dataAddress !== 'string') || labels === undefined || !isRecord(labels)
    || capacity === undefined || !isRecord(capacity) || typeof capacity.totalBytes !== 'number' || typeof capacity.freeBytes !== 'number'
    || !Object.values(labels).every((l) => typeof l === 'string')) {
    return undefined;
  }
  const record: NodeRecord = {
    nodeId: nodeId as NodeId, name, peerAddress, labels: labels as Record<string, string>,
    capacity: { totalBytes: capacity.totalBytes, freeBytes: capacity.freeBytes }, version, heartbeatAt,
  };
  if (zone !== undefined) record.zone = zone;
  if (typeof dataAddress === 'string' && dataAddress !== '') record.dataAddress = dataAddress;
  return record;
}

/** Every registered node with its up/down state, sorted by name. */
export async function listNodes(store: ClusterStore, log?: Logger): Promise<NodeStatus[]> {
  const { items } = await store.list(keys.nodesPrefix);
  const alive = new Set(items.filter((kv) => kv.key.endsWith('/alive')).map((kv) => kv.key.slice(0, -'/alive'.length)));
  const nodes: NodeStatus[] = [];
  for (const kv of items) {
    if (kv.key.endsWith('/alive')) continue;
    const record = parseNodeRecord(kv.value);
    if (!record) {
      log?.warn({ key: kv.key }, 'node record unreadable; skipped');
      continue;
    }
    nodes.push({ ...record, up: alive.has(kv.key) });
  }
  return nodes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The placement view of the registry's nodes. */
export function toPlacementNodes(nodes: readonly NodeStatus[]): PlacementNode[] {
  return nodes.map((n) => ({ nodeId: n.nodeId, name: n.name, ...(n.zone === undefined ? {} : { zone: n.zone }), up: n.up, freeBytes: n.capacity.freeBytes }));
}

/** Removes a down node's record (decommissioning). FAILED_PRECONDITION while it is up. */
export async function forgetNode(store: ClusterStore, nodeId: NodeId): Promise<void> {
  const [record, alive] = await Promise.all([store.get(keys.node(nodeId)), store.get(keys.nodeAlive(nodeId))]);
  if (alive) throw new StorageError(Code.FAILED_PRECONDITION, `node ${nodeId} is up: stop its cairnd before forgetting it`);
  if (!record) return;
  const r = await store.txn({ guards: [guardFor(keys.node(nodeId), record), guardFor(keys.nodeAlive(nodeId), undefined)], ops: [{ type: 'delete', key: keys.node(nodeId) }] });
  if (!r.succeeded) throw new StorageError(Code.ABORTED, `node ${nodeId} changed while being forgotten (it may have come back): try again`);
}

/** This node's side of the registry: register, stay up, report capacity. */
export class NodeRegistry {
  private readonly log: Logger;
  private readonly ttlMs: number;
  private readonly retryMs: number;
  private keeper: LeaseKeeper | undefined;
  private record: NodeRecord | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly writes = new KeyedLock();

  constructor(private readonly store: ClusterStore, private readonly options: NodeRegistryOptions) {
    this.ttlMs = options.ttlMs ?? 10_000;
    this.retryMs = options.retryMs ?? 1000;
    this.log = options.log;
  }

  /**
   * Writes the record and the liveness key under a new lease, then keeps the lease alive.
   * If the lease is lost later, the registry registers again by itself. Throws
   * UNAVAILABLE when the store cannot be reached now (call again).
   */
  async register(registration: NodeRegistration): Promise<void> {
    if (this.closed) throw new StorageError(Code.FAILED_PRECONDITION, 'the node registry is closed');
    this.record = { ...registration, labels: { ...registration.labels }, heartbeatAt: new Date().toISOString() };
    await this.establish();
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => void this.writeRecordQuietly(), this.options.heartbeatIntervalMs ?? 30_000);
    this.heartbeat.unref();
  }

  /** Grants a lease and writes record + liveness key in one transaction. */
  private async establish(): Promise<void> {
    const keeper = await LeaseKeeper.grant(this.store, { ttlMs: this.ttlMs, log: this.log });
    try {
      await this.writeRecord(keeper);
    } catch (err) {
      await keeper.close({ revoke: true });
      throw err;
    }
    await this.keeper?.close({ revoke: true });
    this.keeper = keeper;
    keeper.onLost((reason) => this.onLeaseLost(keeper, reason));
    this.log.info({ lease: keeper.lease.id, ttlMs: keeper.lease.ttlMs }, 'node registered');
  }

  /** Writes one after another, so that a slow heartbeat never overwrites a newer capacity. */
  private writeRecord(keeper?: LeaseKeeper): Promise<void> {
    return this.writes.run('record', () => this.casRecord(keeper));
  }

  /** Read, then compare-and-swap the record (and the liveness key when `keeper` is given). */
  private async casRecord(keeper?: LeaseKeeper): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const record = this.record!;
      const key = keys.node(record.nodeId);
      const current: KeyValue | undefined = await this.store.get(key);
      const value: NodeRecord = { ...record, heartbeatAt: new Date().toISOString() };
      const ops: TxnOp[] = [{ type: 'put', key, value: recordToJson(value) }];
      if (keeper) ops.push({ type: 'put', key: keys.nodeAlive(record.nodeId), value: { lease: keeper.lease.id }, leaseId: keeper.lease.id });
      const r = await this.store.txn({ guards: [guardFor(key, current)], ops });
      if (r.succeeded) {
        if (this.record === record) this.record = value; // else a newer change is queued behind us
        return;
      }
      if (attempt >= MAX_CAS_ATTEMPTS) {
        throw new StorageError(Code.ABORTED, `node ${record.nodeId}: its record keeps changing concurrently; is another cairnd using the same node id?`);
      }
    }
  }

  private async writeRecordQuietly(): Promise<void> {
    if (this.closed || !this.record) return;
    try {
      await this.writeRecord();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'node heartbeat failed');
    }
  }

  /** Updates the free and total bytes others place replicas by. */
  async updateCapacity(capacity: NodeCapacity): Promise<void> {
    if (!this.record) throw new StorageError(Code.FAILED_PRECONDITION, 'register the node before updating its capacity');
    this.record = { ...this.record, capacity: { ...capacity } };
    await this.writeRecord();
  }

  /** Whether this node's lease is surely alive, i.e. others see it up. */
  isUp(): boolean {
    return this.keeper?.isAlive() ?? false;
  }

  private onLeaseLost(keeper: LeaseKeeper, reason: string): void {
    if (this.closed || keeper !== this.keeper) return;
    this.log.warn({ reason }, 'node lease lost; registering again');
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    this.retryTimer = setTimeout(() => {
      if (this.closed) return;
      this.establish().catch((err: unknown) => {
        if (this.closed) return;
        if (!isStorageError(err, Code.UNAVAILABLE)) this.log.error({ err }, 'node registration failed');
        this.scheduleRetry();
      });
    }, this.retryMs);
  }

  /** Stops renewing and revokes the lease: the node shows as down at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    clearTimeout(this.retryTimer);
    await this.keeper?.close({ revoke: true });
  }
}
