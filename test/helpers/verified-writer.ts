/**
 * A checksummed NBD writer for kill and failover tests, and the client it runs on.
 *
 * `NbdBlockClient` is an in-process NBD client over a unix socket: it negotiates with
 * RawNbdClient (structured replies), then keeps many requests in flight and matches the
 * replies by cookie. Each request may time out; a timed-out request stays "of unknown
 * outcome" and its late reply is swallowed.
 *
 * `VerifiedWriter` writes self-describing blocks at random block indexes, up to a queue
 * depth, with a FLUSH every so many writes. Every block carries a header: magic, the
 * writer's id, its block index, a generation number (one counter for the whole writer, so
 * every write has its own), and a SHA-256 over the header and payload. For each block the
 * writer remembers the last generation acknowledged and the generations whose outcome is
 * unknown (in flight, failed, timed out, or cut off by a dropped connection) issued after
 * it. Only one write per block is in flight at a time, so their order is defined.
 *
 * `verify(read)` reads every block ever written and accepts it only when the header is
 * intact, names this block and this writer, the digest matches, and the generation is the
 * last acknowledged one or one of unknown outcome issued after it. A block that was never
 * acknowledged may also still hold what it held before (anything without this writer's
 * header). Everything the client saw go wrong (NBD errors, timeouts, dropped connections)
 * is counted: kill tests assert there was none.
 *
 * It also keeps what the server promised to have made durable (`durableGenerations()`):
 * a FUA write once acknowledged, and every write acknowledged before a FLUSH was sent once
 * that FLUSH is acknowledged. The power-loss test checks exactly that much on the disk.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as P from '../../src/engine/nbd/protocol.js';
import { RawNbdClient } from './nbd-raw-client.js';

/* ------------------------------------------------------------------ client */

export type NbdFailure = 'nbd-error' | 'timeout' | 'closed';

export class NbdIoError extends Error {
  constructor(
    readonly op: 'read' | 'write' | 'flush',
    readonly failure: NbdFailure,
    readonly offset: number,
    readonly lengthBytes: number,
    /** The NBD error code, for 'nbd-error'. */
    readonly errno?: number,
  ) {
    super(`NBD ${op} at ${offset} (+${lengthBytes}) failed: ${failure}${errno === undefined ? '' : ` (error ${errno})`}`);
  }
}

interface Pending {
  op: 'read' | 'write' | 'flush';
  offset: number;
  lengthBytes: number;
  /** Read data, assembled from the reply's chunks. */
  buffer?: Buffer;
  error: number;
  abandoned: boolean;
  timer?: NodeJS.Timeout;
  resolve(data: Buffer | undefined): void;
  reject(err: Error): void;
}

/** Long enough to mean "no deadline" for the reply reader (it is woken when the socket closes). */
const FOREVER_MS = 1_000_000_000;

export interface NbdBlockClientOptions {
  /** Per-request deadline; 0 for none. Default 30 s. */
  ioTimeoutMs?: number;
}

export class NbdBlockClient {
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closedError: Error | undefined;
  private readonly reader: Promise<void>;
  /** Replies that arrived for requests that had already timed out. */
  lateReplies = 0;
  /** Structured read reply chunks received, by kind. */
  readonly chunksSeen = { data: 0, hole: 0 };

  private constructor(
    private readonly raw: RawNbdClient,
    readonly sizeBytes: number,
    readonly transmissionFlags: number,
    private readonly ioTimeoutMs: number,
  ) {
    this.reader = this.readLoop();
  }

  static async connect(socketPath: string, exportName = '', opts: NbdBlockClientOptions = {}): Promise<NbdBlockClient> {
    const raw = await RawNbdClient.connect(socketPath);
    try {
      const { sizeBytes, flags } = await raw.negotiate(exportName, true);
      return new NbdBlockClient(raw, sizeBytes, flags, opts.ioTimeoutMs ?? 30_000);
    } catch (err) {
      raw.destroy();
      throw err;
    }
  }

