/**
 * Snapshot repair, run by the repair leader each pass (repair-loop.ts; docs/snapshots.md,
 * "Copies and repair"): every `ready` snapshot whose copies on nodes that are up number
 * fewer than `copiesWanted` gets one more, streamed from a copy that is up.
 *
 * - The target is a node that is up, holds no copy (listed, up or down) and has the
 *   snapshot's size free; nodes holding a replica of the source volume (when it still exists)
 *   come first, then the most free bytes. The source is a copy on a node that is up.
 * - The target pulls (PullSnapshotCopy, cluster/snapshot-pull.ts); then the copy is added to
 *   the document by compare-and-swap, guarded by the leadership. A snapshot deleted meanwhile
 *   gets its new copy deleted at once; a copy the document did not take is left to that
 *   node's collector.
 * - One pull per snapshot at a time, in the background (a pass does not wait for it). A failed
 *   pull is retried after a backoff that doubles from `retryMs` up to 5 minutes.
 * - A copy on a node down for `dropAfterMs` or longer (the repair loop's replace wait) is
 *   dropped from the document once the copies on nodes that are up reach `copiesWanted`, as a
 *   replica of a down node is replaced only when its replacement exists. Its device is
 *   deleted by that node's snapshot collector if the node comes back.
 *
 * Internal (clone) snapshots are not repaired: they live for one clone.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { NodeId, SnapshotId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ReplicaControl } from '../engine/engine-types.js';
import { canPull } from '../replica/snapshot-pull.js';
import type { NodeStatus } from './node-registry.js';
import { listSnapshotDocs, updateSnapshotDoc } from './snapshot-doc.js';
import type { SnapshotDoc } from './snapshot-types.js';
import type { ClusterStore, Guard } from './store/cluster-store.js';
import type { VolumeDoc } from './volume-doc.js';

const MAX_BACKOFF_MS = 5 * 60_000;

export interface SnapshotRepairOptions {
  store: ClusterStore;
  controls: { control(nodeId: NodeId): Promise<ReplicaControl> };
  log: Logger;
  /** How long a copy's node must be down before the copy is dropped (the repair loop's repairWaitMs). */
  dropAfterMs: number;
  /** The first retry delay after a failed pull; 5000 ms by default. */
  retryMs?: number;
  /** Extra guards of every document change (the repair leader's key). */
  guards?: () => readonly Guard[];
}

export interface PullPlan {
  source: NodeId;
  target: NodeId;
}

/**
 * Where the next copy of `doc` comes from and goes to, or undefined when it has its copies,
 * has no copy up to stream from, or no node qualifies. Pure: the pass and the tests use it.
 */
export function planPull(doc: SnapshotDoc, nodes: readonly NodeStatus[], volume: VolumeDoc | undefined): PullPlan | undefined {
  const up = new Set(nodes.filter((n) => n.up).map((n) => n.nodeId));
  const live = doc.copies.filter((c) => up.has(c.nodeId));
  if (live.length === 0 || live.length >= doc.copiesWanted) return undefined;
  const holders = new Set(doc.copies.map((c) => c.nodeId));
  const preferred = new Set(volume?.id === doc.sourceVolumeId ? volume.replicas.map((r) => r.nodeId) : []);
  const target = nodes
    .filter((n) => n.up && !holders.has(n.nodeId) && n.capacity.freeBytes >= doc.sizeBytes)
    .sort((a, b) => Number(preferred.has(b.nodeId)) - Number(preferred.has(a.nodeId)) || b.capacity.freeBytes - a.capacity.freeBytes || (a.nodeId < b.nodeId ? -1 : 1))[0];
  return target && { source: live[0]!.nodeId, target: target.nodeId };
}

/** The copies to drop from `doc`: on nodes down for `dropAfterMs` or longer, once those up reach `copiesWanted`. */
export function overdueCopies(doc: SnapshotDoc, nodes: readonly NodeStatus[], dropAfterMs: number, now: number): NodeId[] {
  const byId = new Map(nodes.map((n) => [n.nodeId, n]));
  const live = doc.copies.filter((c) => byId.get(c.nodeId)?.up === true).length;
  if (live < doc.copiesWanted) return [];
  return doc.copies.filter((c) => {
    const n = byId.get(c.nodeId);
    // A node no longer registered (forgotten) has been gone for good.
    return !n || (!n.up && now - Date.parse(n.heartbeatAt) >= dropAfterMs);
  }).map((c) => c.nodeId);
}

interface Backoff {
  failures: number;
  nextAt: number;
}

export class SnapshotRepair {
  private readonly pulling = new Map<SnapshotId, Promise<void>>();
  private readonly backoff = new Map<SnapshotId, Backoff>();
  /** Snapshots whose last pass found no node to copy to, so the line is not repeated. */
  private readonly stuck = new Set<SnapshotId>();
  private readonly log: Logger;

  constructor(private readonly opts: SnapshotRepairOptions) {
    this.log = opts.log.child({ component: 'snapshot-repair' });
  }

