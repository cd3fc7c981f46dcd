/**
 * The transmission phase of one connection: parses requests out of socket chunks, checks
 * them, runs them on the device concurrently and answers each by cookie. Request objects
 * are pooled with their completion callbacks bound once, so the steady state allocates
 * little more than the device's own promises.
 */
import type { Socket } from 'node:net';
import * as C from './codec.js';
import * as P from './protocol.js';
import type { ConnectionContext } from './connection.js';
import { nbdErrno } from './errno-map.js';
import type { ReplyWriter } from './reply-writer.js';

/** Back-pressure: stop reading from the client past these. */
const MAX_INFLIGHT_REQUESTS = 512;
const MAX_INFLIGHT_BYTES = 128 << 20;
/** A rejected write's payload is skipped up to this size; beyond it the client is cut off. */
const MAX_SKIP_BYTES = 256 << 20;

/** What the runner needs from its connection. */
export interface ConnectionHost {
  warn(reason: string, fields?: Record<string, unknown>): void;
  abort(reason: string, fields?: Record<string, unknown>): void;
  /** Ends the socket gracefully (destroying it if the client never closes its side). */
  end(): void;
}

class Req {
  type = 0;
  flags = 0;
  cookieHi = 0;
  cookieLo = 0;
  offset = 0;
  length = 0;
  /** Bytes this request holds against the connection's budget. */
  heldBytes = 0;
  readonly onOk: () => void;
  readonly onRead: (data: Buffer) => void;
  readonly onErr: (err: unknown) => void;

  constructor(runner: RequestRunner) {
    this.onOk = () => runner.completeOk(this);
    this.onRead = (data) => runner.completeRead(this, data);
    this.onErr = (err) => runner.completeErr(this, err);
  }
}