  /** Connects to the export an `nbd+unix:///<name>?socket=<path>` URI names. */
  static connectUri(uri: string, opts: NbdBlockClientOptions = {}): Promise<NbdBlockClient> {
    const { socketPath, exportName } = parseNbdUnixUri(uri);
    return NbdBlockClient.connect(socketPath, exportName, opts);
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  get inFlight(): number {
    let n = 0;
    for (const p of this.pending.values()) if (!p.abandoned) n++;
    return n;
  }

  write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    return this.submit('write', offset, data.byteLength, fua ? P.NBD_CMD_FLAG_FUA : 0, data).then(() => undefined);
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    return (await this.submit('read', offset, lengthBytes, 0))!;
  }

  flush(): Promise<void> {
    return this.submit('flush', 0, 0, 0).then(() => undefined);
  }

  private submit(op: Pending['op'], offset: number, lengthBytes: number, flags: number, data?: Uint8Array): Promise<Buffer | undefined> {
    if (this.closedError) return Promise.reject(new NbdIoError(op, 'closed', offset, lengthBytes));
    const cookie = this.nextCookie++;
    return new Promise<Buffer | undefined>((resolve, reject) => {
      const p: Pending = { op, offset, lengthBytes, error: 0, abandoned: false, resolve, reject };
      if (op === 'read') p.buffer = Buffer.alloc(lengthBytes);
      if (this.ioTimeoutMs > 0) {
        p.timer = setTimeout(() => {
          p.abandoned = true;
          reject(new NbdIoError(op, 'timeout', offset, lengthBytes));
        }, this.ioTimeoutMs);
      }
      this.pending.set(cookie, p);
      const type = op === 'read' ? P.NBD_CMD_READ : op === 'write' ? P.NBD_CMD_WRITE : P.NBD_CMD_FLUSH;
      this.raw.request({ type, flags, cookie, offset, length: lengthBytes, ...(data ? { data } : {}) });
    });
  }

  private finish(cookie: bigint): void {
    const p = this.pending.get(cookie);
    if (!p) return;
    this.pending.delete(cookie);
    clearTimeout(p.timer);
    if (p.abandoned) {
      this.lateReplies++;
      return;
    }
    if (p.error !== 0) p.reject(new NbdIoError(p.op, 'nbd-error', p.offset, p.lengthBytes, p.error));
    else p.resolve(p.buffer);
  }

  private pendingFor(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new Error(`NBD reply for unknown cookie ${cookie}`);
    return p;
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.raw.readExact(4, FOREVER_MS)).readUInt32BE(0);
        if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
          const h = await this.raw.readExact(12, FOREVER_MS);
          const cookie = h.readBigUInt64BE(4);
          const p = this.pendingFor(cookie);
          p.error = h.readUInt32BE(0);
          if (p.op === 'read' && p.error === 0) (await this.raw.readExact(p.lengthBytes, FOREVER_MS)).copy(p.buffer!);
          this.finish(cookie);
        } else if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) {
          const h = await this.raw.readExact(16, FOREVER_MS);
          const flags = h.readUInt16BE(0);
          const type = h.readUInt16BE(2);
          const cookie = h.readBigUInt64BE(4);
          const length = h.readUInt32BE(12);
          const payload = length > 0 ? await this.raw.readExact(length, FOREVER_MS) : Buffer.alloc(0);
          const p = this.pendingFor(cookie);
          if (type === P.NBD_REPLY_TYPE_OFFSET_DATA) {
            const at = Number(payload.readBigUInt64BE(0)) - p.offset;
            const data = payload.subarray(8);
            if (!p.buffer || at < 0 || at + data.length > p.lengthBytes) throw new Error(`NBD read reply chunk outside the request (cookie ${cookie})`);
            data.copy(p.buffer, at);
            this.chunksSeen.data++;
          } else if (type === P.NBD_REPLY_TYPE_OFFSET_HOLE) {
            const at = Number(payload.readBigUInt64BE(0)) - p.offset;
            const holeBytes = payload.readUInt32BE(8);
            if (!p.buffer || at < 0 || at + holeBytes > p.lengthBytes) throw new Error(`NBD hole chunk outside the request (cookie ${cookie})`);
            p.buffer.fill(0, at, at + holeBytes);
            this.chunksSeen.hole++;
          } else if ((type & 0x8000) !== 0) {
            p.error ||= payload.readUInt32BE(0) || P.NBD_EIO;
          }
          if ((flags & P.NBD_REPLY_FLAG_DONE) !== 0) this.finish(cookie);
        } else {
          throw new Error(`bad NBD reply magic 0x${magic.toString(16)}`);
        }
      }
    } catch (err) {
      this.closedError = err instanceof Error ? err : new Error(String(err));
      this.raw.destroy();
      for (const [cookie, p] of this.pending) {
        this.pending.delete(cookie);
        clearTimeout(p.timer);
        if (!p.abandoned) p.reject(new NbdIoError(p.op, 'closed', p.offset, p.lengthBytes));
      }
    }
  }

  /** Sends NBD_CMD_DISC (unless closed) and drops the connection; requests still pending fail as 'closed'. */
  async close(): Promise<void> {
    if (!this.closedError) {
      this.raw.request({ type: P.NBD_CMD_DISC, cookie: 0n });
      this.raw.endWrites();
      await this.raw.waitClosed(2000);
    }
    this.raw.destroy();
    await this.reader;
  }

  /** Drops the connection at once, as a crashing client would. */
  async destroy(): Promise<void> {
    this.raw.destroy();
    await this.reader;
  }
}

