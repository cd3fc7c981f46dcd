/**
 * A raw NBD client for tests: it sends exactly the bytes a test asks for (well-formed or
 * not) and reads replies byte-exactly, so protocol-abuse tests can assert the server's
 * answer or its disconnect.
 */
import { connect, type Socket } from 'node:net';
import * as C from '../../src/engine/nbd/codec.js';
import * as P from '../../src/engine/nbd/protocol.js';

export class ConnectionClosedError extends Error {
  constructor() {
    super('connection closed by the server');
  }
}

export interface OptionReplyMessage {
  type: number;
  data: Buffer;
}

export interface Reply {
  structured: boolean;
  error: number;
  cookie: bigint;
  type: number;
  flags: number;
  /** Read data (OFFSET_DATA chunk, or the simple reply's data when asked for). */
  data: Buffer;
  offset?: number;
}

export class RawNbdClient {
  /** Received bytes not read yet, as the chunks they came in (no quadratic re-joining). */
  private chunks: Buffer[] = [];
  private buffered = 0;
  private closedFlag = false;
  private wake: (() => void) | undefined;
  readonly closed: Promise<void>;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.wake?.();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedFlag = true;
        this.wake?.();
        resolve();
      }),
    );
  }

  static connect(socketPath: string): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const s = connect(socketPath, () => resolve(new RawNbdClient(s)));
      s.once('error', reject);
    });
  }

  /** Stops taking bytes from the socket: the server's replies pile up unread. */
  stopReading(): void {
    this.socket.pause();
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /**
   * Sends `bytes` in pieces of `pieceBytes`, yielding to the event loop between pieces, so
   * that the server receives them in many separate reads.
   */
  async sendInPieces(bytes: Uint8Array, pieceBytes: number): Promise<void> {
    for (let at = 0; at < bytes.byteLength; at += pieceBytes) {
      if (!this.socket.write(bytes.subarray(at, Math.min(bytes.byteLength, at + pieceBytes)))) {
        await new Promise<void>((resolve) => this.socket.once('drain', resolve));
      }
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** Closes our side (half-close, like a client that stops mid-message). */
  endWrites(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Exactly `n` bytes; ConnectionClosedError when the server closes first. */
  async readExact(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.closedFlag) throw new ConnectionClosedError();
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buffered})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
    return this.take(n);
  }

  /** The first `n` buffered bytes (there are at least `n`). */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let have = 0;
      while (have < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - have);
        c.copy(out, have, 0, k);
        have += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }

  /** Resolves true once the server has closed the connection (bytes before that are dropped). */
  async waitClosed(timeoutMs = 10_000): Promise<boolean> {
    const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
    return Promise.race([this.closed.then(() => true), timeout]);
  }

  /** Reads the server greeting and sends client flags (FIXED_NEWSTYLE | NO_ZEROES by default). */
  async greet(clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const hello = await this.readExact(P.HANDSHAKE_BYTES);
    if (hello.readBigUInt64BE(0) !== P.NBD_INIT_MAGIC || hello.readBigUInt64BE(8) !== P.NBD_OPTS_MAGIC) throw new Error('bad greeting');
    const flags = Buffer.allocUnsafe(4);
    flags.writeUInt32BE(clientFlags, 0);
    this.send(flags);
    return hello.readUInt16BE(16);
  }

  async readOptionReply(): Promise<OptionReplyMessage & { option: number }> {
    const h = C.decodeOptionReplyHeader(await this.readExact(P.OPTION_REPLY_HEADER_BYTES));
    if (!h.magicOk) throw new Error('bad option reply magic');
    const data = h.length > 0 ? Buffer.from(await this.readExact(h.length)) : Buffer.alloc(0);
    return { option: h.option, type: h.type, data };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<OptionReplyMessage[]> {
    this.send(C.encodeOption(option, data));
    const replies: OptionReplyMessage[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      replies.push({ type: r.type, data: r.data });
      if (r.type === P.NBD_REP_ACK || (r.type & P.NBD_REP_FLAG_ERROR) !== 0) return replies;
    }
  }

  /** Greets, optionally negotiates structured replies, then NBD_OPT_GO. */
  async negotiate(name = '', structured = true): Promise<{ sizeBytes: number; flags: number }> {
    await this.greet();
    if (structured) {
      const sr = await this.option(P.NBD_OPT_STRUCTURED_REPLY);
      if (sr[0]?.type !== P.NBD_REP_ACK) throw new Error('structured replies refused');
    }
    const replies = await this.option(P.NBD_OPT_GO, C.encodeInfoRequest(name, [P.NBD_INFO_BLOCK_SIZE]));
    const last = replies[replies.length - 1]!;
    if (last.type !== P.NBD_REP_ACK) throw new Error(`NBD_OPT_GO failed: 0x${last.type.toString(16)}`);
    const info = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_EXPORT)!;
    return { sizeBytes: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }

  request(fields: C.RequestFields): void {
    this.send(C.encodeRequest(fields));
  }

  /**
   * Reads one reply. For a simple reply to a successful read, pass `simpleReadLength` (the
   * data length cannot be known from the stream). Structured replies are read to DONE.
   */
  async readReply(simpleReadLength = 0): Promise<Reply> {
    const magic = (await this.peek(4)).readUInt32BE(0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
      const h = C.decodeReplyHeader(await this.readExact(P.SIMPLE_REPLY_BYTES))!;
      const data = h.error === 0 && simpleReadLength > 0 ? Buffer.from(await this.readExact(simpleReadLength)) : Buffer.alloc(0);
      return { structured: false, error: h.error, cookie: h.cookie, type: 0, flags: 0, data };
    }
    const h = C.decodeReplyHeader(await this.readExact(P.STRUCTURED_REPLY_HEADER_BYTES));
    if (!h) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const payload = h.length > 0 ? Buffer.from(await this.readExact(h.length)) : Buffer.alloc(0);
    const reply: Reply = { structured: true, error: 0, cookie: h.cookie, type: h.type, flags: h.flags, data: Buffer.alloc(0) };
    if (h.type === P.NBD_REPLY_TYPE_OFFSET_DATA) {
      reply.offset = Number(payload.readBigUInt64BE(0));
      reply.data = payload.subarray(8);
    } else if ((h.type & 0x8000) !== 0) {
      reply.error = payload.readUInt32BE(0);
    }
    return reply;
  }

  private async peek(n: number): Promise<Buffer> {
    const b = await this.readExact(n);
    this.chunks.unshift(b);
    this.buffered += n;
    return b;
  }
}
