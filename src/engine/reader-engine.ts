/**
 * A reader engine: serves a volume read-only on a node while another node's engine holds
 * it, when every publication of the volume is read-only (CSI MULTI_NODE_READER_ONLY). It
 * is a `BlockDevice` the NBD server serves as a read-only export.
 *
 * - It never writes, so it needs no epoch of its own (rule 3 fences old writers): it opens
 *   the in-sync replicas at the document's current epoch, which the holder presents too,
 *   and records nothing in the document. Presenting the document's epoch fences no engine
 *   the document has not already fenced.
 * - Reads go to the local in-sync replica first, else a remote one. A replica that fails a
 *   read is skipped (the read goes to the next in-sync replica) and tried again after
 *   `reconnectIntervalMs`; it is never faulted: faults and rebuilds are the holder's. All
 *   failing: UNAVAILABLE (an I/O error to the NBD client).
 * - It follows the document's in-sync set (rule 2: only in-sync replicas serve reads).
 * - A newer epoch (in the document, or a replica refusing this one) asks `newerEpoch`
 *   whether readers may go on: yes while the new engine is read-only too (the holder's
 *   node restarted, or a new holder staged it read-only); the reader then reopens its
 *   replicas at that epoch. Otherwise a writer took the volume and the reader is fenced:
 *   every request fails from then on.
 * - Writes, trims and write-zeroes are PERMISSION_DENIED (the export is read-only anyway).
 * - A snapshot is FAILED_PRECONDITION: the barrier is the holder's engine's, which owns the volume.
 */
