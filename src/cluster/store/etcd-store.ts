/**
 * The cluster store on etcd (v3 API, through the `etcd3` client over grpc-js). Every call
 * carries a gRPC deadline plus a local backstop, so an unreachable or frozen etcd turns
 * into UNAVAILABLE within `callTimeoutMs`. No call is retried on the same endpoint: a
 * write whose answer was lost is reported, not replayed (see cluster-store.ts). With
 * several endpoints a call that failed to connect moves on to the next one.
 */
import { handleWhen, noop, retry, type IPolicy } from 'cockatiel';
import { Etcd3, isRecoverableError, type IKeyValue, type IRequestOp, type ITxnRequest } from 'etcd3';
import { Code, StorageError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type {
  CallOptions, ClusterStore, KeyValue, Lease, LeaseId, ListResult, TxnRequest, TxnResult, Watch, WatchHandlers, WatchOptions,
} from './cluster-store.js';
import { decodeValue, encodeValue, validateKey, validatePrefix, validateTtlMs, validateTxn } from './cluster-store.js';
import { withDeadline, type Deadline } from './call-deadline.js';
import { fromEtcdError } from './etcd-errors.js';
import { EtcdWatch } from './etcd-watch.js';
import { clusterPrefix, prefixEnd } from './keys.js';

export interface EtcdStoreOptions {
  /** Client URLs, e.g. ["https://10.0.0.1:2379"]. */
  endpoints: readonly string[];
  /** Cluster name: keys live under /cairn/<cluster>/. */
  cluster: string;
  /** Deadline of each call; default 5000 ms. */
  callTimeoutMs?: number;
  /** PEM material for https endpoints. */
  tls?: { caPem: Buffer; certPem?: Buffer; keyPem?: Buffer };
  log: Logger;
}

const LIST_PAGE_SIZE = 500;

export class EtcdStore implements ClusterStore {
  readonly kind = 'etcd' as const;
  private readonly client: Etcd3;
  private readonly prefix: Buffer;
  private readonly callTimeoutMs: number;
  private readonly log: Logger;
  private readonly watches = new Set<EtcdWatch>();
  private closed = false;

  /** Creates the client; it connects lazily, so this succeeds while etcd is away. */
  constructor(options: EtcdStoreOptions) {
    if (options.endpoints.length === 0) throw new StorageError(Code.INVALID_ARGUMENT, 'the etcd store needs at least one endpoint');
    this.prefix = Buffer.from(clusterPrefix(options.cluster));
    this.callTimeoutMs = options.callTimeoutMs ?? 5000;
    this.log = options.log;
    const global: IPolicy = options.endpoints.length > 1
      ? retry(handleWhen(isRecoverableError), { maxAttempts: options.endpoints.length - 1 })
      : noop;
    this.client = new Etcd3({
      hosts: [...options.endpoints],
      ...(options.tls ? { credentials: { rootCertificate: options.tls.caPem, privateKey: options.tls.keyPem, certChain: options.tls.certPem } } : {}),
      faultHandling: { host: () => noop, global },
      grpcOptions: {
        // Notice a dead connection under a long-lived stream (watch) within ~15 s.
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5_000,
        'grpc.keepalive_permit_without_calls': 0,
        // Come back quickly once etcd does.
        'grpc.initial_reconnect_backoff_ms': 200,
        'grpc.max_reconnect_backoff_ms': 2_000,
      },
    });
    this.log.info({ endpoints: options.endpoints, cluster: options.cluster }, 'cluster store opened on etcd');
  }

  private abs(key: string): Buffer {
    return Buffer.concat([this.prefix, Buffer.from(key, 'utf8')]);
  }

  private rel(key: Buffer): string {
    return key.subarray(this.prefix.length).toString('utf8');
  }

  private toKeyValue(kv: IKeyValue): KeyValue {
    const key = this.rel(kv.key);
    const out: KeyValue = {
      key,
      value: decodeValue(key, kv.value.toString('utf8')),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
      version: Number(kv.version),
    };
    if (kv.lease && kv.lease !== '0') out.leaseId = kv.lease as LeaseId;
    return out;
  }

  /** Runs one bounded call and maps whatever it throws. */
  private async call<T>(what: string, options: CallOptions | undefined, fn: (deadline: Deadline) => Promise<T>): Promise<T> {
    if (this.closed) throw new StorageError(Code.FAILED_PRECONDITION, `${what}: the cluster store is closed`);
    try {
      return await withDeadline(what, options?.timeoutMs ?? this.callTimeoutMs, options?.signal, fn);
    } catch (err) {
      throw fromEtcdError(err, what);
    }
  }

  async get(key: string, options?: CallOptions): Promise<KeyValue | undefined> {
    validateKey(key);
    return this.call(`get ${key}`, options, async (d) => {
      const res = await this.client.kv.range({ key: this.abs(key) }, { deadline: d.atMs });
      const kv = res.kvs[0];
      return kv ? this.toKeyValue(kv) : undefined;
    });
  }

  async list(prefix: string, options?: CallOptions): Promise<ListResult> {
    validatePrefix(prefix);
    return this.call(`list ${prefix}`, options, async (d) => {
      const start = this.abs(prefix);
      const end = prefixEnd(start) ?? Buffer.from([0]);
      const items: KeyValue[] = [];
      let from = start;
      let revision: number | undefined;
      for (;;) {
        // Later pages are read at the first page's revision: one consistent snapshot.
        const res = await this.client.kv.range(
          { key: from, range_end: end, limit: LIST_PAGE_SIZE, ...(revision === undefined ? {} : { revision }) },
          { deadline: d.atMs },
        );
        revision ??= Number(res.header.revision);
        for (const kv of res.kvs) items.push(this.toKeyValue(kv));
        const last = res.kvs[res.kvs.length - 1];
        if (!res.more || !last) return { items, revision };
        from = Buffer.concat([last.key, Buffer.from([0])]);
      }
    });
  }

  async txn(request: TxnRequest, options?: CallOptions): Promise<TxnResult> {
    validateTxn(request);
    const req: ITxnRequest = {
      compare: request.guards.map((g) => ({ key: this.abs(g.key), target: 'Mod', result: 'Equal', mod_revision: g.modRevision })),
      success: request.ops.map((op): IRequestOp => op.type === 'put'
        ? { request_put: { key: this.abs(op.key), value: Buffer.from(encodeValue(op.key, op.value)), ...(op.leaseId ? { lease: op.leaseId } : {}) } }
        : { request_delete_range: { key: this.abs(op.key) } }),
      failure: request.guards.map((g) => ({ request_range: { key: this.abs(g.key) } })),
    };
    return this.call('transaction', options, async (d) => {
      const res = await this.client.kv.txn(req, { deadline: d.atMs });
      const revision = Number(res.header.revision);
      if (res.succeeded) return { succeeded: true, revision };
      const current = new Map<string, KeyValue | undefined>();
      request.guards.forEach((g, i) => {
        const kv = res.responses[i]?.response_range.kvs[0];
        current.set(g.key, kv ? this.toKeyValue(kv) : undefined);
      });
      return { succeeded: false, revision, current };
    });
  }

  async grantLease(ttlMs: number, options?: CallOptions): Promise<Lease> {
    validateTtlMs(ttlMs);
    return this.call('grant lease', options, async (d) => {
      const res = await this.client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000) }, { deadline: d.atMs });
      if (res.error) throw new StorageError(Code.INTERNAL, `grant lease: etcd refused: ${res.error}`);
      return { id: res.ID as LeaseId, ttlMs: Number(res.TTL) * 1000 };
    });
  }

  async keepAliveLease(id: LeaseId, options?: CallOptions): Promise<number> {
    return this.call(`keep lease ${id} alive`, options, async (d) => {
      const stream = await this.client.leaseClient.leaseKeepAlive({ deadline: d.atMs });
      try {
        const res = await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.on('end', () => reject(new StorageError(Code.UNAVAILABLE, 'etcd ended the keep-alive stream')));
          stream.write({ ID: id });
        });
        const ttlS = Number(res.TTL);
        if (!(ttlS > 0)) throw new StorageError(Code.NOT_FOUND, `lease ${id} has expired or was revoked`, { details: { lease: id } });
        return ttlS * 1000;
      } finally {
        stream.end();
        stream.cancel();
      }
    });
  }

  async revokeLease(id: LeaseId, options?: CallOptions): Promise<void> {
    await this.call(`revoke lease ${id}`, options, async (d) => {
      try {
        await this.client.leaseClient.leaseRevoke({ ID: id }, { deadline: d.atMs });
      } catch (err) {
        if (fromEtcdError(err, 'revoke').code !== Code.NOT_FOUND) throw err;
      }
    });
  }

  async watch(prefix: string, handlers: WatchHandlers, options?: WatchOptions): Promise<Watch> {
    validatePrefix(prefix);
    const timeoutMs = options?.timeoutMs ?? this.callTimeoutMs;
    const start = this.abs(prefix);
    const watch = new EtcdWatch({
      client: this.client,
      start,
      end: prefixEnd(start) ?? Buffer.from([0]),
      relativeKey: (key) => this.rel(key),
      handlers,
      list: () => this.list(prefix),
      fromRevision: options?.fromRevision,
      createTimeoutMs: timeoutMs,
      log: this.log.child({ watch: prefix }),
      onClosed: (w) => this.watches.delete(w),
    });
    this.watches.add(watch);
    try {
      await this.call(`watch ${prefix}`, options, () => watch.start());
    } catch (err) {
      await watch.close();
      throw err;
    }
    return watch;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.watches].map((w) => w.close()));
    this.client.close();
  }
}

