/**
 * Collects orphan replicas on this node: replicas it hosts that no volume document lists,
 * because their volume was deleted or they were replaced while this node was away (the
 * repair loop deletes a replaced replica only if its node answers at the time).
 *
 * Deleting data is the one thing that must never be wrong, so a replica is deleted only
 * when every pass over at least `graceMs` found it unlisted, it was created longer than
 * `graceMs` ago (a replica the repair loop just created is listed a moment later), no
 * request reached it for `graceMs` (a snapshot pull's temporary replicas are listed by no
 * document but in use for as long as the pull runs), and a fresh read of the documents
 * right before the deletion still does not list it. A pass
 * that cannot read the cluster store deletes nothing. Nor does a pass that meets a volume
 * document it cannot parse (malformed, or from a newer release): that volume's replicas
 * are unknown, so every replica here might be one of them. Such a hold is logged once when
 * it starts and once when it ends, and the grace period starts again after it.
 */
import type { ReplicaId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ReplicaManager } from '../replica/replica-manager.js';
import type { ClusterStore } from './store/cluster-store.js';
import { listVolumeDocs } from './volume-doc.js';

export interface ReplicaCollectorOptions {
  store: ClusterStore;
  manager: ReplicaManager;
  /** How long a replica must be seen unlisted (and exist) before it is deleted. */
  graceMs: number;
  log: Logger;
}

export class ReplicaCollector {
  /** When each unlisted replica was first seen so. */
  private readonly unlistedSince = new Map<ReplicaId, number>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  /** The unreadable documents' keys while a hold lasts, to log a change of condition only. */
  private heldBy: string | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: ReplicaCollectorOptions) {
    this.log = opts.log.child({ component: 'replica-gc' });
  }

  start(): void {
    const intervalMs = Math.min(60_000, Math.max(500, Math.floor(this.opts.graceMs / 4)));
    const tick = (): void => {
      if (this.closed) return;
      this.running = this.pass().then(() => undefined, (err: unknown) => this.log.debug({ err: (err as Error).message }, 'orphan replica pass skipped'))
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

  /** One pass; returns the ids deleted. */
  async pass(now = Date.now()): Promise<ReplicaId[]> {
    const hosted = await this.opts.manager.list();
    const listed = await this.listed();
    if (!listed) return [];
    const due: typeof hosted = [];
    for (const r of hosted) {
      if (listed.has(r.replicaId) || (await this.inUse(r.replicaId, now))) {
        this.unlistedSince.delete(r.replicaId);
        continue;
      }
      const since = this.unlistedSince.get(r.replicaId) ?? now;
      this.unlistedSince.set(r.replicaId, since);
      if (now - since >= this.opts.graceMs && now - Date.parse(r.createdAt) >= this.opts.graceMs) due.push(r);
    }
    const present = new Set(hosted.map((r) => r.replicaId));
    for (const id of this.unlistedSince.keys()) if (!present.has(id)) this.unlistedSince.delete(id);
    if (due.length === 0) return [];
    const again = await this.listed();
    const deleted: ReplicaId[] = [];
    for (const r of due) {
      if (this.closed || !again || again.has(r.replicaId) || (await this.inUse(r.replicaId, now))) continue;
      await this.opts.manager.delete({ replicaId: r.replicaId, volumeId: r.volumeId }, r.epoch);
      this.unlistedSince.delete(r.replicaId);
      deleted.push(r.replicaId);
      this.log.warn({ replica: r.replicaId, volumeId: r.volumeId, sizeBytes: r.sizeBytes, allocatedBytes: r.allocatedBytes, graceMs: this.opts.graceMs, why: 'no volume document lists it' },
        'orphan replica deleted');
    }
    return deleted;
  }

  /** Whether the replica admitted a request within the grace period (a snapshot pull's temporary replicas: no document lists them). */
  private async inUse(id: ReplicaId, now: number): Promise<boolean> {
    const at = await this.opts.manager.lastUsedAt(id);
    return at > 0 && now - at < this.opts.graceMs;
  }

  /** The replicas every volume document lists; undefined (a hold) when some document cannot be parsed. */
  private async listed(): Promise<Set<ReplicaId> | undefined> {
    const { docs, unreadable } = await listVolumeDocs(this.opts.store);
    if (unreadable.length > 0) {
      this.unlistedSince.clear();
      const keys = unreadable.map((err) => String(err.details.key)).sort();
      if (this.heldBy !== keys.join('\n')) {
        this.heldBy = keys.join('\n');
        this.log.error({ keys, errs: unreadable.map((err) => err.message) },
          'orphan collection held: volume documents this node cannot read may list replicas here; nothing is deleted until they can be read');
      }
      return undefined;
    }
    if (this.heldBy !== undefined) {
      this.heldBy = undefined;
      this.log.info('orphan collection resumed: every volume document can be read again');
    }
    return new Set(docs.flatMap((d) => d.doc.replicas.map((r) => r.id)));
  }
}
