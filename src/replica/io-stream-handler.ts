/**
 * The server side of one Io stream: binds the stream to a replica with its first batch,
 * hands every batch to the replica core, and sends replies back batched: every reply
 * that completes within one event-loop turn goes in one IoReplyBatch (split at about
 * 4 MiB of read data).
 *
 * Backpressure: while more than `maxStreamInflightBytes` of requests are in flight, or
 * grpc-js has replies it could not send yet, the handler stops reading the stream; HTTP/2
 * flow control then holds the client back.
 *
 * Refusals that end the stream: a frame that is not an IoBatch (INVALID_ARGUMENT), a
 * first batch that names no replica (INVALID_ARGUMENT) or an unknown one (NOT_FOUND), a
 * later batch naming another replica (INVALID_ARGUMENT), an empty batch with a stale epoch
 * (FAILED_PRECONDITION). Everything else is a per-request status.
 */
import type * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { toServiceError } from '../rpc/status.js';
import { peerSubject } from '../rpc/tls.js';
import { requestBytes, type IoRequest, type IoResult } from './io-types.js';
import type { ReplicaManager } from './replica-manager.js';
import type { Replica } from './replica.js';
import { requestFromWire, statusToWire, type IoBatchMessage, type IoReplyBatchMessage, type IoReplyMessage, type MalformedFrame } from './replica-wire.js';

type IoCall = grpc.ServerDuplexStream<IoBatchMessage | MalformedFrame, IoReplyBatchMessage>;

const REPLY_BATCH_BYTES = 4 << 20;

export class IoStreamHandler {
  private replica: Replica | undefined;
  private binding = false;
  private readonly queued: IoBatchMessage[] = [];
  private replies: IoReplyMessage[] = [];
  private replyBytes = 0;
  private sendScheduled = false;
  private inflightRequests = 0;
  private inflightBytes = 0;
  private writeBlocked = false;
  private paused = false;
  private readEnded = false;
  private finished = false;
  private warnedStale = false;
  private readonly peer: string;
  private readonly sendBound = (): void => this.sendReplies();

  constructor(private readonly call: IoCall, private readonly manager: ReplicaManager, private readonly log: Logger) {
    this.peer = peerSubject(call) ?? call.getPeer();
    call.on('data', (m: IoBatchMessage | MalformedFrame) => this.onFrame(m));
    call.on('end', () => {
      this.readEnded = true;
      this.maybeFinish();
    });
    call.on('error', () => this.stop());
    call.on('cancelled', () => this.stop());
  }

  private onFrame(m: IoBatchMessage | MalformedFrame): void {
    if (this.finished) return;
    if ('malformed' in m) return this.fail(new StorageError(Code.INVALID_ARGUMENT, `malformed IoBatch frame: ${m.malformed}`));
    if (this.replica) return this.onBatch(this.replica, m);
    if (this.binding) {
      this.queued.push(m);
      return;
    }
    this.bind(m);
  }

  private bind(first: IoBatchMessage): void {
    if (!first.replica?.replicaId) {
      return this.fail(new StorageError(Code.INVALID_ARGUMENT, 'the first IoBatch of a stream must name the replica (replica.replica_id and replica.volume_id)'));
    }
    this.binding = true;
    const ref = { replicaId: first.replica.replicaId, volumeId: first.replica.volumeId };
    this.manager.open(ref).then((replica) => {
      this.replica = replica;
      this.log.info({ replica: replica.id, volumeId: replica.volumeId, peer: this.peer, epoch: first.epoch }, 'replica stream opened');
      this.onBatch(replica, first);
      for (const m of this.queued.splice(0)) if (!this.finished) this.onBatch(replica, m);
      this.maybeFinish();
    }, (err: unknown) => this.fail(err));
  }

