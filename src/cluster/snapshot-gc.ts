/**
 * Collects orphan snapshot copies on this node: copies whose snapshot no document records
 * any more (a crash between a copy and its document's deletion, or a deletion while this
 * node was away and its copy was dropped from the document), or whose `ready` or `deleting`
 * document no longer lists this node. A copy of a `creating` snapshot is never touched.
 *
 * It keeps the replica collector's safety margin (replica-gc.ts): a copy is deleted only when
 * every pass over at least `graceMs` found it unlisted, it was made longer than `graceMs` ago,
 * and a fresh read of the documents right before the deletion still does not list it. A pass
 * that cannot read the store, or meets a snapshot document it cannot parse, deletes nothing.
 */
import type { NodeId, SnapshotId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ReplicaControl } from '../engine/engine-types.js';
import { listSnapshotDocs } from './snapshot-doc.js';
import type { ClusterStore } from './store/cluster-store.js';

export interface SnapshotCopyCollectorOptions {
  nodeId: NodeId;
  store: ClusterStore;
  /** This node's replica service (the local control). */
  control: Pick<ReplicaControl, 'listSnapshotCopies' | 'deleteSnapshotCopy'>;
  /** How long a copy must be seen unlisted (and exist) before it is deleted. */
  graceMs: number;
  log: Logger;
}

export class SnapshotCopyCollector {
  private readonly unlistedSince = new Map<SnapshotId, number>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private closed = false;
  private held = false;
  private readonly log: Logger;

  constructor(private readonly opts: SnapshotCopyCollectorOptions) {
    this.log = opts.log.child({ component: 'snapshot-gc' });
  }

  start(): void {
    const intervalMs = Math.min(60_000, Math.max(500, Math.floor(this.opts.graceMs / 4)));
    const tick = (): void => {
      if (this.closed) return;
      this.running = this.pass().catch((err: unknown) => this.log.debug({ err: (err as Error).message }, 'orphan snapshot copy pass skipped'))
        .finally(() => {
          this.running = undefined;
          if (!this.closed) this.timer = setTimeout(tick, intervalMs);
        });
    };
    this.timer = setTimeout(tick, intervalMs);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One pass; returns the snapshot ids whose copies here were deleted. */
  async pass(now = Date.now()): Promise<SnapshotId[]> {
    const held = await this.opts.control.listSnapshotCopies();
    const listed = await this.listed();
    if (!listed) return [];
    const due: SnapshotId[] = [];
    for (const c of held) {
      if (listed.has(c.snapshotId)) {
        this.unlistedSince.delete(c.snapshotId);
        continue;
      }
      const since = this.unlistedSince.get(c.snapshotId) ?? now;
      this.unlistedSince.set(c.snapshotId, since);
      if (now - since >= this.opts.graceMs && now - Date.parse(c.createdAt) >= this.opts.graceMs) due.push(c.snapshotId);
    }
    const present = new Set(held.map((c) => c.snapshotId));
    for (const id of this.unlistedSince.keys()) if (!present.has(id)) this.unlistedSince.delete(id);
    if (due.length === 0) return [];
    const again = await this.listed();
    const deleted: SnapshotId[] = [];
    for (const id of due) {
      if (this.closed || !again || again.has(id)) continue;
      await this.opts.control.deleteSnapshotCopy(id);
      this.unlistedSince.delete(id);
      deleted.push(id);
      this.log.warn({ snapshotId: id, graceMs: this.opts.graceMs, why: 'no snapshot document lists a copy on this node' }, 'orphan snapshot copy deleted');
    }
    return deleted;
  }

  /** The snapshots whose copy here a document may want; undefined (a hold) when a document cannot be parsed. */
  private async listed(): Promise<Set<SnapshotId> | undefined> {
    const { docs, unreadable } = await listSnapshotDocs(this.opts.store);
    if (unreadable.length > 0) {
      this.unlistedSince.clear();
      if (!this.held) this.log.error({ keys: unreadable.map((e) => String(e.details.key)) }, 'orphan snapshot copy collection held: snapshot documents this node cannot read; nothing is deleted');
      this.held = true;
      return undefined;
    }
    this.held = false;
    return new Set(docs.filter(({ doc }) => doc.state === 'creating' || doc.copies.some((c) => c.nodeId === this.opts.nodeId)).map(({ doc }) => doc.id));
  }
}