import { Code, StorageError, isStaleEpoch, fromNodeError } from '../common/errors.js';
import type { DeviceId, NodeId, SnapshotId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import type { BlockDevice } from '../pool/backend.js';
import type { EngineVolumeDoc, ReplicaConnector, ReplicaIo, VolumeReplicaEntry, VolumeSnapshotResult } from './engine-types.js';

export interface ReaderEngineOptions {
  volumeId: VolumeId;
  name: string;
  sizeBytes: number;
  /** The document's epoch when the reader starts. */
  epoch: number;
  /** The document's replicas: only the in-sync ones are read. */
  replicas: readonly VolumeReplicaEntry[];
  localNodeId: NodeId;
  connector: ReplicaConnector;
  /** A replica that has not answered a read (or an open) for this long is skipped; 8000 by default. */
  replicaTimeoutMs?: number;
  /** How long a replica that failed is left alone before it is tried again; 2000 by default. */
  reconnectIntervalMs?: number;
  log: Logger;
  /**
   * The volume's epoch moved past the reader's: the document as it is now when readers may
   * go on at its epoch, undefined when a writer holds the volume (the reader is fenced).
   */
  newerEpoch: () => Promise<EngineVolumeDoc | undefined>;
  /** Called once when the reader is fenced. */
  onFenced?: (err: StorageError) => void;
}

interface Source {
  entry: VolumeReplicaEntry;
  io?: ReplicaIo;
  opening?: Promise<ReplicaIo>;
  /** When it last failed (ms since epoch): skipped until `reconnectIntervalMs` later. */
  failedAt?: number;
}

export class ReaderEngine implements BlockDevice {
  readonly id: DeviceId;
  private size: number;
  private epochValue: number;
  private sources: Source[] = [];
  private fencedError: StorageError | undefined;
  private closing = false;
  private refreshing: Promise<void> | undefined;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly reconnectMs: number;

  private constructor(private readonly opts: ReaderEngineOptions) {
    this.id = opts.volumeId as string as DeviceId;
    this.size = opts.sizeBytes;
    this.epochValue = opts.epoch;
    this.timeoutMs = opts.replicaTimeoutMs ?? 8000;
    this.reconnectMs = opts.reconnectIntervalMs ?? 2000;
    this.log = opts.log.child({ volume: opts.name, volumeId: opts.volumeId, epoch: opts.epoch, reader: true });
    this.setSources(opts.replicas);
  }

  /** Opens the in-sync replicas; UNAVAILABLE when none answers, FAILED_PRECONDITION when fenced at once. */
  static async start(opts: ReaderEngineOptions): Promise<ReaderEngine> {
    const reader = new ReaderEngine(opts);
    try {
      await reader.openAll();
    } catch (err) {
      reader.drop();
      throw err;
    }
    reader.log.info({ inSync: reader.sources.map((s) => s.entry.id), open: reader.sources.filter((s) => s.io).map((s) => s.entry.id) }, 'reader engine started');
    return reader;
  }

  get epoch(): number {
    return this.epochValue;
  }

  get fenced(): boolean {
    return this.fencedError !== undefined;
  }

  get sizeBytes(): number {
    return this.size;
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      if (this.refreshing) await this.refreshing;
      this.checkOpen();
      const reasons: string[] = [];
      let stale = false;
      for (const s of this.ordered()) {
        try {
          const io = await this.ioOf(s);
          return await withTimeout(io.read(offset, lengthBytes), this.timeoutMs, `reading replica ${s.entry.id} on node ${s.entry.nodeId}`);
        } catch (err) {
          const e = fromNodeError(err, `replica ${s.entry.id} read`);
          if (isStaleEpoch(e)) {
            stale = true;
            break;
          }
          this.failed(s, e);
          reasons.push(`${s.entry.id} on node ${s.entry.nodeId}: ${e.message}`);
        }
      }
      if (stale && attempt < 3) {
        await this.refresh();
        continue;
      }
      this.checkOpen();
      throw new StorageError(Code.UNAVAILABLE, `no in-sync replica of volume ${this.opts.name} answered a read: ${reasons.join('; ') || 'none is reachable now'}`,
        { details: { volumeId: this.opts.volumeId, offset, lengthBytes } });
    }
  }

  async readInto(offset: number, targets: readonly Uint8Array[]): Promise<void> {
    const data = await this.read(offset, targets.reduce((n, t) => n + t.byteLength, 0));
    let at = 0;
    for (const t of targets) {
      t.set(data.subarray(at, at + t.byteLength));
      at += t.byteLength;
    }
  }

  write(_offset: number, _data: Uint8Array, _fua?: boolean): Promise<void> {
    return Promise.reject(this.readOnlyError('write'));
  }

  trim(_offset: number, _lengthBytes: number): Promise<void> {
    return Promise.reject(this.readOnlyError('trim'));
  }

  writeZeroes(_offset: number, _lengthBytes: number, _mayTrim: boolean): Promise<void> {
    return Promise.reject(this.readOnlyError('write-zeroes'));
  }

  /** Refused: a reader does not own the volume; the engine holding it takes snapshots. */
  snapshot(snapshotId: SnapshotId, _opts: { deadlineMs: number }): Promise<VolumeSnapshotResult> {
    return Promise.reject(new StorageError(Code.FAILED_PRECONDITION,
      `volume ${this.opts.name} is served read-only here and its engine runs on another node: take snapshot ${snapshotId} there`,
      { details: { volumeId: this.opts.volumeId, snapshot: snapshotId } }));
  }

  /** Nothing was written: nothing to make durable. */
  flush(): Promise<void> {
    this.checkOpen();
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await Promise.all(this.sources.map(async (s) => {
      const io = s.io;
      s.io = undefined;
      if (io) await io.close().catch(() => io.cancel());
    }));
    this.log.info({ fenced: this.fenced }, 'reader engine closed');
  }

  /** The document changed: follow its in-sync set and size; a newer epoch reopens or fences. */
  applyDoc(doc: EngineVolumeDoc): void {
    if (doc.id !== this.opts.volumeId || this.closing || this.fencedError) return;
    if (doc.epoch > this.epochValue) {
      void this.refresh();
      return;
    }
    if (doc.sizeBytes !== undefined && doc.sizeBytes > this.size) this.size = doc.sizeBytes;
    this.setSources(doc.replicas);
  }

  // --- internals ---------------------------------------------------------------------

  private checkOpen(): void {
    if (this.fencedError) throw this.fencedError;
    if (this.closing) throw new StorageError(Code.UNAVAILABLE, `reader of volume ${this.opts.name} is closing`, { details: { volumeId: this.opts.volumeId } });
  }

  private readOnlyError(op: string): StorageError {
    return new StorageError(Code.PERMISSION_DENIED, `volume ${this.opts.name} is served read-only on this node (a reader): ${op} refused`, { details: { volumeId: this.opts.volumeId } });
  }

  /** Keeps the sources that are still in sync (their I/O stays open), adds new in-sync ones, closes the rest. */
  private setSources(replicas: readonly VolumeReplicaEntry[]): void {
    const wanted = replicas.filter((r) => r.state === 'in-sync');
    const next = wanted.map((entry) => this.sources.find((s) => s.entry.id === entry.id) ?? { entry });
    for (const s of this.sources) if (!next.includes(s)) this.dropSource(s);
    this.sources = next;
  }

  private dropSource(s: Source): void {
    const io = s.io;
    s.io = undefined;
    if (io) void io.close().catch(() => io.cancel());
  }

  /** The local replica first, then the others; those that failed recently last. */
  private ordered(): Source[] {
    const now = Date.now();
    const cool = (s: Source): boolean => s.failedAt === undefined || now - s.failedAt >= this.reconnectMs;
    const rank = (s: Source): number => (cool(s) ? 0 : 2) + (s.entry.nodeId === this.opts.localNodeId ? 0 : 1);
    return [...this.sources].sort((a, b) => rank(a) - rank(b));
  }

  private ioOf(s: Source): Promise<ReplicaIo> {
    if (s.io) return Promise.resolve(s.io);
    if (!s.opening) {
      const epoch = this.epochValue;
      const opening = this.opts.connector.openIo(this.opts.volumeId, s.entry, epoch);
      const bounded = withTimeout(opening, this.timeoutMs, `opening replica ${s.entry.id} on node ${s.entry.nodeId}`);
      bounded.catch(() => opening.then((io) => io.cancel(), () => undefined));
      s.opening = bounded.then((io) => {
        if (this.closing || this.fencedError || epoch !== this.epochValue || !this.sources.includes(s)) {
          io.cancel();
          throw this.fencedError ?? new StorageError(Code.ABORTED, `replica ${s.entry.id} was opened for a reader that moved on`);
        }
        s.io = io;
        s.failedAt = undefined;
        return io;
      }).finally(() => {
        s.opening = undefined;
      });
    }
    return s.opening;
  }

  private failed(s: Source, err: StorageError): void {
    if (s.failedAt === undefined) this.log.warn({ replica: s.entry.id, replicaNode: s.entry.nodeId, err: err.message }, 'reader skips a replica that failed');
    s.failedAt = Date.now();
    const io = s.io;
    s.io = undefined;
    io?.cancel();
  }

  private async openAll(): Promise<void> {
    const results = await Promise.allSettled(this.sources.map((s) => this.ioOf(s)));
    const reasons: string[] = [];
    for (const [i, r] of results.entries()) {
      if (r.status === 'fulfilled') continue;
      const s = this.sources[i]!;
      const e = fromNodeError(r.reason, `replica ${s.entry.id} open`);
      if (isStaleEpoch(e)) throw e;
      s.failedAt = Date.now();
      reasons.push(`${s.entry.id} on node ${s.entry.nodeId}: ${e.message}`);
    }
    if (!this.sources.some((s) => s.io)) {
      throw new StorageError(Code.UNAVAILABLE, `no in-sync replica of volume ${this.opts.name} is reachable: ${reasons.join('; ') || 'none is in sync'}`,
        { details: { volumeId: this.opts.volumeId } });
    }
  }

  /** One at a time: asks whether readers may go on at the newer epoch; reopens there, or fences. */
  private refresh(): Promise<void> {
    this.refreshing ??= this.doRefresh().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private async doRefresh(): Promise<void> {
    if (this.closing || this.fencedError) return;
    let doc: EngineVolumeDoc | undefined;
    try {
      doc = await this.opts.newerEpoch();
    } catch (err) {
      // The document cannot be read now: the next read that meets the newer epoch asks again.
      this.log.warn({ err: (err as Error).message }, 'reader cannot read the volume document after a newer epoch');
      return;
    }
    if (this.closing || this.fencedError) return;
    if (!doc) {
      this.fence();
      return;
    }
    if (doc.epoch <= this.epochValue) return;
    const previous = this.epochValue;
    this.epochValue = doc.epoch;
    for (const s of this.sources) {
      this.dropSource(s);
      s.failedAt = undefined;
    }
    this.sources = [];
    this.setSources(doc.replicas);
    if (doc.sizeBytes !== undefined && doc.sizeBytes > this.size) this.size = doc.sizeBytes;
    this.log.info({ previousEpoch: previous, newEpoch: doc.epoch }, 'reader follows a new read-only engine of the volume');
  }

  private fence(): void {
    const err = new StorageError(Code.FAILED_PRECONDITION,
      `volume ${this.opts.name} was taken by a writer (its epoch moved past ${this.epochValue}): this read-only reader is fenced`,
      { details: { volumeId: this.opts.volumeId, epoch: this.epochValue } });
    this.fencedError = err;
    this.drop();
    this.log.warn({ epoch: this.epochValue }, 'reader engine fenced: a writer took the volume');
    try {
      this.opts.onFenced?.(err);
    } catch (e) {
      this.log.error({ err: e }, 'onFenced handler threw');
    }
  }

  /** Drops every replica connection now. */
  private drop(): void {
    for (const s of this.sources) {
      s.io?.cancel();
      s.io = undefined;
    }
  }
}
