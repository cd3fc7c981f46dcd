/**
 * The receiving half of a connection's transmission phase: parses request headers out of
 * received bytes, checks them, admits them (RequestRunner.tryAdmit) and collects write
 * payloads, then hands each request to the runner.
 *
 * A write payload is never copied into one buffer: the bytes that came with its header
 * stay slices of the receive area, and when more than LARGE_TAIL_BYTES are still to come,
 * the rest is received straight into pooled buffers (socket-reader.ts, buffer-pool.ts);
 * the device writes the parts with writev. A request that cannot be admitted stalls the reader: the socket
 * stops reading and parsing resumes where it stopped once the bytes are granted.
 */
import { BufferPool } from './buffer-pool.js';
import * as C from './codec.js';
import * as P from './protocol.js';
import type { ConnectionContext } from './connection-context.js';
import type { ConnectionHost, Req, RequestRunner } from './request-runner.js';
import { REGION_MAX_BYTES, type ReadArea, type ReadSink } from './socket-reader.js';

/** A rejected write's payload is skipped up to this size; beyond it the client is cut off. */
const MAX_SKIP_BYTES = 256 << 20;
/** A payload with more than this still to come is received into buffers of its own. */
const LARGE_TAIL_BYTES = 32 << 10;
/**
 * After a large payload, the next read takes at most this much into the receive area: the
 * next request is likely large too, and its payload should go to its own buffers, not
 * into the area (which becomes garbage once every slice of it is dropped).
 */
const AFTER_LARGE_READ_BYTES = 4 << 10;

export class RequestReader implements ReadSink {
  private readonly hdr = Buffer.allocUnsafe(P.REQUEST_HEADER_BYTES);
  private hdrHave = 0;
  private readonly cur = C.newRequestHeader();
  /** The write whose payload is arriving, its parts so far and their byte count. */
  private payloadReq: Req | undefined;
  private parts: Buffer[] = [];
  private payloadHave = 0;
  /** Where the rest of a large payload is received: pooled buffers (the request's views)... */
  private tail: Buffer[] | undefined;
  /** ...filled up to `tailHave` bytes of `tail[tailIdx]`. */
  private tailIdx = 0;
  private tailHave = 0;
  /** The last read target handed out for the tail (to recognise it in received()). */
  private tailTarget: Buffer | undefined;
  /** Whether the last write's payload had a tail (see AFTER_LARGE_READ_BYTES). */
  private lastWasLarge = false;
  private skip = 0;
  /** Received bytes not parsed yet because a request is waiting to be admitted. */
  private backlog: Buffer[] = [];
  private stalled = false;
  /** The client closed its side while the reader was stalled: handled once the backlog is. */
  private endPending = false;

  constructor(
    private readonly ctx: ConnectionContext,
    private readonly runner: RequestRunner,
    private readonly host: ConnectionHost,
    private readonly area: ReadArea,
    /** Whether received() is in use, so large payloads may be received in place. */
    private readonly direct: boolean,
  ) {}

  readTarget(): Buffer {
    if (this.tail && !this.stopping()) {
      this.tailTarget = this.tail[this.tailIdx]!.subarray(this.tailHave);
      return this.tailTarget;
    }
    this.tailTarget = undefined;
    return this.area.region(this.lastWasLarge ? AFTER_LARGE_READ_BYTES : REGION_MAX_BYTES);
  }

  received(target: Buffer, n: number): void {
    if (target === this.tailTarget && this.tail) {
      this.tailTarget = undefined;
      this.advanceTail(n);
      return;
    }
    this.chunk(this.area.commit(target, n));
  }

  chunk(data: Buffer): void {
    if (this.stalled) this.backlog.push(data);
    else this.parse(data, 0);
  }

  /** The client closed its side. */
  onEnd(): void {
    if (this.stalled) {
      this.endPending = true;
      return;
    }
    if (!this.stopping() && (this.hdrHave > 0 || this.payloadReq !== undefined || this.skip > 0)) {
      this.host.warn('disconnected mid-request', { pendingHeaderBytes: this.hdrHave, payloadBytes: this.payloadHave });
    }
    this.dropPayload();
    this.runner.stop('eof');
  }

  onClose(): void {
    this.dropPayload();
    this.backlog = [];
  }

  private stopping(): boolean {
    return this.runner.stopping !== undefined;
  }