export class RequestRunner {
  private readonly hdr = Buffer.allocUnsafe(P.REQUEST_HEADER_BYTES);
  private hdrHave = 0;
  private readonly cur = C.newRequestHeader();
  private payload: Buffer | undefined;
  private payloadHave = 0;
  private payloadReq: Req | undefined;
  private skip = 0;
  private inflight = 0;
  private inflightBytes = 0;
  private paused = false;
  private stopping: 'disc' | 'shutdown' | 'eof' | undefined;
  private closed = false;
  private readonly pool: Req[] = [];
  private readonly sizeBytes: number;
  private readonly readOnly: boolean;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: ConnectionContext,
    private readonly writer: ReplyWriter,
    private readonly structured: boolean,
    private readonly violations: ConnectionHost,
  ) {
    this.sizeBytes = ctx.exp.sizeBytes;
    this.readOnly = ctx.exp.readOnly;
  }

  onData(chunk: Buffer): void {
    const n = chunk.length;
    let at = 0;
    while (at < n && this.stopping === undefined) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - at);
        this.skip -= k;
        at += k;
      } else if (this.payload) {
        at = this.fillPayload(chunk, at);
      } else {
        let hbuf = chunk;
        let hat = at;
        if (this.hdrHave > 0 || n - at < P.REQUEST_HEADER_BYTES) {
          const k = Math.min(P.REQUEST_HEADER_BYTES - this.hdrHave, n - at);
          chunk.copy(this.hdr, this.hdrHave, at, at + k);
          this.hdrHave += k;
          at += k;
          if (this.hdrHave < P.REQUEST_HEADER_BYTES) break;
          this.hdrHave = 0;
          hbuf = this.hdr;
          hat = 0;
        } else {
          at += P.REQUEST_HEADER_BYTES;
        }
        if (!C.readRequestHeader(hbuf, hat, this.cur)) {
          this.violations.abort('bad request magic', { magic: hbuf.readUInt32BE(hat) });
          return;
        }
        at = this.onRequest(chunk, at);
      }
    }
    this.applyBackPressure();
  }

  /** The client closed its side. */
  onEnd(): void {
    if (this.stopping === undefined && (this.hdrHave > 0 || this.payload !== undefined || this.skip > 0)) {
      this.violations.warn('disconnected mid-request', { pendingHeaderBytes: this.hdrHave, payloadBytes: this.payloadHave });
    }
    this.dropPayload();
    this.stop('eof');
  }

  onClose(): void {
    this.closed = true;
    this.dropPayload();
  }

  /** Stops taking requests; ends the socket once those in flight are answered. */
  stop(reason: 'disc' | 'shutdown' | 'eof'): void {
    if (this.stopping === undefined) this.stopping = reason;
    if (reason === 'shutdown') this.socket.pause();
    if (this.inflight === 0) this.finish();
  }

  resumeIfPossible(): void {
    if (this.paused && this.stopping === undefined && !this.writer.blocked && this.inflight < MAX_INFLIGHT_REQUESTS && this.inflightBytes < MAX_INFLIGHT_BYTES) {
      this.paused = false;
      this.socket.resume();
    }
  }

  completeOk(req: Req): void {
    if (!this.closed) this.writer.simple(0, req.cookieHi, req.cookieLo);
    this.release(req);
  }

  completeRead(req: Req, data: Buffer): void {
    if (!this.closed) {
      if (this.structured) this.writer.offsetData(req.cookieHi, req.cookieLo, req.offset, data);
      else this.writer.simpleData(req.cookieHi, req.cookieLo, data);
    }
    this.ctx.stats.bytesRead += req.length;
    this.release(req);
  }

  completeErr(req: Req, err: unknown): void {
    const errno = nbdErrno(err);
    this.ctx.stats.ioErrors++;
    if (this.ctx.stats.ioErrors === 1 || this.ctx.stats.ioErrors % 1000 === 0) {
      this.ctx.log.warn({ err, errno, type: req.type, offset: req.offset, length: req.length, ioErrors: this.ctx.stats.ioErrors }, 'nbd request failed');
    }
    this.replyError(req.type, req.cookieHi, req.cookieLo, errno, 'I/O error');
    this.release(req);
  }

  private finish(): void {
    this.writer.flush();
    this.violations.end();
  }

  private applyBackPressure(): void {
    if (!this.paused && (this.writer.blocked || this.inflight >= MAX_INFLIGHT_REQUESTS || this.inflightBytes >= MAX_INFLIGHT_BYTES)) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private replyError(type: number, cookieHi: number, cookieLo: number, errno: number, message: string): void {
    this.ctx.stats.errorReplies++;
    if (this.closed) return;
    if (this.structured && type === P.NBD_CMD_READ) this.writer.structuredError(cookieHi, cookieLo, errno, message);
    else this.writer.simple(errno, cookieHi, cookieLo);
  }

  /** Handles the header in `this.cur`; returns where parsing continues in `chunk`. */
  private onRequest(chunk: Buffer, at: number): number {
    const h = this.cur;
    this.ctx.stats.requests++;
    if (h.type === P.NBD_CMD_DISC) {
      this.stop('disc');
      return chunk.length;
    }
    const errno = this.check(h);
    if (h.type === P.NBD_CMD_WRITE) {
      if (h.length > MAX_SKIP_BYTES) {
        this.violations.abort('write payload too large', { length: h.length });
        return chunk.length;
      }
      if (errno !== 0) {
        this.replyError(h.type, h.cookieHi, h.cookieLo, errno, 'write rejected');
        this.skip = h.length;
        return at;
      }
      return this.startWrite(chunk, at);
    }
    if (errno !== 0) {
      this.replyError(h.type, h.cookieHi, h.cookieLo, errno, errno === P.NBD_EINVAL ? 'invalid request' : 'request rejected');
      return at;
    }
    this.run(this.take(0), undefined);
    return at;
  }

  /** 0 when the request may run, else the NBD error to answer with. */
  private check(h: C.RequestHeader): number {
    const end = h.offset + h.length;
    switch (h.type) {
      case P.NBD_CMD_READ:
        if ((h.flags & ~(P.NBD_CMD_FLAG_FUA | (this.structured ? P.NBD_CMD_FLAG_DF : 0))) !== 0) return P.NBD_EINVAL;
        if (h.length > P.BLOCK_SIZE_MAX || end > this.sizeBytes) return P.NBD_EINVAL;
        return 0;
      case P.NBD_CMD_WRITE:
        if ((h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0 || h.length > P.BLOCK_SIZE_MAX) return P.NBD_EINVAL;
        if (this.readOnly) return P.NBD_EPERM;
        return end > this.sizeBytes ? P.NBD_ENOSPC : 0;
      case P.NBD_CMD_FLUSH:
        return (h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0 ? P.NBD_EINVAL : 0;
      case P.NBD_CMD_TRIM:
        if ((h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0) return P.NBD_EINVAL;
        if (this.readOnly) return P.NBD_EPERM;
        return end > this.sizeBytes ? P.NBD_EINVAL : 0;
      case P.NBD_CMD_WRITE_ZEROES:
        if ((h.flags & ~(P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_NO_HOLE)) !== 0) return P.NBD_EINVAL;
        if (this.readOnly) return P.NBD_EPERM;
        return end > this.sizeBytes ? P.NBD_ENOSPC : 0;
      default:
        return P.NBD_EINVAL;
    }
  }

  private startWrite(chunk: Buffer, at: number): number {
    const len = this.cur.length;
    const req = this.take(len);
    if (chunk.length - at >= len) {
      this.run(req, chunk.subarray(at, at + len));
      return at + len;
    }
    this.payload = Buffer.allocUnsafe(len);
    this.payloadHave = chunk.copy(this.payload, 0, at);
    this.payloadReq = req;
    return chunk.length;
  }

  private fillPayload(chunk: Buffer, at: number): number {
    const payload = this.payload!;
    const k = Math.min(payload.length - this.payloadHave, chunk.length - at);
    chunk.copy(payload, this.payloadHave, at, at + k);
    this.payloadHave += k;
    if (this.payloadHave === payload.length) {
      const req = this.payloadReq!;
      this.payload = undefined;
      this.payloadReq = undefined;
      this.payloadHave = 0;
      this.run(req, payload);
    }
    return at + k;
  }

  private dropPayload(): void {
    if (this.payloadReq) {
      const req = this.payloadReq;
      this.payload = undefined;
      this.payloadReq = undefined;
      this.payloadHave = 0;
      this.release(req);
    }
  }

  /** A pooled request filled from `this.cur`, counted as in flight. */
  private take(heldBytes: number): Req {
    const h = this.cur;
    const req = this.pool.pop() ?? new Req(this);
    req.type = h.type;
    req.flags = h.flags;
    req.cookieHi = h.cookieHi;
    req.cookieLo = h.cookieLo;
    req.offset = h.offset;
    req.length = h.length;
    req.heldBytes = heldBytes + (h.type === P.NBD_CMD_READ ? h.length : 0);
    this.inflight++;
    this.inflightBytes += req.heldBytes;
    return req;
  }

  private release(req: Req): void {
    this.inflight--;
    this.inflightBytes -= req.heldBytes;
    this.pool.push(req);
    if (this.paused) this.resumeIfPossible();
    if (this.stopping !== undefined && this.inflight === 0) this.finish();
  }

  private run(req: Req, data: Buffer | undefined): void {
    const dev = this.ctx.device;
    const stats = this.ctx.stats;
    const fua = (req.flags & P.NBD_CMD_FLAG_FUA) !== 0;
    try {
      switch (req.type) {
        case P.NBD_CMD_READ:
          stats.readRequests++;
          if (req.length === 0) return this.emptyRead(req);
          dev.read(req.offset, req.length).then(req.onRead, req.onErr);
          return;
        case P.NBD_CMD_WRITE:
          stats.writeRequests++;
          stats.bytesWritten += req.length;
          dev.write(req.offset, data!, fua).then(req.onOk, req.onErr);
          return;
        case P.NBD_CMD_FLUSH:
          stats.flushRequests++;
          dev.flush().then(req.onOk, req.onErr);
          return;
        case P.NBD_CMD_TRIM:
          stats.trimRequests++;
          this.thenFlushIf(fua, req.length === 0 ? Promise.resolve() : dev.trim(req.offset, req.length)).then(req.onOk, req.onErr);
          return;
        case P.NBD_CMD_WRITE_ZEROES: {
          stats.writeZeroesRequests++;
          const mayTrim = (req.flags & P.NBD_CMD_FLAG_NO_HOLE) === 0;
          const done = req.length === 0 ? Promise.resolve() : dev.writeZeroes(req.offset, req.length, mayTrim);
          this.thenFlushIf(fua, done).then(req.onOk, req.onErr);
          return;
        }
      }
    } catch (err) {
      req.onErr(err);
    }
  }

  private emptyRead(req: Req): void {
    if (!this.closed) {
      if (this.structured) this.writer.structuredDone(req.cookieHi, req.cookieLo);
      else this.writer.simple(0, req.cookieHi, req.cookieLo);
    }
    this.release(req);
  }

  private thenFlushIf(fua: boolean, done: Promise<void>): Promise<void> {
    return fua ? done.then(() => this.ctx.device.flush()) : done;
  }
}
