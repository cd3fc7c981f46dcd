/**
 * The engine's changes to its volume document, as compare-and-swap transactions guarded
 * by the engine's epoch (see EngineControl in engine/engine-types.ts).
 *
 * While the cluster store cannot be reached, a change is retried (with back-off, up to
 * 2 s apart) until it lands or the engine closes: the I/O that waits on it waits too,
 * because a write a replica missed must not be acknowledged before that replica left the
 * in-sync set (rule 1). A document whose epoch is no longer the engine's means a newer
 * engine took the volume over: FAILED_PRECONDITION, and the engine fences itself.
 */
import { Code, STALE_EPOCH, StorageError, isStorageError } from '../common/errors.js';
import type { ReplicaId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { EngineControl } from '../engine/engine-types.js';
import type { ClusterStore } from './store/cluster-store.js';
import { updateVolumeDoc, type ReplicaHealth, type VolumeDoc } from './volume-doc.js';

const RETRYABLE = new Set([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.ABORTED]);

export class DocEngineControl implements EngineControl {
  private closed = false;
  private readonly wakers = new Set<() => void>();

  constructor(private readonly store: ClusterStore, private readonly name: string, private readonly epoch: number, private readonly log: Logger) {}

  markFaulted(ids: readonly ReplicaId[], reason: string): Promise<void> {
    return this.change(ids, 'faulted', reason, (from) => from !== 'faulted');
  }

  markRebuilding(id: ReplicaId): Promise<void> {
    return this.change([id], 'rebuilding', undefined, (from) => from === 'faulted');
  }

  markInSync(id: ReplicaId): Promise<void> {
    return this.change([id], 'in-sync', undefined, (from) => from !== 'in-sync');
  }

  /** Stops retrying: pending changes reject with CANCELLED. */
  close(): void {
    this.closed = true;
    for (const wake of this.wakers) wake();
  }

  private async change(ids: readonly ReplicaId[], to: ReplicaHealth, reason: string | undefined, applies: (from: ReplicaHealth) => boolean): Promise<void> {
    const mutate = (doc: VolumeDoc): VolumeDoc | undefined => {
      if (doc.epoch !== this.epoch || doc.state !== 'ready') {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${this.name}" is now at epoch ${doc.epoch} (${doc.state}); this engine of epoch ${this.epoch} is fenced`,
          { details: { reason: STALE_EPOCH, volume: this.name, epoch: this.epoch, newestEpoch: doc.epoch } });
      }
      let changed = false;
      const now = new Date().toISOString();
      for (const entry of doc.replicas) {
        if (!ids.includes(entry.id) || !applies(entry.state)) continue;
        entry.state = to;
        entry.since = now;
        if (reason !== undefined) entry.reason = reason;
        else delete entry.reason;
        changed = true;
      }
      return changed ? doc : undefined;
    };
    for (let attempt = 1; ; attempt++) {
      if (this.closed) throw new StorageError(Code.CANCELLED, `the engine of volume "${this.name}" closed before its replica state change (${to}) was recorded`);
      try {
        await updateVolumeDoc(this.store, this.name, mutate);
        if (attempt > 1) this.log.info({ volume: this.name, replicas: ids, state: to, attempts: attempt }, 'replica state change recorded after retries');
        return;
      } catch (err) {
        if (!isStorageError(err) || !RETRYABLE.has(err.code)) throw err;
        if (attempt === 1 || attempt % 10 === 0) {
          this.log.warn({ volume: this.name, replicas: ids, state: to, attempt, err: err.message }, 'cannot record a replica state change in the cluster store; I/O that depends on it waits; retrying');
        }
        await this.sleep(Math.min(2000, 100 * 2 ** Math.min(attempt, 5)));
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }
}
