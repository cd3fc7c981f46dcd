/**
 * The client side of one Io stream, for the engine: a promise per request, many requests
 * in flight, small ones batched.
 *
 * Requests made within one event-loop turn go out together in one IoBatch; a batch is sent
 * at once when it reaches `batchBytes` (1 MiB) or `maxBatchRequests`. Reads and writes
 * larger than `chunkBytes` (4 MiB) are split into several requests and joined again, so
 * that no batch exceeds the server's limits. At most `maxInflightBytes` (32 MiB) and
 * `maxInflightRequests` (4096) are in flight; more wait in the queue, in order.
 *
 * The stream opens with an empty batch that names the replica and presents the epoch; the
 * replica adopts it (or, for a stale one, ends the stream with FAILED_PRECONDITION).
 * `ready` resolves with the replica's epoch once it answered. Requests need not wait
 * for it. When the stream fails, every pending request and every later one rejects with
 * the stream's error.
 */
import type * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import { fromServiceError } from '../rpc/status.js';
import { DEFAULT_REPLICA_LIMITS, requestBytes, type IoOp, type IoRequest } from './io-types.js';
import type { ReplicaRefInput } from './replica-manager.js';
import { opToWire, refToWire, statusFromWire, type IoBatchMessage, type IoReplyBatchMessage, type IoRequestMessage } from './replica-wire.js';

export interface IoStreamOptions {
  batchBytes?: number;
  maxBatchRequests?: number;
  chunkBytes?: number;
  maxInflightBytes?: number;
  maxInflightRequests?: number;
}

interface Pending {
  request: IoRequest;
  bytes: number;
  resolve: (data: Buffer | undefined) => void;
  reject: (err: StorageError) => void;
}

const EMPTY = new Uint8Array(0);

export class IoStream {
  /** Resolves with the replica's epoch once the replica accepted the stream. */
  readonly ready: Promise<number>;
  private readonly opts: Required<IoStreamOptions>;
  private readonly pending = new Map<number, Pending>();
  private queue: Pending[] = [];
  private queueBytes = 0;
  private nextSeq = 1;
  private inflightBytes = 0;
  private sendScheduled = false;
  private writeBlocked = false;
  private failure: StorageError | undefined;
  private ended = false;
  private readyResolve!: (epoch: number) => void;
  private readyReject!: (err: StorageError) => void;
  private closedResolve!: () => void;
  private drainWaiters: (() => void)[] = [];
  private readonly closed: Promise<void>;
  private readonly sendBound = (): void => this.pump();

  constructor(private readonly call: grpc.ClientDuplexStream<IoBatchMessage, IoReplyBatchMessage>, readonly ref: ReplicaRefInput, readonly epoch: number, options: IoStreamOptions = {}) {
    this.opts = {
      batchBytes: 1 << 20, maxBatchRequests: DEFAULT_REPLICA_LIMITS.maxBatchRequests, chunkBytes: 4 << 20,
      maxInflightBytes: 32 << 20, maxInflightRequests: 4096, ...options,
    };
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.ready.catch(() => undefined);
    this.closed = new Promise((resolve) => (this.closedResolve = resolve));
    call.on('data', (m: IoReplyBatchMessage) => this.onReplies(m));
    call.on('error', (err: unknown) => this.fail(fromServiceError(err)));
    call.on('end', () => this.fail(new StorageError(Code.UNAVAILABLE, `the replica ended the stream of ${ref.replicaId}`)));
    call.on('status', () => this.closedResolve());
    call.write({ replica: refToWire(ref), epoch, requests: [] });
  }

