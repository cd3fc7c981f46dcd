/**
 * Batches a connection's replies: headers and small payloads are copied into an arena, and
 * everything queued during one event-loop turn goes out in a single write (a writev when
 * large payloads ride along). Arena bytes are never rewritten once queued, so a write the
 * kernel has not taken yet stays intact. A reply's data is reported sent (its `sent`
 * callback) once it is copied into the arena or the socket is done with it, so the caller
 * can reuse the buffer.
 */
import type { Socket } from 'node:net';
import * as C from './codec.js';
import * as P from './protocol.js';

const ARENA_BYTES = 256 << 10;
/** Payloads up to this size are copied into the arena; larger ones are written as they are. */
const COPY_MAX_BYTES = 64 << 10;

export class ReplyWriter {
  private arena = Buffer.allocUnsafe(ARENA_BYTES);
  private pos = 0;
  private flushedTo = 0;
  private readonly out: Buffer[] = [];
  /** For each entry of `out`, what to call once the socket is done with it. */
  private readonly outSent: ((() => void) | undefined)[] = [];
  private scheduled = false;
  private readonly flushBound = (): void => {
    this.scheduled = false;
    this.flush();
  };
  /** The socket's buffer is over its high-water mark: stop reading requests until 'drain'. */
  blocked = false;
  private stallTimer: NodeJS.Timeout | undefined;

  /**
   * `onStall` runs when the client has not taken any of its replies for `stallTimeoutMs`
   * while they wait: such a client pins the daemon's shared byte budget, so the caller
   * disconnects it.
   */
  constructor(
    private readonly socket: Socket,
    private readonly onDrain: () => void,
    private readonly stallTimeoutMs: number,
    private readonly onStall: () => void,
  ) {
    socket.on('drain', () => {
      this.blocked = false;
      this.clearStallTimer();
      this.onDrain();
    });
    socket.once('close', () => this.clearStallTimer());
  }

  private clearStallTimer(): void {
    if (this.stallTimer === undefined) return;
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
  }

  simple(error: number, cookieHi: number, cookieLo: number): void {
    const at = this.reserve(P.SIMPLE_REPLY_BYTES);
    this.pos = C.writeSimpleReply(this.arena, at, error, cookieHi, cookieLo);
    this.schedule();
  }

  /**
   * A simple reply followed by read data (no structured replies negotiated): `length`
   * bytes in `parts`. `sent` runs once the parts may be reused.
   */
  simpleData(cookieHi: number, cookieLo: number, parts: readonly Buffer[], length: number, sent: () => void): void {
    const small = length <= COPY_MAX_BYTES;
    const at = this.reserve(P.SIMPLE_REPLY_BYTES + (small ? length : 0));
    this.pos = C.writeSimpleReply(this.arena, at, 0, cookieHi, cookieLo);
    this.appendData(parts, small, sent);
  }

  /** One final OFFSET_DATA chunk carrying the whole read (`length` bytes in `parts`). */
  offsetData(cookieHi: number, cookieLo: number, offset: number, parts: readonly Buffer[], length: number, sent: () => void): void {
    const small = length <= COPY_MAX_BYTES;
    const at = this.reserve(28 + (small ? length : 0));
    this.pos = C.writeOffsetDataHeader(this.arena, at, cookieHi, cookieLo, offset, length);
    this.appendData(parts, small, sent);
  }

  /** A final NBD_REPLY_TYPE_NONE chunk (a zero-length read). */
  structuredDone(cookieHi: number, cookieLo: number): void {
    const at = this.reserve(P.STRUCTURED_REPLY_HEADER_BYTES);
    this.pos = C.writeStructuredHeader(this.arena, at, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, cookieHi, cookieLo, 0);
    this.schedule();
  }

  structuredError(cookieHi: number, cookieLo: number, error: number, message: string): void {
    const at = this.reserve(C.structuredErrorBytes(message));
    this.pos = C.writeStructuredError(this.arena, at, cookieHi, cookieLo, error, message);
    this.schedule();
  }

  /** Writes everything queued now (also used before ending the socket). */
  flush(): void {
    this.takeArena();
    const n = this.out.length;
    if (n === 0) return;
    if (this.socket.destroyed || !this.socket.writable) {
      for (let i = 0; i < n; i++) this.outSent[i]?.();
      this.out.length = 0;
      this.outSent.length = 0;
      return;
    }
    let ok: boolean;
    if (n === 1) {
      ok = this.socket.write(this.out[0]!, this.outSent[0]);
    } else {
      this.socket.cork();
      ok = true;
      for (let i = 0; i < n; i++) ok = this.socket.write(this.out[i]!, this.outSent[i]) && ok;
      this.socket.uncork();
    }
    this.out.length = 0;
    this.outSent.length = 0;
    if (!ok) {
      this.blocked = true;
      if (this.stallTimer === undefined && !this.socket.destroyed) {
        this.stallTimer = setTimeout(() => {
          this.stallTimer = undefined;
          if (this.blocked) this.onStall();
        }, this.stallTimeoutMs);
        this.stallTimer.unref();
      }
    }
  }

  private appendData(parts: readonly Buffer[], small: boolean, sent: () => void): void {
    if (small) {
      for (const part of parts) {
        part.copy(this.arena, this.pos);
        this.pos += part.length;
      }
      sent();
      this.schedule();
      return;
    }
    // A large payload goes out now (one writev): the client starts on it while later reads run.
    this.takeArena();
    const last = parts.length - 1;
    for (let i = 0; i <= last; i++) {
      this.out.push(parts[i]!);
      this.outSent.push(i === last ? sent : undefined);
    }
    this.flush();
  }

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushBound);
    }
  }

  /** Moves the arena bytes queued since the last take into the output list. */
  private takeArena(): void {
    if (this.pos > this.flushedTo) {
      this.out.push(this.arena.subarray(this.flushedTo, this.pos));
      this.outSent.push(undefined);
      this.flushedTo = this.pos;
    }
  }

  private reserve(bytes: number): number {
    if (this.pos + bytes > this.arena.length) {
      this.takeArena();
      this.arena = Buffer.allocUnsafe(Math.max(ARENA_BYTES, bytes));
      this.pos = 0;
      this.flushedTo = 0;
    }
    return this.pos;
  }
}
