/**
 * The incremental parser of a data connection's requests: headers out of received chunks
 * (a header may span chunks), and each WRITE payload copied straight into pooled buffers
 * of its own (common/buffer-pool.ts), never joined: the device writes the views with one
 * pwritev. Node hands a socket's bytes over in fresh chunks (and decrypts TLS into them),
 * so one copy into reusable memory is the cheapest way to keep what a connection holds
 * bounded and recycled; nothing else copies the payload.
 *
 * A malformed header throws (see data-frames.ts); the parser is then unusable.
 */
import type { BufferPool } from '../common/buffer-pool.js';
import { DataOp, REQUEST_HEADER_BYTES, decodeRequestHeader, type RequestHeader } from './data-frames.js';

export interface ParsedRequest {
  header: RequestHeader;
  /** A WRITE's payload, back to back (empty for other ops). */
  views: Buffer[];
  /** What to give back to the pool once the request is done. */
  owned: Buffer[];
}

export class RequestParser {
  private readonly hdr = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  private hdrHave = 0;
  /** The write whose payload is arriving, and how far its views are filled. */
  private current: ParsedRequest | undefined;
  private viewIdx = 0;
  private viewHave = 0;

  constructor(
    private readonly pool: BufferPool,
    private readonly maxPayloadBytes: number,
    private readonly onRequest: (r: ParsedRequest) => void,
  ) {}

  /** Whether a header or payload is partly received. */
  get midFrame(): boolean {
    return this.hdrHave > 0 || this.current !== undefined;
  }

  feed(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.current) {
        at = this.fillPayload(chunk, at);
        continue;
      }
      if (this.hdrHave === 0 && chunk.length - at >= REQUEST_HEADER_BYTES) {
        this.onHeader(decodeRequestHeader(chunk, at, this.maxPayloadBytes));
        at += REQUEST_HEADER_BYTES;
        continue;
      }
      const n = Math.min(REQUEST_HEADER_BYTES - this.hdrHave, chunk.length - at);
      chunk.copy(this.hdr, this.hdrHave, at, at + n);
      this.hdrHave += n;
      at += n;
      if (this.hdrHave === REQUEST_HEADER_BYTES) {
        this.hdrHave = 0;
        this.onHeader(decodeRequestHeader(this.hdr, 0, this.maxPayloadBytes));
      }
    }
  }

  /** Gives back the memory of a partly received payload (the connection is closing). */
  release(): void {
    if (this.current) this.pool.give(this.current.owned);
    this.current = undefined;
    this.hdrHave = 0;
  }

  private onHeader(header: RequestHeader): void {
    const r: ParsedRequest = { header, views: [], owned: [] };
    if (header.op !== DataOp.WRITE) return this.onRequest(r);
    this.pool.take(header.lengthBytes, r.views, r.owned);
    this.current = r;
    this.viewIdx = 0;
    this.viewHave = 0;
  }

  private fillPayload(chunk: Buffer, at: number): number {
    const r = this.current!;
    while (at < chunk.length) {
      const view = r.views[this.viewIdx]!;
      const n = chunk.copy(view, this.viewHave, at, at + Math.min(view.length - this.viewHave, chunk.length - at));
      at += n;
      this.viewHave += n;
      if (this.viewHave < view.length) continue;
      this.viewIdx++;
      this.viewHave = 0;
      if (this.viewIdx === r.views.length) {
        this.current = undefined;
        this.onRequest(r);
        break;
      }
    }
    return at;
  }
}
