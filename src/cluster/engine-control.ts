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
import { updateVolumeDoc, type ReplicaHealth, type VolumeDoc, type VolumeReplicaEntry } from './volume-doc.js';

const RETRYABLE = new Set([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.ABORTED]);

export class DocEngineControl implements EngineControl {
  private closed = false;
  private readonly wakers = new Set<() => void>();

  constructor(private readonly store: ClusterStore, private readonly name: string, private readonly epoch: number, private readonly log: Logger) {}

  markFaulted(ids: readonly ReplicaId[], reason: string, fullRebuild: readonly ReplicaId[] = []): Promise<void> {
    return this.change([...new Set([...ids, ...fullRebuild])], 'faulted', (entry, now) => {
      let changed = false;
      if (entry.state !== 'faulted') {
        entry.state = 'faulted';
        entry.since = now;
        entry.reason = reason;
        changed = true;
      }
      // Set on a replica already faulted too: its map is what could not be saved.
      if (fullRebuild.includes(entry.id) && !entry.fullRebuild) {
        entry.fullRebuild = true;
        changed = true;
      }
      return changed;
    });
  }

  markRebuilding(id: ReplicaId): Promise<void> {
    return this.change([id], 'rebuilding', (entry, now) => {
      if (entry.state !== 'faulted') return false;
      entry.state = 'rebuilding';
      entry.since = now;
      delete entry.reason;
      return true;
    });
  }

  /** Writes the entry without `reason` and `fullRebuild`: the replica holds every write again. */
  markInSync(id: ReplicaId): Promise<void> {
    return this.change([id], 'in-sync', (entry, now) => {
      if (entry.state === 'in-sync') return false;
      entry.state = 'in-sync';
      entry.since = now;
      delete entry.reason;
      delete entry.fullRebuild;
      return true;
    });
  }

  /** Stops retrying: pending changes reject with CANCELLED. */
  close(): void {
    this.closed = true;
    for (const wake of this.wakers) wake();
  }

  /** `apply` changes one entry of `ids` (in a fresh copy of the document); false when it had nothing to change. */
  private async change(ids: readonly ReplicaId[], to: ReplicaHealth, apply: (entry: VolumeReplicaEntry, now: string) => boolean): Promise<void> {
    const mutate = (doc: VolumeDoc): VolumeDoc | undefined => {
      if (doc.epoch !== this.epoch || doc.state !== 'ready') {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${this.name}" is now at epoch ${doc.epoch} (${doc.state}); this engine of epoch ${this.epoch} is fenced`,
          { details: { reason: STALE_EPOCH, volume: this.name, epoch: this.epoch, newestEpoch: doc.epoch } });
      }
      const now = new Date().toISOString();
      const hadInSync = doc.replicas.some((r) => r.state === 'in-sync');
      let changed = false;
      for (const entry of doc.replicas) if (ids.includes(entry.id) && apply(entry, now)) changed = true;
      // The engine faults a replica only while another one it writes to stays in sync. When the
      // document has none left, that other one was removed meanwhile (the replica count was
      // lowered): the writes waiting on this fault were accepted by no replica the document
      // keeps, so they must fail; the engine fences itself.
      if (changed && hadInSync && !doc.replicas.some((r) => r.state === 'in-sync')) {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${this.name}": marking ${ids.join(', ')} ${to} would leave no in-sync replica (the volume's replicas changed meanwhile); this engine stops acknowledging writes`,
          { details: { volume: this.name, epoch: this.epoch } });
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
