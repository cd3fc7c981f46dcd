/**
 * The execution half of a connection's transmission phase: admits requests against the
 * connection's limits and the daemon's shared byte budget, runs them on the device
 * concurrently, and answers each by cookie. Request objects are pooled with their
 * completion callbacks bound once, and read data lands in pooled buffers, so the steady
 * state allocates little more than the device's own promises.
 *
 * A request's bytes are held from admission until its memory is free again: a read's until
 * its reply has been handed to the socket, a write's until the device has its payload.
 */
import type { Socket } from 'node:net';
import * as P from './protocol.js';
import type { ConnectionContext } from './connection-context.js';
import { nbdErrno } from './errno-map.js';
import type { ReplyWriter } from './reply-writer.js';
import type { RequestHeader } from './codec.js';

/** A connection stops reading past this many requests in flight... */
const MAX_INFLIGHT_REQUESTS = 512;
/** ...or past this many bytes (unless it holds none), whatever the shared budget has left. */
const MAX_CONNECTION_BYTES = P.BLOCK_SIZE_MAX;

/** What the runner needs from its connection. */
export interface ConnectionHost {
  warn(reason: string, fields?: Record<string, unknown>): void;
  abort(reason: string, fields?: Record<string, unknown>): void;
  /** Ends the socket gracefully (destroying it if the client never closes its side). */
  end(): void;
}

export type StopReason = 'disc' | 'shutdown' | 'eof';

export class Req {
  type = 0;
  flags = 0;
  cookieHi = 0;
  cookieLo = 0;
  offset = 0;
  length = 0;
  /** Budget bytes this request holds. */
  heldBytes = 0;
  /** performance.now() when it started to run; 0 while it is not running. */
  startedMs = 0;
  /** Pooled memory for read data or the tail of a write payload, given back when done... */
  readonly owned: Buffer[] = [];
  /** ...and the views of it that hold exactly the data. */
  readonly views: Buffer[] = [];
  /** Read data from a device without readInto(). */
  data: Buffer | undefined = undefined;
  readonly onOk: () => void;
  readonly onRead: () => void;
  readonly onReadData: (data: Buffer) => void;
  readonly onErr: (err: unknown) => void;
  readonly onSent: () => void;

  constructor(runner: RequestRunner) {
    this.onOk = () => runner.completeOk(this);
    this.onRead = () => runner.completeRead(this);
    this.onReadData = (data) => {
      this.data = data;
      runner.completeRead(this);
    };
    this.onErr = (err) => runner.completeErr(this, err);
    this.onSent = () => runner.finish(this);
  }
}

export class RequestRunner {
  stopping: StopReason | undefined;
  private closed = false;
  private inflight = 0;
  private heldBytes = 0;
  private paused = false;
  private stalled = false;
  private admitWaiter: { bytes: number; ready: () => void } | undefined;
  private cancelBudgetWait: (() => void) | undefined;
  private readonly pool: Req[] = [];

  constructor(
    private readonly socket: Socket,
    private readonly ctx: ConnectionContext,
    private readonly writer: ReplyWriter,
    readonly structured: boolean,
    private readonly host: ConnectionHost,
  ) {}

  /** Takes what a request of `bytes` needs, if it may start now. */
  tryAdmit(bytes: number): boolean {
    if (!this.localRoom(bytes)) return false;
    if (bytes > 0 && !this.ctx.budget.tryTake(bytes)) return false;
    this.heldBytes += bytes;
    return true;
  }

  /**
   * Stops reading the socket until a request of `bytes` can be admitted; then takes the
   * bytes and calls `ready`. One waiter at a time (the reader stalls on it).
   */
  waitAdmit(bytes: number, ready: () => void): void {
    this.admitWaiter = { bytes, ready };
    this.stalled = true;
    this.pauseReading();
    this.retryAdmit();
  }

  /** A pooled request for header `h`, counted as in flight; `heldBytes` were admitted for it. */
  take(h: RequestHeader, heldBytes: number): Req {
    const req = this.pool.pop() ?? new Req(this);
    req.type = h.type;
    req.flags = h.flags;
    req.cookieHi = h.cookieHi;
    req.cookieLo = h.cookieLo;
    req.offset = h.offset;
    req.length = h.length;
    req.heldBytes = heldBytes;
    this.inflight++;
    return req;
  }

  /** Gives back bytes admitted for a request that will not run (its connection broke off). */
  unadmit(bytes: number): void {
    this.giveBytes(bytes);
  }

  /** Stops taking requests; ends the socket once those in flight are answered. */
  stop(reason: StopReason): void {
    if (this.stopping === undefined) this.stopping = reason;
    if (reason === 'shutdown') this.socket.pause();
    if (this.inflight === 0) this.end();
  }

  /** The socket closed: every byte this connection holds goes back to the shared budget. */
  onClose(): void {
    this.closed = true;
    this.cancelBudgetWait?.();
    this.cancelBudgetWait = undefined;
    this.admitWaiter = undefined;
    this.ctx.budget.give(this.heldBytes);
    this.heldBytes = 0;
  }

  /** Stops reading while the socket's write buffer is full. */
  applyBackPressure(): void {
    if (this.writer.blocked) this.pauseReading();
  }

  resumeIfPossible(): void {
    if (this.paused && !this.stalled && this.stopping === undefined && !this.writer.blocked && !this.closed) {
      this.paused = false;
      this.socket.resume();
    }
  }

  replyError(type: number, cookieHi: number, cookieLo: number, errno: number, message: string): void {
    this.ctx.stats.errorReplies++;
    if (this.closed) return;
    if (this.structured && type === P.NBD_CMD_READ) this.writer.structuredError(cookieHi, cookieLo, errno, message);
    else this.writer.simple(errno, cookieHi, cookieLo);
  }

