/**
 * One connection of the replica data channel, engine side (docs/replica-protocol.md): it
 * dials, sends the hello that binds it to one replica at the engine's epoch, then carries
 * many requests at once and matches replies to them by id.
 *
 * Sending: request headers and write payloads made in one event-loop turn leave in one
 * corked write (one writev, or one TLS write of several records); a payload is the
 * caller's own memory, never copied or joined here. Receiving: a READ's data is copied
 * from the socket's chunks straight into the caller's buffers (or one buffer made for it),
 * with no intermediate join.
 *
 * A link that fails (the socket closed or errored, a reply it cannot parse, `fail()`)
 * rejects every pending request and every later one with the same error and is never
 * used again: the engine opens a new one. Timeouts are the engine's (its sweep cancels
 * the ReplicaIo of a replica whose requests are overdue).
 */
import { connect as tcpConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Code, StorageError, STALE_EPOCH, staleEpochError } from '../common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../common/ids.js';
import {
  DataOp, DataReason, HELLO_REPLY_BYTES, MAX_MESSAGE_BYTES, REPLY_HEADER_BYTES, decodeHelloReply, decodeReplyHeader, encodeHello, encodeRequestHeader,
  isMalformedFrame, type HelloReply, type ReplyHeader,
} from '../replica/data-frames.js';
import type { PeerTlsMaterial } from '../rpc/tls.js';
import type { DataChannelStats } from './data-stats.js';

export interface DataLinkTarget {
  /** host:port of the node's data channel. */
  address: string;
  replicaId: ReplicaId;
  volumeId: VolumeId;
  nodeId: NodeId;
  epoch: number;
  /** Mutual TLS material, or undefined for plaintext (the development flag). */
  tls: PeerTlsMaterial | undefined;
}

interface Pending {
  op: DataOp;
  /** WRITE and READ: bytes; 0 for the rest. */
  bytes: number;
  /** A READ's destination, filled back to back. */
  targets: readonly Uint8Array[] | undefined;
  startedMs: number;
  resolve: () => void;
  reject: (err: StorageError) => void;
}

/** What the receiver is in the middle of: a READ's data or an error's message. */
interface Body {
  id: number;
  p: Pending;
  header: ReplyHeader;
  remaining: number;
  /** Data: the target being filled and how far. */
  idx: number;
  at: number;
  /** Message: its bytes so far. */
  message: Buffer[];
}

export function splitHostPort(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  const port = Number(address.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new StorageError(Code.INVALID_ARGUMENT, `data channel address ${address} is not host:port`);
  }
  return { host: address.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port };
}

