/**
 * The engine's I/O to one replica (`ReplicaIo`), in its two forms:
 *
 * - `LocalReplicaIo`: the replica on this node, straight into its `Replica` (no gRPC, no
 *   copy). Every call is one `runBatch` at the engine's epoch, so the replica fences it
 *   exactly as it fences a remote stream. Requests above 4 MiB are split so that none
 *   exceeds the replica's batch limit. A request it cancels keeps its caller's memory held
 *   (common/memory-holds.ts) until the replica reports it done: the device's thread-pool
 *   preadv/pwritev runs on after the promise rejected, and must not meet memory that the
 *   caller has meanwhile given to someone else.
 * - `RemoteReplicaIo`: a replica on a peer, over one `IoStream` (which batches).
 */
import { Code, StorageError } from '../common/errors.js';
import { holdMemory, releaseMemory } from '../common/memory-holds.js';
import type { NodeId, ReplicaId } from '../common/ids.js';
import type { IoStream } from '../replica/io-stream.js';
import { totalBytes, type IoOp, type IoResult } from '../replica/io-types.js';
import { scatter, type Replica } from '../replica/replica.js';
import type { ReplicaIo } from './engine-types.js';

/** The largest request sent to a local replica in one batch (its default batch limit is 8 MiB). */
export const LOCAL_CHUNK_BYTES = 4 << 20;

interface Pending {
  resolve: (data: Buffer | undefined) => void;
  reject: (err: StorageError) => void;
  /** The caller's memory the replica reads from (write data) or into (read targets). */
  memory: Uint8Array | readonly Uint8Array[] | undefined;
}

export class LocalReplicaIo implements ReplicaIo {
  readonly replicaId: ReplicaId;
  readonly local = true;
  private nextSeq = 1;
  private readonly pending = new Map<number, Pending>();
  /** Cancelled requests the replica has not finished yet, with the caller's memory they hold. */
  private readonly orphans = new Map<number, Uint8Array | readonly Uint8Array[]>();
  private failure: StorageError | undefined;
  private closing = false;
  private drainWaiters: (() => void)[] = [];
  private readonly sink = (r: IoResult): void => this.onResult(r);

  constructor(private readonly replica: Replica, readonly epoch: number, readonly nodeId: NodeId) {
    this.replicaId = replica.id;
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    if (data.byteLength <= LOCAL_CHUNK_BYTES) return this.submit('write', offset, data.byteLength, data, fua, false).then(ignore);
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < data.byteLength; at += LOCAL_CHUNK_BYTES) {
      const part = data.subarray(at, Math.min(at + LOCAL_CHUNK_BYTES, data.byteLength));
      parts.push(this.submit('write', offset + at, part.byteLength, part, fua, false));
    }
    return Promise.all(parts).then(ignore);
  }

  writev(offset: number, parts: readonly Uint8Array[], fua: boolean): Promise<void> {
    const length = totalBytes(parts);
    if (length > LOCAL_CHUNK_BYTES) return this.write(offset, Buffer.concat(parts, length), fua);
    return this.submit('write', offset, length, undefined, fua, false, parts).then(ignore);
  }

  async readInto(offset: number, targets: readonly Uint8Array[]): Promise<void> {
    const length = totalBytes(targets);
    if (length > LOCAL_CHUNK_BYTES) return scatter(await this.read(offset, length), targets);
    await this.submit('read', offset, length, undefined, false, false, undefined, targets);
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    if (lengthBytes <= LOCAL_CHUNK_BYTES) return (await this.submit('read', offset, lengthBytes, undefined, false, false)) ?? Buffer.alloc(0);
    const parts: Promise<Buffer | undefined>[] = [];
    for (let at = 0; at < lengthBytes; at += LOCAL_CHUNK_BYTES) {
      parts.push(this.submit('read', offset + at, Math.min(LOCAL_CHUNK_BYTES, lengthBytes - at), undefined, false, false));
    }
    return Buffer.concat((await Promise.all(parts)).map((b) => b ?? Buffer.alloc(0)));
  }

  flush(): Promise<void> {
    return this.submit('flush', 0, 0, undefined, false, false).then(ignore);
  }

  trim(offset: number, lengthBytes: number): Promise<void> {
    return this.submit('trim', offset, lengthBytes, undefined, false, false).then(ignore);
  }

  writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    return this.submit('write-zeroes', offset, lengthBytes, undefined, false, mayTrim).then(ignore);
  }

  /** Refuses new requests and waits for those in flight. The replica itself stays open (the replica manager owns it). */
  async close(): Promise<void> {
    this.closing = true;
    if (this.pending.size > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  cancel(): void {
    if (this.failure) return;
    this.failure = new StorageError(Code.CANCELLED, `I/O to replica ${this.replicaId} cancelled`, { details: { replica: this.replicaId } });
    const all = [...this.pending];
    this.pending.clear();
    for (const [seq, p] of all) {
      if (!p.memory) continue;
      holdMemory(p.memory);
      this.orphans.set(seq, p.memory);
    }
    for (const [, p] of all) p.reject(this.failure);
    this.wakeDrainWaiters();
  }

  /** Requests submitted and not yet answered. */
  get inflight(): number {
    return this.pending.size;
  }

  private submit(op: IoOp, offset: number, lengthBytes: number, data: Uint8Array | undefined, fua: boolean, mayTrim: boolean,
    parts?: readonly Uint8Array[], targets?: readonly Uint8Array[]): Promise<Buffer | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) {
      return Promise.reject(new StorageError(Code.FAILED_PRECONDITION, `I/O to replica ${this.replicaId} is closing`, { details: { replica: this.replicaId } }));
    }
    return new Promise((resolve, reject) => {
      const seq = this.nextSeq++;
      this.pending.set(seq, { resolve, reject, memory: data ?? parts ?? targets });
      this.replica.runBatch(this.epoch, [{ seq, op, offset, lengthBytes, data, fua, mayTrim, parts, targets }], this.sink);
    });
  }

  private onResult(r: IoResult): void {
    const p = this.pending.get(r.seq);
    if (!p) return this.orphans.size > 0 ? this.orphanDone(r.seq) : undefined; // cancelled meanwhile
    this.pending.delete(r.seq);
    if (r.error) p.reject(r.error);
    else p.resolve(r.data);
    if (this.pending.size === 0 && this.drainWaiters.length > 0) this.wakeDrainWaiters();
  }

  /** A cancelled request is done on the device: its memory may be reused. */
  private orphanDone(seq: number): void {
    const memory = this.orphans.get(seq);
    if (!memory) return;
    this.orphans.delete(seq);
    releaseMemory(memory);
  }

  private wakeDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}

/** A replica on a peer, through one Io stream; each call maps 1:1 to the stream's. */
export class RemoteReplicaIo implements ReplicaIo {
  readonly local = false;

  constructor(private readonly stream: IoStream, readonly replicaId: ReplicaId, readonly nodeId: NodeId) {}

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.stream.write(offset, data, fua);
  }

  read(offset: number, lengthBytes: number): Promise<Buffer> {
    return this.stream.read(offset, lengthBytes);
  }

  flush(): Promise<void> {
    return this.stream.flush();
  }

  trim(offset: number, lengthBytes: number): Promise<void> {
    return this.stream.trim(offset, lengthBytes);
  }

  writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    return this.stream.writeZeroes(offset, lengthBytes, mayTrim);
  }

  close(): Promise<void> {
    return this.stream.end();
  }

  cancel(): void {
    this.stream.cancel();
  }
}

function ignore(): void {
  return undefined;
}
