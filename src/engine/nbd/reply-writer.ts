/**
 * Batches a connection's replies: headers and small payloads are copied into an arena, and
 * everything queued during one event-loop turn goes out in a single write (a writev when
 * large payloads ride along). Arena bytes are never rewritten once queued, so a write the
 * kernel has not taken yet stays intact.
 */
import type { Socket } from 'node:net';
import * as C from './codec.js';
import * as P from './protocol.js';

const ARENA_BYTES = 1 << 20;
/** Payloads up to this size are copied into the arena; larger ones are written as they are. */
const COPY_MAX_BYTES = 64 << 10;

export class ReplyWriter {
  private arena = Buffer.allocUnsafe(ARENA_BYTES);
  private pos = 0;
  private flushedTo = 0;
  private readonly out: Buffer[] = [];
  private scheduled = false;
  private readonly flushBound = (): void => {
    this.scheduled = false;
    this.flush();
  };
  /** The socket's buffer is over its high-water mark: stop reading requests until 'drain'. */
  blocked = false;

  constructor(
    private readonly socket: Socket,
    private readonly onDrain: () => void,
  ) {
    socket.on('drain', () => {
      this.blocked = false;
      this.onDrain();
    });
  }

  simple(error: number, cookieHi: number, cookieLo: number): void {
    const at = this.reserve(P.SIMPLE_REPLY_BYTES);
    this.pos = C.writeSimpleReply(this.arena, at, error, cookieHi, cookieLo);
    this.schedule();
  }

  /** A simple reply followed by read data (no structured replies negotiated). */
  simpleData(cookieHi: number, cookieLo: number, data: Buffer): void {
    const small = data.length <= COPY_MAX_BYTES;
    const at = this.reserve(P.SIMPLE_REPLY_BYTES + (small ? data.length : 0));
    this.pos = C.writeSimpleReply(this.arena, at, 0, cookieHi, cookieLo);
    this.appendData(data, small);
  }

  /** One final OFFSET_DATA chunk carrying the whole read. */
  offsetData(cookieHi: number, cookieLo: number, offset: number, data: Buffer): void {
    const small = data.length <= COPY_MAX_BYTES;
    const at = this.reserve(28 + (small ? data.length : 0));
    this.pos = C.writeOffsetDataHeader(this.arena, at, cookieHi, cookieLo, offset, data.length);
    this.appendData(data, small);
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
    if (n === 0 || this.socket.destroyed || !this.socket.writable) {
      this.out.length = 0;
      return;
    }
    let ok: boolean;
    if (n === 1) {
      ok = this.socket.write(this.out[0]!);
    } else {
      this.socket.cork();
      ok = true;
      for (let i = 0; i < n; i++) ok = this.socket.write(this.out[i]!) && ok;
      this.socket.uncork();
    }
    this.out.length = 0;
    if (!ok) this.blocked = true;
  }

  private appendData(data: Buffer, small: boolean): void {
    if (small) {
      data.copy(this.arena, this.pos);
      this.pos += data.length;
    } else {
      // A large payload goes out now: the client starts on it while later reads run.
      this.takeArena();
      this.out.push(data);
      this.flush();
      return;
    }
    this.schedule();
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
