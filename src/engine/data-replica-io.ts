/**
 * `ReplicaIo` for a replica on a peer over the binary data channel (docs/replica-protocol.md):
 * one or a few `DataLink`s to the replica, all bound at the engine's epoch. Requests go
 * round-robin over the links; reads and writes larger than the replica's payload limit
 * (its hello says, 4 MiB by default) and ranges beyond a frame's length field are split and
 * their parts sent together. Writes send the caller's buffers as they are; reads land in
 * the caller's buffers (`readInto`) or in one buffer made for the whole read.
 *
 * When one link fails, the whole ReplicaIo fails with its error: the engine sees one
 * broken connection, faults or retries as it does for any replica, and opens a new one.
 */
import { Code, StorageError } from '../common/errors.js';
import type { NodeId, ReplicaId } from '../common/ids.js';
import { DataOp, FLAG_FUA, FLAG_MAY_TRIM, MAX_RANGE_BYTES } from '../replica/data-frames.js';
import { totalBytes } from '../replica/io-types.js';
import { DataLink, type DataLinkTarget } from './data-link.js';
import type { DataChannelStats } from './data-stats.js';
import type { ReplicaIo } from './engine-types.js';

export interface DataReplicaIoOptions {
  /** Connections to the replica; 1 by default (one TLS session already outruns two cores). */
  connections?: number;
  /** How long dialling and the handshake may take. */
  connectTimeoutMs?: number;
  stats?: DataChannelStats;
  /** Called once when the ReplicaIo is closed or cancelled. */
  onClosed?: () => void;
}

/** The parts of `parts` (laid back to back) between byte `from` and byte `to`, as views. */
export function sliceParts(parts: readonly Uint8Array[], from: number, to: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  for (const p of parts) {
    const end = at + p.byteLength;
    if (end > from && at < to) out.push(p.subarray(Math.max(0, from - at), Math.min(p.byteLength, to - at)));
    at = end;
    if (at >= to) break;
  }
  return out;
}

export class DataReplicaIo implements ReplicaIo {
  readonly local = false;
  readonly replicaId: ReplicaId;
  readonly nodeId: NodeId;
  /** The replica's size and newest epoch as its hello said. */
  readonly sizeBytes: number;
  private readonly maxPayload: number;
  private next = 0;
  private onClosed: (() => void) | undefined;

  private constructor(private readonly links: DataLink[], onClosed: (() => void) | undefined) {
    this.onClosed = onClosed;
    const first = links[0]!;
    this.replicaId = first.target.replicaId;
    this.nodeId = first.target.nodeId;
    this.sizeBytes = first.hello!.sizeBytes;
    this.maxPayload = Math.max(4096, Math.min(...links.map((l) => l.hello!.maxPayloadBytes)));
  }

  /** Dials and binds every link; rejects (and closes what was opened) when any is refused. */
  static async open(target: DataLinkTarget, opts: DataReplicaIoOptions = {}): Promise<DataReplicaIo> {
    const count = Math.max(1, Math.floor(opts.connections ?? 1));
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const opened = await Promise.allSettled(Array.from({ length: count }, () => DataLink.open(target, timeoutMs, opts.stats)));
    const links = opened.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (refused) {
      for (const l of links) l.fail(new StorageError(Code.CANCELLED, 'another connection of this replica was refused'));
      throw refused.reason;
    }
    return new DataReplicaIo(links, opts.onClosed);
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.writev(offset, [data], fua);
  }

  writev(offset: number, parts: readonly Uint8Array[], fua: boolean): Promise<void> {
    const length = totalBytes(parts);
    const flags = fua ? FLAG_FUA : 0;
    if (length <= this.maxPayload) return this.link().request(DataOp.WRITE, flags, offset, length, parts);
    const sent: Promise<void>[] = [];
    for (let at = 0; at < length; at += this.maxPayload) {
      const end = Math.min(length, at + this.maxPayload);
      sent.push(this.link().request(DataOp.WRITE, flags, offset + at, end - at, sliceParts(parts, at, end)));
    }
    return all(sent);
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    const data = Buffer.allocUnsafe(lengthBytes);
    await this.readInto(offset, [data]);
    return data;
  }

  readInto(offset: number, targets: readonly Uint8Array[]): Promise<void> {
    const length = totalBytes(targets);
    if (length <= this.maxPayload) return this.link().request(DataOp.READ, 0, offset, length, undefined, targets);
    const asked: Promise<void>[] = [];
    for (let at = 0; at < length; at += this.maxPayload) {
      const end = Math.min(length, at + this.maxPayload);
      asked.push(this.link().request(DataOp.READ, 0, offset + at, end - at, undefined, sliceParts(targets, at, end)));
    }
    return all(asked);
  }

  /** One flush covers every write this replica accepted before it, whichever link carried it. */
  flush(): Promise<void> {
    return this.link().request(DataOp.FLUSH, 0, 0, 0);
  }

  trim(offset: number, lengthBytes: number): Promise<void> {
    return this.ranges(DataOp.TRIM, 0, offset, lengthBytes);
  }

  writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    return this.ranges(DataOp.WRITE_ZEROES, mayTrim ? FLAG_MAY_TRIM : 0, offset, lengthBytes);
  }

  async close(): Promise<void> {
    await Promise.all(this.links.map((l) => l.close()));
    this.closed();
  }

  cancel(): void {
    const err = new StorageError(Code.CANCELLED, `I/O to replica ${this.replicaId} cancelled`, { details: { replica: this.replicaId } });
    for (const l of this.links) l.fail(err);
    this.closed();
  }

  private closed(): void {
    const notify = this.onClosed;
    this.onClosed = undefined;
    notify?.();
  }

  /** Requests in flight on every link. */
  get inflight(): number {
    let n = 0;
    for (const l of this.links) n += l.inflight;
    return n;
  }

  private ranges(op: DataOp, flags: number, offset: number, lengthBytes: number): Promise<void> {
    if (lengthBytes <= MAX_RANGE_BYTES) return this.link().request(op, flags, offset, lengthBytes);
    const sent: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += MAX_RANGE_BYTES) sent.push(this.link().request(op, flags, offset + at, Math.min(MAX_RANGE_BYTES, lengthBytes - at)));
    return all(sent);
  }

  /** The next link; once one has failed, every request fails with its error (the engine redials). */
  private link(): DataLink {
    if (this.links.length === 1) return this.links[0]!;
    const broken = this.links.find((l) => l.failed);
    if (broken) {
      for (const l of this.links) l.fail(broken.failed!);
      return broken;
    }
    this.next = (this.next + 1) % this.links.length;
    return this.links[this.next]!;
  }
}

function all(parts: Promise<void>[]): Promise<void> {
  return Promise.all(parts).then(() => undefined);
}