  /** Runs an admitted request; a write's payload is one buffer or its parts in order. */
  run(req: Req, payload: Buffer | Buffer[] | undefined): void {
    const dev = this.ctx.device;
    const stats = this.ctx.stats;
    const fua = (req.flags & P.NBD_CMD_FLAG_FUA) !== 0;
    stats.inflight++;
    req.startedMs = performance.now();
    try {
      switch (req.type) {
        case P.NBD_CMD_READ:
          stats.readRequests++;
          if (req.length === 0) return this.emptyRead(req);
          if (dev.readInto) {
            this.ctx.pool.take(req.length, req.views, req.owned);
            dev.readInto(req.offset, req.views).then(req.onRead, req.onErr);
          } else {
            dev.read(req.offset, req.length).then(req.onReadData, req.onErr);
          }
          return;
        case P.NBD_CMD_WRITE:
          stats.writeRequests++;
          stats.bytesWritten += req.length;
          this.write(req, payload!, fua).then(req.onOk, req.onErr);
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

  completeOk(req: Req): void {
    if (!this.closed) this.writer.simple(0, req.cookieHi, req.cookieLo);
    this.finish(req);
  }

  completeRead(req: Req): void {
    this.ctx.stats.bytesRead += req.length;
    if (this.closed) return this.finish(req);
    if (req.data) req.views.push(req.data);
    if (this.structured) this.writer.offsetData(req.cookieHi, req.cookieLo, req.offset, req.views, req.length, req.onSent);
    else this.writer.simpleData(req.cookieHi, req.cookieLo, req.views, req.length, req.onSent);
  }

  completeErr(req: Req, err: unknown): void {
    const errno = nbdErrno(err);
    const stats = this.ctx.stats;
    stats.ioErrors++;
    if (stats.ioErrors === 1 || stats.ioErrors % 1000 === 0) {
      this.ctx.log.warn({ err, errno, type: req.type, offset: req.offset, length: req.length, ioErrors: stats.ioErrors }, 'nbd request failed');
    }
    this.replyError(req.type, req.cookieHi, req.cookieLo, errno, 'I/O error');
    this.finish(req);
  }

  /** The request is answered and its memory free: give back its buffer and bytes. */
  finish(req: Req): void {
    if (req.startedMs !== 0) this.observe(req);
    if (req.owned.length > 0) this.ctx.pool.give(req.owned);
    req.views.length = 0;
    req.data = undefined;
    this.inflight--;
    this.giveBytes(req.heldBytes);
    this.pool.push(req);
    if (this.admitWaiter) this.retryAdmit();
    if (this.paused) this.resumeIfPossible();
    if (this.stopping !== undefined && this.inflight === 0) this.end();
  }

  private localRoom(bytes: number): boolean {
    if (this.inflight >= MAX_INFLIGHT_REQUESTS) return false;
    return bytes === 0 || this.heldBytes === 0 || this.heldBytes + bytes <= MAX_CONNECTION_BYTES;
  }

  private retryAdmit(): void {
    const w = this.admitWaiter;
    if (!w || this.cancelBudgetWait || !this.localRoom(w.bytes)) return;
    const granted = (): void => {
      this.cancelBudgetWait = undefined;
      this.admitWaiter = undefined;
      if (this.closed) {
        this.ctx.budget.give(w.bytes);
        return;
      }
      this.heldBytes += w.bytes;
      this.stalled = false;
      w.ready();
      this.resumeIfPossible();
    };
    if (w.bytes === 0) {
      queueMicrotask(granted);
      this.cancelBudgetWait = () => undefined;
    } else {
      this.cancelBudgetWait = this.ctx.budget.wait(w.bytes, granted);
    }
  }

  private giveBytes(bytes: number): void {
    if (this.closed || bytes === 0) return;
    this.heldBytes -= bytes;
    this.ctx.budget.give(bytes);
  }

  private pauseReading(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  /** Every request is answered: end our side, and read on (discarding) to see the client's end. */
  private end(): void {
    this.writer.flush();
    this.paused = false;
    this.socket.resume();
    this.host.end();
  }

  /** A payload in one piece is written as is; one in parts with writev when the device has it. */
  private write(req: Req, payload: Buffer | Buffer[], fua: boolean): Promise<void> {
    const dev = this.ctx.device;
    if (!Array.isArray(payload)) return dev.write(req.offset, payload, fua);
    if (payload.length === 1) return dev.write(req.offset, payload[0]!, fua);
    if (dev.writev) return dev.writev(req.offset, payload, fua);
    return dev.write(req.offset, Buffer.concat(payload, req.length), fua);
  }

  /** The request was answered: out of flight, and its time into its kind's histogram. */
  private observe(req: Req): void {
    const stats = this.ctx.stats;
    stats.inflight--;
    const seconds = (performance.now() - req.startedMs) / 1000;
    req.startedMs = 0;
    if (req.type === P.NBD_CMD_READ) stats.readLatency.observe(seconds);
    else if (req.type === P.NBD_CMD_WRITE) stats.writeLatency.observe(seconds);
    else if (req.type === P.NBD_CMD_FLUSH) stats.flushLatency.observe(seconds);
  }

  private emptyRead(req: Req): void {
    if (!this.closed) {
      if (this.structured) this.writer.structuredDone(req.cookieHi, req.cookieLo);
      else this.writer.simple(0, req.cookieHi, req.cookieLo);
    }
    this.finish(req);
  }

  private thenFlushIf(fua: boolean, done: Promise<void>): Promise<void> {
    return fua ? done.then(() => this.ctx.device.flush()) : done;
  }
}