  private parse(chunk: Buffer, from: number): void {
    const n = chunk.length;
    let at = from;
    while (at < n && !this.stopping()) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - at);
        this.skip -= k;
        at += k;
      } else if (this.payloadReq) {
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
          this.host.abort('bad request magic', { magic: hbuf.readUInt32BE(hat) });
          return;
        }
        const next = this.onRequest(chunk, at);
        if (next < 0) {
          if (at < n) this.backlog.unshift(chunk.subarray(at));
          return;
        }
        at = next;
      }
    }
    this.runner.applyBackPressure();
  }

  /** Handles the header in `this.cur`; returns where parsing goes on, or -1 when stalled. */
  private onRequest(chunk: Buffer, at: number): number {
    const h = this.cur;
    this.ctx.stats.requests++;
    if (h.type === P.NBD_CMD_DISC) {
      this.runner.stop('disc');
      return chunk.length;
    }
    const errno = this.check(h);
    if (h.type === P.NBD_CMD_WRITE && h.length > MAX_SKIP_BYTES) {
      this.host.abort('write payload too large', { length: h.length });
      return chunk.length;
    }
    if (errno !== 0) {
      this.runner.replyError(h.type, h.cookieHi, h.cookieLo, errno, errno === P.NBD_EINVAL ? 'invalid request' : h.type === P.NBD_CMD_WRITE ? 'write rejected' : 'request rejected');
      if (h.type === P.NBD_CMD_WRITE) this.skip = h.length;
      return at;
    }
    const bytes = h.type === P.NBD_CMD_READ || h.type === P.NBD_CMD_WRITE ? BufferPool.footprint(h.length) : 0;
    if (!this.runner.tryAdmit(bytes)) {
      this.stalled = true;
      this.runner.waitAdmit(bytes, () => this.admitted(bytes));
      return -1;
    }
    return this.start(chunk, at, bytes);
  }

  /** The stalled request got its bytes: start it, then parse what came after it. */
  private admitted(bytes: number): void {
    this.stalled = false;
    if (this.stopping()) {
      this.runner.unadmit(bytes);
      if (this.endPending) this.runner.stop('eof');
      return;
    }
    let chunk = this.backlog.shift() ?? Buffer.alloc(0);
    let at = this.start(chunk, 0, bytes);
    while (!this.stalled && !this.stopping()) {
      this.parse(chunk, at);
      if (this.stalled) return;
      const next = this.backlog.shift();
      if (!next) break;
      chunk = next;
      at = 0;
    }
    if (this.endPending && !this.stalled) {
      this.endPending = false;
      this.onEnd();
    }
  }

  private start(chunk: Buffer, at: number, bytes: number): number {
    const req = this.runner.take(this.cur, bytes);
    if (req.type !== P.NBD_CMD_WRITE) {
      this.runner.run(req, undefined);
      return at;
    }
    const len = req.length;
    const avail = chunk.length - at;
    if (avail >= len) {
      this.lastWasLarge = false;
      this.runner.run(req, chunk.subarray(at, at + len));
      return at + len;
    }
    this.payloadReq = req;
    this.parts = avail > 0 ? [chunk.subarray(at)] : [];
    this.payloadHave = avail;
    this.lastWasLarge = this.direct && len - avail > LARGE_TAIL_BYTES;
    if (this.lastWasLarge) {
      this.ctx.pool.take(len - avail, req.views, req.owned);
      this.tail = req.views;
      this.tailIdx = 0;
      this.tailHave = 0;
    }
    return chunk.length;
  }

  /** More payload in a received chunk: a slice of it, or copied into the tail if one is set. */
  private fillPayload(chunk: Buffer, at: number): number {
    const req = this.payloadReq!;
    if (this.tail) {
      const k = Math.min(this.tail[this.tailIdx]!.length - this.tailHave, chunk.length - at);
      chunk.copy(this.tail[this.tailIdx]!, this.tailHave, at, at + k);
      this.advanceTail(k);
      return at + k;
    }
    const k = Math.min(req.length - this.payloadHave, chunk.length - at);
    this.parts.push(chunk.subarray(at, at + k));
    this.payloadHave += k;
    if (this.payloadHave === req.length) this.completePayload();
    return at + k;
  }

  /** `n` more bytes of the tail arrived (within its current buffer). */
  private advanceTail(n: number): void {
    const tail = this.tail!;
    this.payloadHave += n;
    this.tailHave += n;
    if (this.tailHave < tail[this.tailIdx]!.length) return;
    this.tailIdx++;
    this.tailHave = 0;
    if (this.tailIdx < tail.length) return;
    for (const view of tail) this.parts.push(view);
    this.tail = undefined;
    this.tailIdx = 0;
    this.completePayload();
  }

  private completePayload(): void {
    const req = this.payloadReq!;
    const parts = this.parts;
    this.payloadReq = undefined;
    this.parts = [];
    this.payloadHave = 0;
    this.runner.run(req, parts);
  }

  /** A write whose payload will never arrive: it is answered by no one, only released. */
  private dropPayload(): void {
    const req = this.payloadReq;
    if (!req) return;
    this.payloadReq = undefined;
    this.parts = [];
    this.payloadHave = 0;
    this.tail = undefined;
    this.tailIdx = 0;
    this.tailHave = 0;
    this.tailTarget = undefined;
    this.runner.finish(req);
  }

  /** 0 when the request may run, else the NBD error to answer with. */
  private check(h: C.RequestHeader): number {
    const end = h.offset + h.length;
    const size = this.ctx.exp.sizeBytes;
    const readOnly = this.ctx.exp.readOnly;
    switch (h.type) {
      case P.NBD_CMD_READ:
        if ((h.flags & ~(P.NBD_CMD_FLAG_FUA | (this.runner.structured ? P.NBD_CMD_FLAG_DF : 0))) !== 0) return P.NBD_EINVAL;
        if (h.length > P.BLOCK_SIZE_MAX || end > size) return P.NBD_EINVAL;
        return 0;
      case P.NBD_CMD_WRITE:
        if ((h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0 || h.length > P.BLOCK_SIZE_MAX) return P.NBD_EINVAL;
        if (readOnly) return P.NBD_EPERM;
        return end > size ? P.NBD_ENOSPC : 0;
      case P.NBD_CMD_FLUSH:
        return (h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0 ? P.NBD_EINVAL : 0;
      case P.NBD_CMD_TRIM:
        if ((h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0) return P.NBD_EINVAL;
        if (readOnly) return P.NBD_EPERM;
        return end > size ? P.NBD_EINVAL : 0;
      case P.NBD_CMD_WRITE_ZEROES:
        if ((h.flags & ~(P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_NO_HOLE)) !== 0) return P.NBD_EINVAL;
        if (readOnly) return P.NBD_EPERM;
        return end > size ? P.NBD_ENOSPC : 0;
      default:
        return P.NBD_EINVAL;
    }
  }
}
