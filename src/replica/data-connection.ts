/**
 * One connection of the replica data channel (docs/replica-protocol.md), server side:
 * the hello binds it to a replica at an epoch, then requests are parsed, handed to the
 * replica core (Replica.runBatch at the bound epoch, so fencing and ordering are exactly
 * those of every other path) and answered in any order as they complete. Replies that
 * complete within one event-loop turn go out in one corked write.
 *
 * Backpressure: past `maxInflightRequests` or `maxInflightBytes` in flight the socket
 * stops reading until replies bring it back under. A malformed frame, a peer that leaves
 * mid-frame, a stale epoch or a newer engine's hello ends the connection with a logged
 * reason; pooled memory comes back when the replica has finished with it.
 */
import type { Socket } from 'node:net';
import type { BufferPool } from '../common/buffer-pool.js';
import { Code, StorageError, isStaleEpoch } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import {
  DataOp, DataReason, FLAG_FUA, FLAG_MAY_TRIM, HELLO_BYTES, MAX_MESSAGE_BYTES, REPLY_HEADER_BYTES, decodeHello, encodeHelloReply, encodeReplyHeader, helloLength,
  isMalformedFrame, type Hello,
} from './data-frames.js';
import { RequestParser, type ParsedRequest } from './data-request-parser.js';
import type { IoRequest, IoResult } from './io-types.js';
import type { ReplicaManager } from './replica-manager.js';
import type { Replica } from './replica.js';

export interface DataConnectionLimits {
  maxPayloadBytes: number;
  maxInflightRequests: number;
  maxInflightBytes: number;
  /** Requests and bytes handed to the replica in one batch (its batch limits). */
  maxBatchRequests: number;
  maxBatchBytes: number;
  handshakeTimeoutMs: number;
}

export interface DataConnectionHost {
  manager: ReplicaManager;
  pool: BufferPool;
  limits: DataConnectionLimits;
  log: Logger;
  /** Called once the hello was admitted, before it is answered: closes older epochs' connections. */
  bound(conn: DataConnection): void;
  closed(conn: DataConnection): void;
}

/** Why a connection ended: the `reason` field of its log line. */
export type CloseReason = 'peer-closed' | 'peer-closed-mid-frame' | 'malformed-frame' | 'handshake-refused' | 'handshake-timeout'
  | 'stale-epoch' | 'fenced-by-newer-epoch' | 'socket-error' | 'server-closing';

interface Pending {
  id: number;
  op: DataOp;
  bytes: number;
  owned: Buffer[];
  views: Buffer[];
}

export class DataConnection {
  replica: Replica | undefined;
  epoch = -1;
  private hello: Buffer[] = [];
  private helloHave = 0;
  private parser: RequestParser | undefined;
  /** Bytes that arrive while the hello is being admitted (after pause(), node may still deliver). */
  private early: Buffer[] | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextSeq = 1;
  private batch: IoRequest[] = [];
  private batchBytes = 0;
  private inflightBytes = 0;
  private paused = false;
  private corked = false;
  private closedFlag = false;
  /** Fenced: the last replies are on their way, nothing more is read or written. */
  private ending = false;
  private readonly timer: NodeJS.Timeout;
  private readonly sink = (r: IoResult): void => this.onResult(r);

