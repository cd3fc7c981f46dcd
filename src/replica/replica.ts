/**
 * One hosted replica, as engines do I/O on it (no gRPC here). It owns the pool device
 * (opened on first use), checks every request, and fences by epoch:
 *
 * - A batch whose epoch is older than the newest the replica has seen is refused whole
 *   (FAILED_PRECONDITION, "stale epoch N < M").
 * - A newer epoch is written to the node store (durable when the call returns) before any
 *   request that carried it is accepted, and requests of the new epoch wait until every
 *   request accepted under an older one has finished. So no write of a fenced engine can
 *   land after one of its successor.
 *
 * Requests of a batch run concurrently, with one ordering rule: a flush waits for every
 * write (write, trim, write-zeroes) accepted on this replica before it, then makes them
 * durable.
 */
import { Code, StorageError, fromNodeError, staleEpochError } from '../common/errors.js';
import type { DeviceId, ReplicaId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { BlockDevice } from '../pool/backend.js';
import type { HostedReplicaRecord, NodeStore, ReplicaState } from '../store/node-store.js';
import { requestBytes, totalBytes, type IoRequest, type IoResult, type ReplicaLimits } from './io-types.js';

export interface ReplicaOptions {
  record: HostedReplicaRecord;
  sizeBytes: number;
  openDevice: () => Promise<BlockDevice>;
  store: NodeStore;
  limits: ReplicaLimits;
  log: Logger;
}

export type ResultSink = (result: IoResult) => void;

const WRITE_OPS = new Set(['write', 'trim', 'write-zeroes']);

function asStorageError(err: unknown, what: string): StorageError {
  return err instanceof StorageError ? err : fromNodeError(err, what);
}

export class Replica {
  readonly id: ReplicaId;
  readonly volumeId: VolumeId;
  readonly deviceId: DeviceId;
  private sizeValue: number;
  private epochValue: number;
  private stateValue: ReplicaState;
  private device: BlockDevice | undefined;
  private deviceOpening: Promise<BlockDevice> | undefined;
  /** Every accepted request not yet finished. */
  private readonly inflight = new Set<Promise<void>>();
  /** The writes among them: what a flush waits for. */
  private readonly inflightWrites = new Set<Promise<void>>();
  /** Set when a newer epoch was adopted: the older epoch's requests still in flight. */
  private epochBarrier: Promise<unknown> | undefined;
  private closed = false;
  /**
   * When a request at a current epoch was last admitted (I/O, checksums, allocated ranges),
   * in ms since the epoch; 0 before any. The orphan collector spares a replica in use.
   */
  lastAdmittedAt = 0;

  constructor(private readonly opts: ReplicaOptions) {
    this.id = opts.record.id;
    this.volumeId = opts.record.volumeId;
    this.deviceId = opts.record.deviceId;
    this.sizeValue = opts.sizeBytes;
    this.epochValue = opts.record.epoch;
    this.stateValue = opts.record.state;
  }

  get epoch(): number {
    return this.epochValue;
  }

  /** Requests must lie inside it; it grows (never shrinks) once the pool grew the device. */
  get sizeBytes(): number {
    return this.sizeValue;
  }

  /**
   * The device was grown to `sizeBytes` (ReplicaManager.resize, after the pool did it):
   * requests up to the new end are accepted from now on. Never shrinks.
   */
  grew(sizeBytes: number): void {
    if (sizeBytes > this.sizeValue) this.sizeValue = sizeBytes;
  }

  get state(): ReplicaState {
    return this.stateValue;
  }

  set state(state: ReplicaState) {
    this.stateValue = state;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Refuses a stale epoch; adopts a newer one (durably, before returning). Throws
   * FAILED_PRECONDITION for a stale epoch, NOT_FOUND once the replica is closed.
   */
  admitEpoch(epoch: number): void {
    if (this.closed) throw this.goneError();
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, `epoch ${epoch} is not valid: use a whole number from 0`, { details: { replica: this.id } });
    }
    if (epoch < this.epochValue) {
      throw staleEpochError(this.id, this.volumeId, epoch, this.epochValue);
    }
    this.lastAdmittedAt = Date.now();
    if (epoch === this.epochValue) return;
    let stored: number;
    try {
      stored = this.opts.store.raiseReplicaEpoch(this.id, epoch);
    } catch (err) {
      throw new StorageError(Code.UNAVAILABLE, `cannot record epoch ${epoch} of replica ${this.id}: ${(err as Error).message}`, { cause: err });
    }
    const previous = this.epochValue;
    this.epochValue = stored;
    if (stored !== epoch) return this.admitEpoch(epoch);
    if (this.inflight.size > 0) this.installBarrier();
    this.opts.log.info({ replica: this.id, volumeId: this.volumeId, epoch, previousEpoch: previous }, 'replica adopted a newer epoch');
  }

  /**
   * Runs a batch: every request's result goes to `sink`, exactly once, possibly before
   * this returns (refusals) and in any order.
   */
  runBatch(epoch: number, requests: readonly IoRequest[], sink: ResultSink): void {
    const refusal = this.refuseBatch(epoch, requests);
    if (refusal) {
      for (const r of requests) sink({ seq: r.seq, error: refusal });
      return;
    }
    for (const r of requests) {
      const invalid = this.validate(r);
      if (invalid) sink({ seq: r.seq, error: invalid });
      else this.dispatch(r, sink);
    }
  }

  /** Throws OUT_OF_RANGE unless [offset, offset + lengthBytes) lies inside the replica. */
  checkRange(offset: number, lengthBytes: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(lengthBytes) || offset < 0 || lengthBytes < 0 || offset + lengthBytes > this.sizeBytes) {
      throw new StorageError(Code.OUT_OF_RANGE,
        `${what}: range [${offset}, ${offset + lengthBytes}) is outside replica ${this.id} of ${this.sizeBytes} bytes`,
        { details: { replica: this.id, offset, lengthBytes, sizeBytes: this.sizeBytes } });
    }
  }

  /** Resolves once every write accepted before this call has finished (successfully or not). */
  async writesSettled(): Promise<void> {
    await Promise.allSettled([...this.inflightWrites]);
  }

  /** The open device (opening it on first use). */
  openedDevice(): Promise<BlockDevice> {
    if (this.device) return Promise.resolve(this.device);
    this.deviceOpening ??= this.opts.openDevice().then((d) => {
      if (this.closed) {
        void d.close();
        throw this.goneError();
      }
      this.device = d;
      return d;
    }, (err: unknown) => {
      this.deviceOpening = undefined;
      throw err;
    });
    return this.deviceOpening;
  }

  /** Refuses new requests, waits for those in flight, closes the device. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inflight]);
    const opening = this.deviceOpening;
    if (opening) await opening.catch(() => undefined);
    const device = this.device;
    this.device = undefined;
    if (device) await device.close();
  }

  private refuseBatch(epoch: number, requests: readonly IoRequest[]): StorageError | undefined {
    const limits = this.opts.limits;
    let bytes = 0;
    for (const r of requests) bytes += requestBytes(r);
    if (requests.length > limits.maxBatchRequests || bytes > limits.maxBatchBytes) {
      return new StorageError(Code.RESOURCE_EXHAUSTED,
        `batch of ${requests.length} requests and ${bytes} bytes exceeds the limit of ${limits.maxBatchRequests} requests and ${limits.maxBatchBytes} bytes per batch: send smaller batches`,
        { details: { replica: this.id, requests: requests.length, bytes } });
    }
    try {
      this.admitEpoch(epoch);
    } catch (err) {
      return asStorageError(err, 'epoch check');
    }
    return undefined;
  }

  private validate(r: IoRequest): StorageError | undefined {
    const what = `request seq ${r.seq} (${r.op})`;
    try {
      switch (r.op) {
        case 'flush':
          return undefined;
        case 'write': {
          const length = r.data?.byteLength ?? totalBytes(r.parts);
          if (length === 0) throw new StorageError(Code.INVALID_ARGUMENT, `${what} carries no data`);
          this.checkRange(r.offset, length, what);
          return undefined;
        }
        case 'read':
          if (this.stateValue !== 'in-sync') {
            throw new StorageError(Code.FAILED_PRECONDITION, `${what}: replica ${this.id} is ${this.stateValue} and serves no reads until it is in sync`,
              { details: { replica: this.id, state: this.stateValue } });
          }
          this.checkLength(r, what);
          return undefined;
        case 'trim':
        case 'write-zeroes':
          this.checkLength(r, what);
          return undefined;
        default:
          throw new StorageError(Code.INVALID_ARGUMENT, `request seq ${r.seq} names no known operation`);
      }
    } catch (err) {
      return asStorageError(err, what);
    }
  }

  private checkLength(r: IoRequest, what: string): void {
    if (!(r.lengthBytes > 0)) throw new StorageError(Code.INVALID_ARGUMENT, `${what} has no length`);
    this.checkRange(r.offset, r.lengthBytes, what);
  }

  private dispatch(r: IoRequest, sink: ResultSink): void {
    const isWrite = WRITE_OPS.has(r.op);
    const writesBefore = r.op === 'flush' ? [...this.inflightWrites] : undefined;
    const done = this.execute(r, writesBefore).then(
      (data) => sink(data ? { seq: r.seq, data } : { seq: r.seq }),
      (err: unknown) => sink({ seq: r.seq, error: asStorageError(err, `replica ${r.op}`) }),
    ).finally(() => {
      this.inflight.delete(done);
      if (isWrite) this.inflightWrites.delete(done);
    });
    this.inflight.add(done);
    if (isWrite) this.inflightWrites.add(done);
  }

  private async execute(r: IoRequest, writesBefore: Promise<void>[] | undefined): Promise<Buffer | undefined> {
    if (this.epochBarrier) await this.epochBarrier;
    const device = this.device ?? await this.openedDevice();
    switch (r.op) {
      case 'write':
        if (!r.parts) await device.write(r.offset, r.data!, r.fua === true);
        else if (device.writev) await device.writev(r.offset, r.parts, r.fua === true);
        else await device.write(r.offset, Buffer.concat(r.parts), r.fua === true);
        return undefined;
      case 'read':
        if (!r.targets) return device.read(r.offset, r.lengthBytes);
        if (device.readInto) await device.readInto(r.offset, r.targets);
        else scatter(await device.read(r.offset, r.lengthBytes), r.targets);
        return undefined;
      case 'flush':
        await Promise.allSettled(writesBefore!);
        await device.flush();
        return undefined;
      case 'trim':
        await device.trim(r.offset, r.lengthBytes);
        return undefined;
      default:
        await device.writeZeroes(r.offset, r.lengthBytes, r.mayTrim === true);
        return undefined;
    }
  }

  /** Requests of the new epoch wait for everything accepted under the older ones. */
  private installBarrier(): void {
    const barrier: Promise<unknown> = Promise.allSettled([...this.inflight, this.epochBarrier]).then(() => {
      if (this.epochBarrier === barrier) this.epochBarrier = undefined;
    });
    this.epochBarrier = barrier;
  }

  private goneError(): StorageError {
    return new StorageError(Code.NOT_FOUND, `replica ${this.id} of volume ${this.volumeId} was deleted or closed`, { details: { replica: this.id } });
  }
}

/** Copies `data` into `targets` back to back. */
export function scatter(data: Uint8Array, targets: readonly Uint8Array[]): void {
  let at = 0;
  for (const t of targets) {
    t.set(data.subarray(at, at + t.byteLength));
    at += t.byteLength;
  }
}