  /** One pass over the snapshot documents (volumes: the volume documents of this pass). */
  async pass(nodes: readonly NodeStatus[], volumes: readonly VolumeDoc[], now = Date.now()): Promise<void> {
    const { docs } = await listSnapshotDocs(this.opts.store);
    const byId = new Map(volumes.map((v) => [v.id, v]));
    for (const { doc } of docs) {
      if (doc.state !== 'ready' || doc.internal) continue;
      try {
        await this.dropOverdue(doc, nodes, now);
        this.startPull(doc, nodes, byId.get(doc.sourceVolumeId), now);
      } catch (err) {
        this.log.warn({ snapshot: doc.name, err: (err as Error).message }, 'snapshot repair failed; retrying next pass');
      }
    }
  }

  /** Resolves once the pulls running now have ended (tests, shutdown). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.pulling.values()]);
  }

  private async dropOverdue(doc: SnapshotDoc, nodes: readonly NodeStatus[], now: number): Promise<void> {
    const drop = new Set(overdueCopies(doc, nodes, this.opts.dropAfterMs, now));
    if (drop.size === 0) return;
    await updateSnapshotDoc(this.opts.store, doc.name, (d) => {
      if (d.id !== doc.id || d.state !== 'ready') return undefined;
      const copies = d.copies.filter((c) => !drop.has(c.nodeId));
      return copies.length === d.copies.length || copies.length === 0 ? undefined : { ...d, copies };
    }, this.opts.guards);
    this.log.info({ snapshot: doc.name, snapshotId: doc.id, nodes: [...drop], dropAfterMs: this.opts.dropAfterMs },
      'snapshot copies on nodes down too long dropped; each node deletes its copy if it comes back');
  }

  private startPull(doc: SnapshotDoc, nodes: readonly NodeStatus[], volume: VolumeDoc | undefined, now: number): void {
    if (this.pulling.has(doc.id)) return;
    const wait = this.backoff.get(doc.id);
    if (wait && now < wait.nextAt) return;
    const plan = planPull(doc, nodes, volume);
    const up = new Set(nodes.filter((n) => n.up).map((n) => n.nodeId));
    const live = doc.copies.filter((c) => up.has(c.nodeId)).length;
    if (!plan) {
      if (live > 0 && live < doc.copiesWanted && !this.stuck.has(doc.id)) {
        this.log.warn({ snapshot: doc.name, snapshotId: doc.id, copies: live, copiesWanted: doc.copiesWanted, sizeBytes: doc.sizeBytes },
          'snapshot has fewer copies than wanted and no node that is up, holds none and has room; waiting for one');
        this.stuck.add(doc.id);
      }
      if (live >= doc.copiesWanted) this.backoff.delete(doc.id);
      return;
    }
    this.stuck.delete(doc.id);
    const run = this.pull(doc, plan).then(() => {
      this.backoff.delete(doc.id);
    }, (err: unknown) => {
      const failures = (this.backoff.get(doc.id)?.failures ?? 0) + 1;
      const delayMs = Math.min(MAX_BACKOFF_MS, (this.opts.retryMs ?? 5000) * 2 ** (failures - 1));
      this.backoff.set(doc.id, { failures, nextAt: Date.now() + delayMs });
      this.log.warn({ snapshot: doc.name, snapshotId: doc.id, sourceNode: plan.source, targetNode: plan.target, failures, retryInMs: delayMs, err: (err as Error).message },
        'snapshot copy not restored; retrying later');
    }).finally(() => this.pulling.delete(doc.id));
    this.pulling.set(doc.id, run);
  }

  private async pull(doc: SnapshotDoc, plan: PullPlan): Promise<void> {
    const control = await this.opts.controls.control(plan.target);
    if (!canPull(control)) {
      throw new StorageError(Code.UNIMPLEMENTED, `node ${plan.target} cannot be asked to pull a snapshot copy from here`, { details: { node: plan.target } });
    }
    this.log.info({ snapshot: doc.name, snapshotId: doc.id, sourceNode: plan.source, targetNode: plan.target, copiesWanted: doc.copiesWanted },
      'streaming a snapshot copy to restore the copy count');
    const copy = await control.pullSnapshotCopy({ snapshotId: doc.id, volumeId: doc.sourceVolumeId, sizeBytes: doc.sizeBytes, sourceNodeId: plan.source });
    let recorded = false;
    try {
      await updateSnapshotDoc(this.opts.store, doc.name, (d) => {
        if (d.id !== doc.id || d.state !== 'ready') return undefined;
        if (d.copies.some((c) => c.nodeId === plan.target)) {
          recorded = true;
          return undefined;
        }
        recorded = true;
        return { ...d, copies: [...d.copies, { nodeId: plan.target, replicaId: copy.replicaId }] };
      }, this.opts.guards);
    } catch (err) {
      if (!isStorageError(err, Code.NOT_FOUND)) throw err;
    }
    if (!recorded) {
      // Deleted (or being deleted) meanwhile: the new copy has no snapshot to belong to.
      await control.deleteSnapshotCopy(doc.id).catch((err: unknown) =>
        this.log.info({ snapshot: doc.name, targetNode: plan.target, err: (err as Error).message }, 'copy of a deleted snapshot not deleted now; its node\'s collector deletes it'));
      return;
    }
    this.log.info({ snapshot: doc.name, snapshotId: doc.id, sourceNode: plan.source, targetNode: plan.target }, 'snapshot copy restored');
  }
}