export function parseNbdUnixUri(uri: string): { socketPath: string; exportName: string } {
  const m = /^nbd\+unix:\/\/\/([^?]*)\?(?:.*&)?socket=([^&]+)/.exec(uri);
  if (!m) throw new Error(`not an nbd+unix URI: ${uri}`);
  return { exportName: decodeURIComponent(m[1]!), socketPath: decodeURIComponent(m[2]!) };
}

/* ------------------------------------------------------------------ block format */

const MAGIC = Buffer.from('CAIRNVW1', 'latin1');
export const HEADER_BYTES = 64;
const DIGESTED_HEADER_BYTES = 40;
const DIGEST_BYTES = HEADER_BYTES - DIGESTED_HEADER_BYTES;

interface DecodedBlock {
  writerId: bigint;
  block: number;
  generation: number;
  digestOk: boolean;
}

function digest(block: Buffer): Buffer {
  return createHash('sha256').update(block.subarray(0, DIGESTED_HEADER_BYTES)).update(block.subarray(HEADER_BYTES)).digest().subarray(0, DIGEST_BYTES);
}

/** A block: header (magic, writer, index, generation, length) + random payload, sealed by a digest. */
export function encodeBlock(writerId: bigint, block: number, generation: number, blockBytes: number): Buffer {
  const b = Buffer.allocUnsafe(blockBytes);
  MAGIC.copy(b, 0);
  b.writeBigUInt64BE(writerId, 8);
  b.writeBigUInt64BE(BigInt(block), 16);
  b.writeBigUInt64BE(BigInt(generation), 24);
  b.writeUInt32BE(blockBytes - HEADER_BYTES, 32);
  b.writeUInt32BE(0, 36);
  randomBytes(blockBytes - HEADER_BYTES).copy(b, HEADER_BYTES);
  digest(b).copy(b, DIGESTED_HEADER_BYTES);
  return b;
}