export class DataLink {
  hello: HelloReply | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: StorageError | undefined;
  private ending = false;
  private corked = false;
  private readonly hdr = Buffer.allocUnsafe(REPLY_HEADER_BYTES);
  private hdrHave = 0;
  private helloBytes: Buffer[] = [];
  private helloHave = 0;
  private body: Body | undefined;
  private drainWaiters: (() => void)[] = [];
  private helloWaiter: { resolve: (h: HelloReply) => void; reject: (e: StorageError) => void } | undefined;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private constructor(private readonly socket: Socket, readonly target: DataLinkTarget, private readonly stats: DataChannelStats | undefined) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(this.unavailable(`failed: ${err.message}`)));
    socket.on('close', () => this.fail(this.unavailable('closed')));
  }

  /** Dials and binds; rejects with the replica's refusal (a stale epoch is FAILED_PRECONDITION, STALE_EPOCH). */
  static open(target: DataLinkTarget, timeoutMs: number, stats?: DataChannelStats): Promise<DataLink> {
    const { host, port } = splitHostPort(target.address);
    const socket = target.tls
      ? tlsConnect({ host, port, servername: isIP(host) === 0 ? host : undefined, ca: target.tls.ca, cert: target.tls.cert, key: target.tls.key, minVersion: 'TLSv1.2' })
      : tcpConnect({ host, port });
    const link = new DataLink(socket, target, stats);
    const timer = setTimeout(() => link.fail(link.unavailable(`did not complete its handshake within ${timeoutMs} ms`)), timeoutMs);
    return new Promise<HelloReply>((resolve, reject) => {
      link.helloWaiter = { resolve, reject };
      socket.write(encodeHello({ replicaId: target.replicaId, volumeId: target.volumeId, epoch: target.epoch }));
    }).then(() => link).finally(() => clearTimeout(timer));
  }

  get failed(): StorageError | undefined {
    return this.failure;
  }

  get inflight(): number {
    return this.pending.size;
  }

  /** Sends one request; `payload` (WRITE) is sent as it is and must stay untouched until the promise settles. */
  request(op: DataOp, flags: number, offset: number, lengthBytes: number, payload?: readonly Uint8Array[], targets?: readonly Uint8Array[]): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.ending) return Promise.reject(new StorageError(Code.FAILED_PRECONDITION, `I/O to replica ${this.target.replicaId} is closing`, { details: { replica: this.target.replicaId } }));
    const id = this.nextId++;
    const bytes = op === DataOp.WRITE || op === DataOp.READ ? lengthBytes : 0;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { op, bytes, targets, startedMs: performance.now(), resolve, reject });
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        setImmediate(this.uncork);
      }
      this.socket.write(encodeRequestHeader({ op, flags, lengthBytes, id, offset }));
      if (payload) for (const part of payload) this.socket.write(part);
      this.stats?.sent(op, bytes);
    });
  }

  /** Refuses new requests, waits for those in flight, then closes the connection. */
  async close(): Promise<void> {
    this.ending = true;
    if (this.pending.size > 0 && !this.failure) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    this.socket.end();
    this.socket.destroySoon();
  }

  /** Ends the link now: every pending request rejects with `err`. */
  fail(err: StorageError): void {
    if (this.failure) return;
    this.failure = err;
    this.socket.destroy();
    this.helloWaiter?.reject(err);
    this.helloWaiter = undefined;
    const all = [...this.pending.values()];
    this.pending.clear();
    this.body = undefined;
    for (const p of all) {
      this.stats?.done(p.bytes, performance.now() - p.startedMs, true);
      p.reject(err);
    }
    this.wakeDrainWaiters();
  }

  private unavailable(what: string): StorageError {
    const t = this.target;
    return new StorageError(Code.UNAVAILABLE, `data connection to replica ${t.replicaId} on node ${t.nodeId} (${t.address}) ${what}`,
      { details: { replica: t.replicaId, node: t.nodeId } });
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return;
    try {
      let at = 0;
      if (this.helloWaiter) at = this.onHelloBytes(chunk);
      while (at < chunk.length && !this.failure) {
        if (this.body) {
          at = this.fillBody(chunk, at);
          continue;
        }
        if (this.hdrHave === 0 && chunk.length - at >= REPLY_HEADER_BYTES) {
          this.onHeader(decodeReplyHeader(chunk, at));
          at += REPLY_HEADER_BYTES;
          continue;
        }
        const n = chunk.copy(this.hdr, this.hdrHave, at, at + Math.min(REPLY_HEADER_BYTES - this.hdrHave, chunk.length - at));
        this.hdrHave += n;
        at += n;
        if (this.hdrHave === REPLY_HEADER_BYTES) {
          this.hdrHave = 0;
          this.onHeader(decodeReplyHeader(this.hdr, 0));
        }
      }
    } catch (err) {
      if (!(err instanceof StorageError)) throw err;
      const field = isMalformedFrame(err) ? ` (${String(err.details.field)})` : '';
      this.fail(this.unavailable(`sent a reply this engine cannot parse${field}: ${err.message}`));
    }
  }

  /** Collects the hello reply; returns where the rest of `chunk` starts (chunk.length if it is all hello). */
  private onHelloBytes(chunk: Buffer): number {
    this.helloBytes.push(chunk);
    this.helloHave += chunk.length;
    if (this.helloHave < HELLO_REPLY_BYTES) return chunk.length;
    const all = Buffer.concat(this.helloBytes, this.helloHave);
    const reply = decodeHelloReply(all);
    const length = HELLO_REPLY_BYTES + reply.messageBytes;
    if (all.length < length) return chunk.length;
    this.helloBytes = [];
    const waiter = this.helloWaiter!;
    this.helloWaiter = undefined;
    if (reply.code !== Code.OK) {
      const t = this.target;
      const err = reply.reason === DataReason.STALE_EPOCH
        ? staleEpochError(t.replicaId, t.volumeId, t.epoch, reply.epoch)
        : new StorageError(reply.code, `replica ${t.replicaId} on node ${t.nodeId} refused the data connection: ${reply.message}`, { details: { replica: t.replicaId, node: t.nodeId } });
      waiter.reject(err);
      this.fail(err);
      return chunk.length;
    }
    this.hello = reply;
    waiter.resolve(reply);
    // What followed the hello reply in this chunk (replies cannot yet: no request was answered).
    return chunk.length - (all.length - length);
  }

  private onHeader(h: ReplyHeader): void {
    const p = this.pending.get(h.id);
    if (!p) throw new StorageError(Code.INTERNAL, `reply for request ${h.id}, which is not pending`);
    if (h.code === Code.OK) {
      const expected = p.op === DataOp.READ ? p.bytes : 0;
      if (h.lengthBytes !== expected) throw new StorageError(Code.INTERNAL, `reply of ${h.lengthBytes} bytes to request ${h.id} (op ${p.op}), ${expected} expected`);
      if (expected === 0) return this.complete(h.id, p, undefined);
    } else if (h.lengthBytes > MAX_MESSAGE_BYTES) {
      throw new StorageError(Code.INTERNAL, `error message of ${h.lengthBytes} bytes to request ${h.id}`);
    } else if (h.lengthBytes === 0) {
      return this.complete(h.id, p, this.replyError(h, Buffer.alloc(0)));
    }
    this.body = { id: h.id, p, header: h, remaining: h.lengthBytes, idx: 0, at: 0, message: [] };
  }

  private fillBody(chunk: Buffer, at: number): number {
    const b = this.body!;
    if (b.header.code !== Code.OK) {
      const n = Math.min(b.remaining, chunk.length - at);
      b.message.push(chunk.subarray(at, at + n));
      b.remaining -= n;
      if (b.remaining === 0) {
        this.body = undefined;
        this.complete(b.id, b.p, this.replyError(b.header, Buffer.concat(b.message)));
      }
      return at + n;
    }
    const targets = b.p.targets!;
    while (at < chunk.length && b.remaining > 0) {
      const target = targets[b.idx]!;
      const n = Math.min(target.byteLength - b.at, chunk.length - at);
      chunk.copy(target, b.at, at, at + n);
      at += n;
      b.at += n;
      b.remaining -= n;
      if (b.at === target.byteLength) {
        b.idx++;
        b.at = 0;
      }
    }
    if (b.remaining === 0) {
      this.body = undefined;
      this.complete(b.id, b.p, undefined);
    }
    return at;
  }

  private replyError(h: ReplyHeader, message: Buffer): StorageError {
    const t = this.target;
    const text = message.toString('utf8') || `replica ${t.replicaId} refused the request (code ${h.code})`;
    const details: Record<string, unknown> = { replica: t.replicaId, node: t.nodeId };
    if (h.reason === DataReason.STALE_EPOCH) Object.assign(details, { reason: STALE_EPOCH, volumeId: t.volumeId, epoch: t.epoch });
    return new StorageError(h.code, text, { details });
  }

  private complete(id: number, p: Pending, err: StorageError | undefined): void {
    this.pending.delete(id);
    this.stats?.done(p.bytes, performance.now() - p.startedMs, err !== undefined);
    if (err) p.reject(err);
    else p.resolve();
    if (this.pending.size === 0 && this.drainWaiters.length > 0) this.wakeDrainWaiters();
  }

  private wakeDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