  constructor(private readonly socket: Socket, private readonly host: DataConnectionHost, readonly peer: string) {
    this.timer = setTimeout(() => this.close('handshake-timeout'), host.limits.handshakeTimeoutMs);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.close(this.parser?.midFrame || this.helloHave > 0 ? 'peer-closed-mid-frame' : 'peer-closed'));
    socket.on('error', (err) => this.close('socket-error', { err }));
    socket.on('close', () => this.close('peer-closed'));
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  /** Ends the connection now; requests already handed to the replica still finish there. */
  close(reason: CloseReason, fields: Record<string, unknown> = {}): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    clearTimeout(this.timer);
    this.parser?.release();
    this.socket.destroy();
    const quiet = reason === 'peer-closed' || reason === 'server-closing';
    const line = { peer: this.peer, replica: this.replica?.id, volumeId: this.replica?.volumeId, epoch: this.epoch, reason, inflight: this.pending.size, ...fields };
    if (quiet) this.host.log.info(line, 'replica data connection closed');
    else this.host.log.warn(line, 'replica data connection closed');
    this.host.closed(this);
  }

  private onData(chunk: Buffer): void {
    if (this.closedFlag) return;
    if (this.early) {
      this.early.push(chunk);
      return;
    }
    try {
      if (this.parser) this.parser.feed(chunk);
      else this.onHelloBytes(chunk);
    } catch (err) {
      if (!isMalformedFrame(err)) throw err;
      return this.close('malformed-frame', { field: err.details.field, err: err.message });
    }
    this.submitBatch();
    this.applyBackpressure();
  }

  private onHelloBytes(chunk: Buffer): void {
    this.hello.push(chunk);
    this.helloHave += chunk.length;
    if (this.helloHave < HELLO_BYTES) return;
    const bytes = Buffer.concat(this.hello, this.helloHave);
    const length = helloLength(bytes);
    if (bytes.length < length) return;
    const hello = decodeHello(bytes);
    clearTimeout(this.timer);
    this.hello = [];
    this.helloHave = 0;
    this.socket.pause();
    this.early = length < bytes.length ? [bytes.subarray(length)] : [];
    this.bind(hello).catch((err: unknown) => this.close('socket-error', { err }));
  }

  private async bind(hello: Hello): Promise<void> {
    let replica: Replica;
    try {
      replica = await this.host.manager.open({ replicaId: hello.replicaId, volumeId: hello.volumeId });
      if (this.closedFlag) return;
      replica.admitEpoch(hello.epoch);
    } catch (err) {
      return this.refuse(hello, err);
    }
    if (this.closedFlag) return;
    this.replica = replica;
    this.epoch = hello.epoch;
    this.host.bound(this);
    const limits = this.host.limits;
    this.socket.write(encodeHelloReply({
      code: Code.OK, reason: DataReason.NONE, epoch: replica.epoch, sizeBytes: replica.sizeBytes,
      maxPayloadBytes: limits.maxPayloadBytes, maxInflightRequests: limits.maxInflightRequests, message: '',
    }));
    this.host.log.info({ peer: this.peer, replica: replica.id, volumeId: replica.volumeId, epoch: hello.epoch }, 'replica data connection bound');
    this.parser = new RequestParser(this.host.pool, limits.maxPayloadBytes, (r) => this.onRequest(r));
    const early = this.early ?? [];
    this.early = undefined;
    for (const chunk of early) this.onData(chunk);
    if (!this.paused && !this.closedFlag) this.socket.resume();
  }

  private refuse(hello: Hello, err: unknown): void {
    const e = err instanceof StorageError ? err : new StorageError(Code.INTERNAL, String(err));
    const stale = isStaleEpoch(e);
    this.socket.end(encodeHelloReply({
      code: e.code, reason: stale ? DataReason.STALE_EPOCH : DataReason.NONE, epoch: typeof e.details.newestEpoch === 'number' ? e.details.newestEpoch : 0,
      sizeBytes: 0, maxPayloadBytes: 0, maxInflightRequests: 0, message: e.message,
    }));
    this.close(stale ? 'stale-epoch' : 'handshake-refused', { requestedReplica: hello.replicaId, requestedEpoch: hello.epoch, code: e.code });
  }

  private onRequest(r: ParsedRequest): void {
    const h = r.header;
    const seq = this.nextSeq++;
    const p: Pending = { id: h.id, op: h.op, bytes: h.lengthBytes, owned: r.owned, views: r.views };
    let request: IoRequest;
    if (h.op === DataOp.WRITE) request = { seq, op: 'write', offset: h.offset, lengthBytes: h.lengthBytes, parts: r.views, fua: (h.flags & FLAG_FUA) !== 0 };
    else if (h.op === DataOp.READ) {
      this.host.pool.take(h.lengthBytes, p.views, p.owned);
      request = { seq, op: 'read', offset: h.offset, lengthBytes: h.lengthBytes, targets: p.views };
    } else if (h.op === DataOp.TRIM) {
      p.bytes = 0;
      request = { seq, op: 'trim', offset: h.offset, lengthBytes: h.lengthBytes };
    } else if (h.op === DataOp.WRITE_ZEROES) {
      p.bytes = 0;
      request = { seq, op: 'write-zeroes', offset: h.offset, lengthBytes: h.lengthBytes, mayTrim: (h.flags & FLAG_MAY_TRIM) !== 0 };
    } else request = { seq, op: 'flush', offset: 0, lengthBytes: 0 };
    const limits = this.host.limits;
    if (this.batch.length >= limits.maxBatchRequests || this.batchBytes + p.bytes > limits.maxBatchBytes) this.submitBatch();
    this.pending.set(seq, p);
    this.inflightBytes += p.bytes;
    this.batch.push(request);
    this.batchBytes += p.bytes;
  }

  private submitBatch(): void {
    if (this.batch.length === 0) return;
    const batch = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    this.replica!.runBatch(this.epoch, batch, this.sink);
  }

  private onResult(r: IoResult): void {
    const p = this.pending.get(r.seq)!;
    this.pending.delete(r.seq);
    this.inflightBytes -= p.bytes;
    if (this.closedFlag || this.ending) return this.host.pool.give(p.owned);
    this.cork();
    if (r.error) {
      const message = Buffer.from(r.error.message, 'utf8').subarray(0, MAX_MESSAGE_BYTES);
      const stale = isStaleEpoch(r.error);
      this.socket.write(encodeReplyHeader({ id: p.id, code: r.error.code, reason: stale ? DataReason.STALE_EPOCH : DataReason.NONE, lengthBytes: message.length }));
      if (message.length > 0) this.socket.write(message);
      this.host.pool.give(p.owned);
      // A newer engine exists: answer what was asked, then take no more from this one.
      if (stale) this.endFenced();
    } else if (p.op === DataOp.READ) {
      const header = encodeReplyHeader({ id: p.id, code: Code.OK, reason: DataReason.NONE, lengthBytes: p.bytes }, Buffer.allocUnsafe(REPLY_HEADER_BYTES));
      this.socket.write(header);
      const last = p.views.length - 1;
      p.views.forEach((v, i) => this.socket.write(v, i === last ? () => this.host.pool.give(p.owned) : undefined));
    } else {
      this.socket.write(encodeReplyHeader({ id: p.id, code: Code.OK, reason: DataReason.NONE, lengthBytes: 0 }));
      this.host.pool.give(p.owned);
    }
    this.applyBackpressure();
  }

  private endFenced(): void {
    if (this.closedFlag || this.ending) return;
    this.ending = true;
    this.socket.pause();
    this.socket.removeAllListeners('data');
    this.socket.end(() => this.close('stale-epoch', { newestEpoch: this.replica?.epoch }));
  }

  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    setImmediate(() => {
      this.corked = false;
      this.socket.uncork();
    });
  }

  private applyBackpressure(): void {
    if (this.closedFlag || !this.parser) return;
    const limits = this.host.limits;
    const over = this.pending.size >= limits.maxInflightRequests || this.inflightBytes >= limits.maxInflightBytes;
    if (over && !this.paused) this.socket.pause();
    else if (!over && this.paused) this.socket.resume();
    this.paused = over;
  }
}