  private onBatch(replica: Replica, m: IoBatchMessage): void {
    if (m.replica && (m.replica.replicaId || m.replica.volumeId) && (m.replica.replicaId !== replica.id || m.replica.volumeId !== replica.volumeId)) {
      return this.fail(new StorageError(Code.INVALID_ARGUMENT, `this stream serves replica ${replica.id} of volume ${replica.volumeId}; open another stream for ${m.replica.replicaId}`));
    }
    if (m.requests.length === 0) return this.present(replica, m.epoch);
    const requests: IoRequest[] = m.requests.map(requestFromWire);
    let bytes = 0;
    for (const r of requests) bytes += requestBytes(r);
    this.inflightRequests += requests.length;
    this.inflightBytes += bytes;
    this.updateFlow();
    let remaining = requests.length;
    replica.runBatch(m.epoch, requests, (result) => {
      if (--remaining === 0) this.inflightBytes -= bytes;
      this.onResult(result);
    });
  }

  /** An empty batch: adopt or refuse its epoch, answer with an empty reply batch. */
  private present(replica: Replica, epoch: number): void {
    try {
      replica.admitEpoch(epoch);
    } catch (err) {
      return this.fail(err);
    }
    this.call.write({ replies: [], epoch: replica.epoch });
  }

  private onResult(result: IoResult): void {
    this.inflightRequests--;
    if (this.finished) return;
    if (result.error) this.noteError(result.error);
    this.replies.push(result.error
      ? { seq: result.seq, status: statusToWire(result.error), data: EMPTY }
      : { seq: result.seq, status: null, data: result.data ?? EMPTY });
    this.replyBytes += result.data?.byteLength ?? 0;
    if (this.replyBytes >= REPLY_BATCH_BYTES) this.sendReplies();
    else if (!this.sendScheduled) {
      this.sendScheduled = true;
      setImmediate(this.sendBound);
    }
  }

  private sendReplies(): void {
    this.sendScheduled = false;
    if (this.finished || this.replies.length === 0) return this.maybeFinish();
    const replies = this.replies;
    this.replies = [];
    this.replyBytes = 0;
    const flowing = this.call.write({ replies, epoch: this.replica?.epoch ?? 0 });
    if (!flowing && !this.writeBlocked) {
      this.writeBlocked = true;
      this.call.once('drain', () => {
        this.writeBlocked = false;
        this.updateFlow();
      });
    }
    this.updateFlow();
    this.maybeFinish();
  }

  private updateFlow(): void {
    const busy = this.writeBlocked || this.inflightBytes > this.manager.limits.maxStreamInflightBytes;
    if (busy && !this.paused) {
      this.paused = true;
      this.call.pause();
    } else if (!busy && this.paused) {
      this.paused = false;
      this.call.resume();
    }
  }

  /** After the client half-closed: end once every request is answered. */
  private maybeFinish(): void {
    if (!this.readEnded || this.finished || this.inflightRequests > 0 || this.replies.length > 0 || this.binding && !this.replica) return;
    this.finished = true;
    this.call.end();
  }

  private noteError(err: StorageError): void {
    if (err.code === Code.FAILED_PRECONDITION && typeof err.details.newestEpoch === 'number') {
      if (!this.warnedStale) this.log.warn({ replica: this.replica?.id, peer: this.peer, epoch: err.details.epoch, newestEpoch: err.details.newestEpoch }, 'replica refused a stale epoch');
      this.warnedStale = true;
    } else if (err.code === Code.INTERNAL || err.code === Code.DATA_LOSS || err.code === Code.UNAVAILABLE || err.code === Code.RESOURCE_EXHAUSTED) {
      this.log.warn({ replica: this.replica?.id, peer: this.peer, err }, 'replica request failed');
    }
  }

  private fail(err: unknown): void {
    if (this.finished) return;
    this.finished = true;
    const se = toServiceError(err);
    this.log.warn({ replica: this.replica?.id, peer: this.peer, code: se.code, reason: se.details }, 'replica stream refused');
    this.call.emit('error', se);
  }

  private stop(): void {
    this.finished = true;
  }
}

const EMPTY = new Uint8Array(0);