  write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    if (data.byteLength <= this.opts.chunkBytes) return this.submit({ op: 'write', offset, lengthBytes: data.byteLength, data, fua }).then(() => undefined);
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < data.byteLength; at += this.opts.chunkBytes) {
      const part = data.subarray(at, Math.min(at + this.opts.chunkBytes, data.byteLength));
      parts.push(this.submit({ op: 'write', offset: offset + at, lengthBytes: part.byteLength, data: part, fua }));
    }
    return Promise.all(parts).then(() => undefined);
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    if (lengthBytes <= this.opts.chunkBytes) return (await this.submit({ op: 'read', offset, lengthBytes })) ?? Buffer.alloc(0);
    const parts: Promise<Buffer | undefined>[] = [];
    for (let at = 0; at < lengthBytes; at += this.opts.chunkBytes) {
      parts.push(this.submit({ op: 'read', offset: offset + at, lengthBytes: Math.min(this.opts.chunkBytes, lengthBytes - at) }));
    }
    return Buffer.concat((await Promise.all(parts)).map((b) => b ?? Buffer.alloc(0)));
  }

  /** Makes durable every write submitted before it on this stream (and every other). */
  async flush(): Promise<void> {
    await this.submit({ op: 'flush', offset: 0, lengthBytes: 0 });
  }

  async trim(offset: number, lengthBytes: number): Promise<void> {
    await this.submit({ op: 'trim', offset, lengthBytes });
  }

  async writeZeroes(offset: number, lengthBytes: number, mayTrim = false): Promise<void> {
    await this.submit({ op: 'write-zeroes', offset, lengthBytes, mayTrim });
  }

  /** Requests submitted and not yet answered. */
  get inflight(): number {
    return this.pending.size + this.queue.length;
  }

  /** Sends what is queued, waits for every reply, then closes the stream. */
  async end(): Promise<void> {
    if (!this.ended) {
      this.ended = true;
      this.pump();
      if (this.inflight > 0 && !this.failure) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
      if (!this.failure) this.call.end();
    }
    await this.closed;
  }

  /** Drops the stream now; pending requests reject with CANCELLED. */
  cancel(): void {
    this.fail(new StorageError(Code.CANCELLED, `stream of replica ${this.ref.replicaId} cancelled`));
    this.call.cancel();
  }

  private submit(fields: Omit<IoRequest, 'seq'>): Promise<Buffer | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended) return Promise.reject(new StorageError(Code.FAILED_PRECONDITION, `stream of replica ${this.ref.replicaId} is ending`));
    return new Promise((resolve, reject) => {
      const request: IoRequest = { seq: this.nextSeq++, ...fields };
      const p: Pending = { request, bytes: requestBytes(request), resolve, reject };
      this.queue.push(p);
      this.queueBytes += p.bytes;
      if (this.queueBytes >= this.opts.batchBytes || this.queue.length >= this.opts.maxBatchRequests) this.pump();
      else if (!this.sendScheduled) {
        this.sendScheduled = true;
        setImmediate(this.sendBound);
      }
    });
  }

  /** Sends queued requests as batches while the in-flight limits allow. */
  private pump(): void {
    this.sendScheduled = false;
    while (this.queue.length > 0 && !this.failure && !this.writeBlocked) {
      const batch = this.takeBatch();
      if (batch.length === 0) return;
      const flowing = this.call.write({ replica: null, epoch: this.epoch, requests: batch.map(toWire) });
      if (!flowing) {
        this.writeBlocked = true;
        this.call.once('drain', () => {
          this.writeBlocked = false;
          this.pump();
        });
      }
    }
  }

  private takeBatch(): Pending[] {
    const batch: Pending[] = [];
    let bytes = 0;
    while (this.queue.length > 0 && batch.length < this.opts.maxBatchRequests) {
      const next = this.queue[0]!;
      const full = batch.length > 0 && bytes + next.bytes > this.opts.batchBytes;
      const limited = this.pending.size > 0 && (this.inflightBytes + next.bytes > this.opts.maxInflightBytes || this.pending.size >= this.opts.maxInflightRequests);
      if (full || limited) break;
      this.queue.shift();
      this.queueBytes -= next.bytes;
      bytes += next.bytes;
      this.inflightBytes += next.bytes;
      this.pending.set(next.request.seq, next);
      batch.push(next);
    }
    return batch;
  }

  private onReplies(m: IoReplyBatchMessage): void {
    if (m.replies.length === 0) return this.readyResolve(m.epoch);
    this.readyResolve(m.epoch);
    for (const r of m.replies) {
      const p = this.pending.get(r.seq);
      if (!p) continue;
      this.pending.delete(r.seq);
      this.inflightBytes -= p.bytes;
      if (r.status && r.status.code !== 0) {
        p.reject(statusFromWire(r.status, { replica: this.ref.replicaId, seq: r.seq, op: p.request.op, offset: p.request.offset }));
      } else {
        p.resolve(p.request.op === 'read' ? Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength) : undefined);
      }
    }
    if (this.queue.length > 0 && !this.sendScheduled) this.pump();
    if (this.inflight === 0) this.wakeDrainWaiters();
  }

  private wakeDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  private fail(err: StorageError): void {
    if (this.failure) return;
    this.failure = err;
    this.readyReject(err);
    const all = [...this.pending.values(), ...this.queue];
    this.pending.clear();
    this.queue = [];
    for (const p of all) p.reject(err);
    this.wakeDrainWaiters();
  }
}

function toWire(p: Pending): IoRequestMessage {
  const r = p.request;
  return { seq: r.seq, op: opToWire(r.op as IoOp), offset: r.offset, lengthBytes: r.lengthBytes, data: r.data ?? EMPTY, fua: r.fua === true, mayTrim: r.mayTrim === true };
}
