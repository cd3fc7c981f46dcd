/**
 * Leader election on the cluster store. Candidates race to create `leaders/<role>` (guard:
 * absent) attached to their own lease; the one that succeeds leads until its lease ends
 * or it resigns, which deletes the key and lets the others race again. The others watch
 * the key rather than poll.
 *
 * At most one leader at a time: the key exists once, and a leader stops calling itself
 * leader as soon as its lease is no longer surely alive (see LeaseKeeper), which is no
 * later than the store drops the key. A leader's writes can be fenced with `guard()`: a
 * guard on the leader key's revision fails once leadership has moved on.
 */
import { Code, isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { ClusterStore, Guard, KeyValue, Watch } from './store/cluster-store.js';
import { guardFor } from './store/cluster-store.js';
import { keys } from './store/keys.js';
import { LeaseKeeper } from './store/lease-keeper.js';

export interface LeaderElectionOptions {
  /** What is led, e.g. "repair": the key is leaders/<role>. */
  role: string;
  /** This candidate's id, unique in the cluster (the node id). */
  candidateId: string;
  /** Lease TTL; default 10000 ms. A crashed leader is replaced after about this long. */
  ttlMs?: number;
  /** Delay before trying again after the store was unavailable; default 1000 ms. */
  retryMs?: number;
  log: Logger;
}

export interface LeadershipState {
  /** The current leader's candidate id, as last seen; undefined when there is none. */
  leader: string | undefined;
  isLeader: boolean;
}

const leaderOf = (kv: KeyValue | undefined): string | undefined => {
  const v = kv?.value;
  return typeof v === 'object' && v !== null && !Array.isArray(v) && typeof v.candidate === 'string' ? v.candidate : undefined;
};

export class LeaderElection {
  private readonly key: string;
  private readonly log: Logger;
  private keeper: LeaseKeeper | undefined;
  private watch: Watch | undefined;
  /** Our leader key's mod revision while we lead. */
  private heldRevision: number | undefined;
  private observed: string | undefined;
  private wake: (() => void) | undefined;
  private woken = false;
  private closed = false;
  private loop: Promise<void> | undefined;
  private readonly listeners = new Set<(state: LeadershipState) => void>();
  private lastEmitted = '';

  constructor(private readonly store: ClusterStore, private readonly options: LeaderElectionOptions) {
    this.key = keys.leader(options.role);
    this.log = options.log.child({ role: options.role, candidate: options.candidateId });
  }

  /** Starts campaigning in the background; changes arrive through `onChange`. */
  start(): void {
    this.loop ??= this.campaign();
  }

  /** True only while this candidate holds the key under a lease that is surely alive. */
  isLeader(): boolean {
    return this.heldRevision !== undefined && (this.keeper?.isAlive() ?? false);
  }

  state(): LeadershipState {
    return { leader: this.observed, isLeader: this.isLeader() };
  }

  /** A guard that holds only while this candidate's leadership lasts; undefined when not leader. */
  guard(): Guard | undefined {
    return this.isLeader() ? { key: this.key, modRevision: this.heldRevision! } : undefined;
  }

  /** Called on every change of leader or of this candidate's leadership. Returns an unsubscribe. */
  onChange(listener: (state: LeadershipState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(): void {
    const state = this.state();
    const text = `${state.leader ?? ''}|${state.isLeader}`;
    if (text === this.lastEmitted) return;
    this.lastEmitted = text;
    this.log.info({ leader: state.leader ?? null, isLeader: state.isLeader }, 'leadership changed');
    for (const l of this.listeners) l(state);
  }

  private poke(): void {
    this.woken = true;
    this.wake?.();
  }

  private async sleepUntilWoken(timeoutMs?: number): Promise<void> {
    if (this.woken || this.closed) return;
    await new Promise<void>((resolve) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(resolve, timeoutMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = undefined;
  }

  private async campaign(): Promise<void> {
    while (!this.closed) {
      this.woken = false;
      try {
        await this.step();
        await this.sleepUntilWoken();
      } catch (err) {
        if (this.closed) break;
        if (isStorageError(err, Code.NOT_FOUND)) {
          // Our lease ended before the keeper noticed (e.g. revoked): take a new one now.
          await this.keeper?.close({ revoke: false });
          continue;
        }
        if (!isStorageError(err, Code.UNAVAILABLE)) this.log.error({ err }, 'leader election step failed');
        await this.sleepUntilWoken(this.options.retryMs ?? 1000);
      }
    }
  }

  /** One look at the key: take it when free (or ours from before), else follow its holder. */
  private async step(): Promise<void> {
    await this.ensureWatch();
    if (!this.keeper || !this.keeper.isAlive()) await this.renewKeeper();
    const keeper = this.keeper!;
    const current = await this.store.get(this.key);
    const holder = leaderOf(current);
    if (current && current.leaseId === keeper.lease.id) {
      this.heldRevision = current.modRevision;
      this.observed = this.options.candidateId;
    } else if (current && holder !== this.options.candidateId) {
      this.heldRevision = undefined;
      this.observed = holder;
    } else {
      // Free, or left by an earlier incarnation of this candidate: take it.
      const r = await this.store.txn({
        guards: [guardFor(this.key, current)],
        ops: [{ type: 'put', key: this.key, value: { candidate: this.options.candidateId, since: new Date().toISOString() }, leaseId: keeper.lease.id }],
      });
      this.heldRevision = r.succeeded ? r.revision : undefined;
      this.observed = r.succeeded ? this.options.candidateId : leaderOf(r.current.get(this.key));
      if (!r.succeeded) this.poke(); // lost a race: look again at once
    }
    this.emit();
  }

  private async renewKeeper(): Promise<void> {
    this.heldRevision = undefined;
    this.emit();
    await this.keeper?.close({ revoke: true });
    const keeper = await LeaseKeeper.grant(this.store, { ttlMs: this.options.ttlMs ?? 10_000, log: this.log });
    if (this.closed) {
      await keeper.close({ revoke: true });
      return;
    }
    this.keeper = keeper;
    keeper.onLost(() => {
      if (keeper !== this.keeper) return;
      this.heldRevision = undefined;
      this.emit();
      this.poke();
    });
  }

  /** One watch on the leader key for the election's life; set up again when it ends. */
  private async ensureWatch(): Promise<void> {
    if (this.watch) return;
    this.watch = await this.store.watch(this.key, {
      onEvents: (events) => {
        const event = events.findLast((e) => e.key === this.key); // the newest; not another role sharing the prefix
        if (!event || (event.type === 'put' && event.modRevision === this.heldRevision)) return;
        if (this.heldRevision !== undefined && event.modRevision > this.heldRevision) {
          this.heldRevision = undefined; // our key was deleted or replaced: stop leading now
          this.emit();
        }
        this.poke();
      },
      // History compacted while the watch was away: the key as it is now decides.
      onResync: (snapshot) => {
        const kv = snapshot.items.find((item) => item.key === this.key);
        if (this.heldRevision !== undefined && kv?.modRevision !== this.heldRevision) {
          this.heldRevision = undefined;
          this.emit();
        }
        this.poke();
      },
      onError: () => {
        this.watch = undefined;
        this.poke();
      },
    });
  }

  /** Stops campaigning; a leader resigns (deletes its key, revokes its lease) first. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.poke();
    await this.loop?.catch(() => undefined);
    const held = this.heldRevision;
    this.heldRevision = undefined;
    if (held !== undefined) {
      try {
        await this.store.txn({ guards: [{ key: this.key, modRevision: held }], ops: [{ type: 'delete', key: this.key }] });
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'resign failed; the lease will expire');
      }
    }
    await this.watch?.close();
    await this.keeper?.close({ revoke: true });
    if (held !== undefined) this.emit();
  }
}