/** The header of a block, or undefined when it has no writer magic at all. */
export function decodeBlock(b: Buffer): DecodedBlock | undefined {
  if (!b.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  const digestOk = b.readUInt32BE(32) === b.length - HEADER_BYTES && digest(b).equals(b.subarray(DIGESTED_HEADER_BYTES, HEADER_BYTES));
  return { writerId: b.readBigUInt64BE(8), block: Number(b.readBigUInt64BE(16)), generation: Number(b.readBigUInt64BE(24)), digestOk };
}

/* ------------------------------------------------------------------ writer */

export interface VerifiedWriterOptions {
  /** Default 4096. At least 512 and a multiple of 512. */
  blockBytes?: number;
  /** Requests in flight at most (writes and flushes). Default 16. */
  queueDepth?: number;
  /** A FLUSH after every this many writes; 0 for none. Default 64. */
  flushEveryWrites?: number;
  /** Set FUA on every n-th write; 0 for none. Default 0. */
  fuaEveryWrites?: number;
  /** The part of the export to write, in blocks: [firstBlock, firstBlock + blockCount). Default: all of it. */
  firstBlock?: number;
  blockCount?: number;
}

export interface WriterStats {
  writesIssued: number;
  writesAcked: number;
  flushesAcked: number;
  /** Every failed request (write or flush): NBD errors, timeouts, dropped connections. */
  errors: number;
  /** The first failures, described (at most 50). */
  errorDetails: string[];
  inFlight: number;
  /** Blocks written at least once (acknowledged or not). */
  blocksTouched: number;
}

export type BlockProblem = 'no-header' | 'wrong-writer' | 'wrong-block' | 'bad-digest' | 'stale-generation' | 'unknown-generation' | 'read-failed';

export interface BlockMismatch {
  block: number;
  offset: number;
  problem: BlockProblem;
  /** The last acknowledged generation (0: none). */
  ackedGeneration: number;
  /** Generations of unknown outcome that may also be there. */
  possibleGenerations: number[];
  found?: { writerId: string; block: number; generation: number };
  detail?: string;
}

export interface VerifyReport {
  blocksChecked: number;
  /** Blocks holding their last acknowledged generation. */
  blocksAtAcked: number;
  /** Blocks holding a later write whose outcome was unknown (allowed). */
  blocksAtUnknownOutcome: number;
  /** Blocks never acknowledged that still hold their old contents (allowed). */
  blocksUnchanged: number;
  mismatchCount: number;
  /** The first mismatches, described (at most 50). */
  mismatches: BlockMismatch[];
}

export type ReadFn = (offset: number, lengthBytes: number) => Promise<Buffer>;

interface BlockRecord {
  ackedGeneration: number;
  /** Unknown outcome, issued after ackedGeneration. */
  possible: number[];
  inFlight: number;
  /** The last generation the server promised durable (a FUA ack, or an ack before a FLUSH that was acknowledged). */
  durableGeneration: number;
  /** Acknowledged non-FUA writes no acknowledged FLUSH covers yet, with their ack sequence numbers. */
  unflushed: { generation: number; ackSeq: number }[];
}

const MAX_DETAILS = 50;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class VerifiedWriter {
  readonly writerId = randomBytes(8).readBigUInt64BE(0);
  readonly blockBytes: number;
  readonly firstBlock: number;
  readonly blockCount: number;
  private readonly queueDepth: number;
  private readonly flushEveryWrites: number;
  private readonly fuaEveryWrites: number;
  private readonly blocks = new Map<number, BlockRecord>();
  private nextGeneration = 1;
  private writesSinceFlush = 0;
  private running: Promise<void> | undefined;
  private stopping = false;
  private limit: { writes?: number; untilMs?: number } = {};
  private readonly s: Omit<WriterStats, 'inFlight' | 'blocksTouched'> = { writesIssued: 0, writesAcked: 0, flushesAcked: 0, errors: 0, errorDetails: [] };
  private inFlightNow = 0;
  /** Counts write acknowledgements: orders them against the sending of each FLUSH. */
  private ackSeq = 0;
  /** Blocks whose `unflushed` is not empty. */
  private readonly unflushedBlocks = new Set<number>();
  private flushesInFlight = 0;

  constructor(private client: NbdBlockClient, opts: VerifiedWriterOptions = {}) {
    this.blockBytes = opts.blockBytes ?? 4096;
    if (this.blockBytes < 512 || this.blockBytes % 512 !== 0) throw new Error(`blockBytes ${this.blockBytes}: use a multiple of 512`);
    this.queueDepth = opts.queueDepth ?? 16;
    this.flushEveryWrites = opts.flushEveryWrites ?? 64;
    this.fuaEveryWrites = opts.fuaEveryWrites ?? 0;
    const total = Math.floor(client.sizeBytes / this.blockBytes);
    this.firstBlock = opts.firstBlock ?? 0;
    this.blockCount = opts.blockCount ?? total - this.firstBlock;
    if (this.firstBlock < 0 || this.blockCount <= 0 || this.firstBlock + this.blockCount > total) {
      throw new Error(`blocks [${this.firstBlock}, ${this.firstBlock + this.blockCount}) do not fit an export of ${total} blocks`);
    }
  }

  static async connect(socketPath: string, exportName = '', opts: VerifiedWriterOptions & NbdBlockClientOptions = {}): Promise<VerifiedWriter> {
    return new VerifiedWriter(await NbdBlockClient.connect(socketPath, exportName, opts), opts);
  }

  get nbd(): NbdBlockClient {
    return this.client;
  }

  stats(): WriterStats {
    return { ...this.s, errorDetails: [...this.s.errorDetails], inFlight: this.inFlightNow, blocksTouched: this.blocks.size };
  }

  /** Starts writing in the background until `stop()`. */
  start(): void {
    if (this.running) throw new Error('the writer is running already');
    this.stopping = false;
    this.limit = {};
    this.running = this.pump();
  }

  /** Writes until `durationMs` passed or `writes` more were issued, then waits for those in flight. */
  async runFor(limit: { durationMs?: number; writes?: number }): Promise<WriterStats> {
    if (this.running) throw new Error('the writer is running already');
    this.stopping = false;
    this.limit = {
      ...(limit.writes === undefined ? {} : { writes: this.s.writesIssued + limit.writes }),
      ...(limit.durationMs === undefined ? {} : { untilMs: Date.now() + limit.durationMs }),
    };
    if (this.limit.writes === undefined && this.limit.untilMs === undefined) throw new Error('runFor needs durationMs or writes');
    this.running = this.pump();
    await this.running;
    this.running = undefined;
    return this.stats();
  }

  /** Stops issuing writes and waits for those in flight (each ends by its reply, its timeout or the connection dropping). */
  async stop(): Promise<WriterStats> {
    this.stopping = true;
    await this.running;
    this.running = undefined;
    return this.stats();
  }

  /** Resolves once `n` more writes were acknowledged (while running); rejects after `timeoutMs`. */
  async waitForAcks(n: number, timeoutMs = 30_000): Promise<void> {
    const target = this.s.writesAcked + n;
    const deadline = Date.now() + timeoutMs;
    while (this.s.writesAcked < target) {
      if (Date.now() > deadline) throw new Error(`only ${this.s.writesAcked - (target - n)} of ${n} writes acknowledged in ${timeoutMs} ms; ${JSON.stringify(this.stats())}`);
      await sleep(20);
    }
  }

  /**
   * Continues on another connection (e.g. the new engine after a failover). The writer
   * must be stopped. The old client is not closed here.
   */
  switchTo(client: NbdBlockClient): void {
    if (this.running) throw new Error('stop the writer before switching connections');
    if (Math.floor(client.sizeBytes / this.blockBytes) < this.firstBlock + this.blockCount) throw new Error('the new export is smaller than the span written');
    this.client = client;
  }

  /** Writes every block of the span once (in order, queueDepth at a time), then flushes. */
  async writeAll(): Promise<WriterStats> {
    if (this.running) throw new Error('the writer is running already');
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < this.blockCount) await this.writeBlock(this.firstBlock + next++);
    };
    await Promise.all(Array.from({ length: this.queueDepth }, worker));
    await this.flushOnce();
    return this.stats();
  }

  private shouldStop(): boolean {
    if (this.stopping) return true;
    if (this.limit.writes !== undefined && this.s.writesIssued >= this.limit.writes) return true;
    return this.limit.untilMs !== undefined && Date.now() >= this.limit.untilMs;
  }

  private async pump(): Promise<void> {
    const depth = Math.min(this.queueDepth, Math.max(1, Math.floor(this.blockCount / 2)));
    const worker = async (): Promise<void> => {
      while (!this.shouldStop()) {
        if (this.flushEveryWrites > 0 && this.writesSinceFlush >= this.flushEveryWrites) {
          this.writesSinceFlush = 0;
          await this.flushOnce();
        } else {
          await this.writeBlock(this.pickBlock());
        }
        // A dead connection fails every request at once: do not spin.
        if (this.client.isClosed) await sleep(50);
      }
    };
    await Promise.all(Array.from({ length: depth }, worker));
  }

  /** A random block of the span with no write in flight. */
  private pickBlock(): number {
    let b = this.firstBlock + Math.floor(Math.random() * this.blockCount);
    for (let i = 0; i < this.blockCount; i++) {
      if (!this.blocks.get(b)?.inFlight) return b;
      b = b + 1 === this.firstBlock + this.blockCount ? this.firstBlock : b + 1;
    }
    throw new Error('every block has a write in flight');
  }

  private recordError(err: unknown): void {
    this.s.errors++;
    if (this.s.errorDetails.length < MAX_DETAILS) this.s.errorDetails.push(err instanceof Error ? err.message : String(err));
  }

  private async writeBlock(block: number): Promise<void> {
    let rec = this.blocks.get(block);
    if (!rec) {
      rec = { ackedGeneration: 0, possible: [], inFlight: 0, durableGeneration: 0, unflushed: [] };
      this.blocks.set(block, rec);
    }
    const generation = this.nextGeneration++;
    rec.inFlight = generation;
    this.s.writesIssued++;
    this.writesSinceFlush++;
    this.inFlightNow++;
    const fua = this.fuaEveryWrites > 0 && this.s.writesIssued % this.fuaEveryWrites === 0;
    try {
      await this.client.write(block * this.blockBytes, encodeBlock(this.writerId, block, generation, this.blockBytes), fua);
      rec.ackedGeneration = generation;
      rec.possible = [];
      this.s.writesAcked++;
      this.recordAck(block, rec, generation, fua);
    } catch (err) {
      rec.possible.push(generation);
      this.recordError(err);
    } finally {
      rec.inFlight = 0;
      this.inFlightNow--;
    }
  }

  private recordAck(block: number, rec: BlockRecord, generation: number, fua: boolean): void {
    const ackSeq = ++this.ackSeq;
    if (fua) {
      // Generations of one block only grow: this one supersedes whatever was unflushed.
      rec.durableGeneration = generation;
      rec.unflushed = [];
      this.unflushedBlocks.delete(block);
    } else {
      // A FLUSH sent from now on covers this ack and every earlier one, so with none in
      // flight the block's older unflushed acks no longer matter (this keeps the list short).
      if (this.flushesInFlight === 0) rec.unflushed.length = 0;
      rec.unflushed.push({ generation, ackSeq });
      this.unflushedBlocks.add(block);
    }
  }

  /** A FLUSH sent when `sentAtSeq` acks had arrived was acknowledged: those writes are durable. */
  private settleFlush(sentAtSeq: number): void {
    for (const block of this.unflushedBlocks) {
      const rec = this.blocks.get(block)!;
      let n = 0;
      while (n < rec.unflushed.length && rec.unflushed[n]!.ackSeq <= sentAtSeq) {
        rec.durableGeneration = Math.max(rec.durableGeneration, rec.unflushed[n]!.generation);
        n++;
      }
      if (n > 0) rec.unflushed.splice(0, n);
      if (rec.unflushed.length === 0) this.unflushedBlocks.delete(block);
    }
  }

  /**
   * Block -> the last generation the server has promised durable so far: acknowledged with
   * FUA, or acknowledged before a FLUSH was sent that has been acknowledged since. After a
   * power loss now, each of these blocks must hold that generation or a later one.
   */
  durableGenerations(): Map<number, number> {
    const out = new Map<number, number>();
    for (const [block, rec] of this.blocks) if (rec.durableGeneration > 0) out.set(block, rec.durableGeneration);
    return out;
  }

  /**
   * Block -> its last acknowledged generation, as of now. A point-in-time copy taken from
   * now on must hold, in every block, this generation or a later one.
   */
  ackedGenerations(): Map<number, number> {
    const out = new Map<number, number>();
    for (const [block, rec] of this.blocks) if (rec.ackedGeneration > 0) out.set(block, rec.ackedGeneration);
    return out;
  }

  /** Generations issued so far (generation n is the n-th write issued). */
  get generationsIssued(): number {
    return this.nextGeneration - 1;
  }

  private async flushOnce(): Promise<void> {
    this.inFlightNow++;
    this.flushesInFlight++;
    const sentAtSeq = this.ackSeq;
    try {
      await this.client.flush();
      this.s.flushesAcked++;
      this.settleFlush(sentAtSeq);
    } catch (err) {
      this.recordError(err);
    } finally {
      this.flushesInFlight--;
      this.inFlightNow--;
    }
  }

  /** The block indexes written so far, in order. */
  writtenBlocks(): number[] {
    return [...this.blocks.keys()].sort((a, b) => a - b);
  }

  /**
   * Reads back every block ever written (through `read`, by default this writer's own
   * connection) and checks it. Reads go in runs of adjacent blocks, up to 1 MiB each.
   */
  async verify(read?: ReadFn, opts: { concurrency?: number } = {}): Promise<VerifyReport> {
    const readFn: ReadFn = read ?? ((offset, len) => this.client.read(offset, len));
    const report: VerifyReport = { blocksChecked: 0, blocksAtAcked: 0, blocksAtUnknownOutcome: 0, blocksUnchanged: 0, mismatchCount: 0, mismatches: [] };
    const runs = this.runsOf(this.writtenBlocks(), Math.max(1, Math.floor((1 << 20) / this.blockBytes)));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const run = runs[next++]!;
        let data: Buffer | undefined;
        let failure = '';
        try {
          data = await readFn(run.first * this.blockBytes, run.count * this.blockBytes);
        } catch (err) {
          failure = err instanceof Error ? err.message : String(err);
        }
        for (let i = 0; i < run.count; i++) {
          const block = run.first + i;
          const got = data?.subarray(i * this.blockBytes, (i + 1) * this.blockBytes);
          this.check(report, block, got, failure);
        }
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency ?? 8 }, worker));
    report.mismatches.sort((a, b) => a.block - b.block);
    return report;
  }

  private runsOf(sorted: number[], maxBlocks: number): { first: number; count: number }[] {
    const runs: { first: number; count: number }[] = [];
    for (const b of sorted) {
      const last = runs[runs.length - 1];
      if (last && last.first + last.count === b && last.count < maxBlocks) last.count++;
      else runs.push({ first: b, count: 1 });
    }
    return runs;
  }

  private check(report: VerifyReport, block: number, got: Buffer | undefined, failure: string): void {
    const rec = this.blocks.get(block)!;
    const possible = rec.inFlight ? [...rec.possible, rec.inFlight] : rec.possible;
    report.blocksChecked++;
    const bad = (problem: BlockProblem, found?: DecodedBlock, detail?: string): void => {
      report.mismatchCount++;
      if (report.mismatches.length >= MAX_DETAILS) return;
      report.mismatches.push({
        block, offset: block * this.blockBytes, problem, ackedGeneration: rec.ackedGeneration, possibleGenerations: possible,
        ...(found ? { found: { writerId: found.writerId.toString(16), block: found.block, generation: found.generation } } : {}),
        ...(detail ? { detail } : {}),
      });
    };
    if (!got || got.length !== this.blockBytes) return bad('read-failed', undefined, failure || `short read (${got?.length ?? 0} bytes)`);
    const h = decodeBlock(got);
    const ours = h !== undefined && h.writerId === this.writerId;
    if (!ours && rec.ackedGeneration === 0) {
      report.blocksUnchanged++;
      return;
    }
    if (!h) return bad('no-header', undefined, `first bytes ${got.subarray(0, 16).toString('hex')}`);
    if (!ours) return bad('wrong-writer', h);
    if (h.block !== block) return bad('wrong-block', h);
    if (!h.digestOk) return bad('bad-digest', h);
    if (h.generation === rec.ackedGeneration) {
      report.blocksAtAcked++;
      return;
    }
    if (possible.includes(h.generation)) {
      report.blocksAtUnknownOutcome++;
      return;
    }
    bad(h.generation < rec.ackedGeneration ? 'stale-generation' : 'unknown-generation', h);
  }
}

/** A ReadFn over a fresh connection to another export (closed by the returned `close`). */
export async function nbdReader(socketPath: string, exportName = '', opts: NbdBlockClientOptions = {}): Promise<{ read: ReadFn; client: NbdBlockClient; close(): Promise<void> }> {
  const client = await NbdBlockClient.connect(socketPath, exportName, opts);
  return { read: (offset, len) => client.read(offset, len), client, close: () => client.close() };
}
