/**
 * Keeps one lease alive: renews it every `renewEveryMs` (a third of the TTL by default)
 * and says, conservatively, whether it is still alive. The lease counts as alive until
 * the send time of the last successful renewal plus the TTL: the backend starts its TTL
 * after that moment, so when `isAlive()` turns false the backend may still hold the lease
 * for a little while, but never the other way round. Loss is final: the owner grants a
 * new lease (a new LeaseKeeper) to come back.
 */
import { performance } from 'node:perf_hooks';
import { Code, isStorageError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { CallOptions, ClusterStore, Lease } from './cluster-store.js';

export type LeaseLossReason = 'expired' | 'unrenewable' | 'closed';

export interface LeaseKeeperOptions {
  ttlMs: number;
  /** Default: a third of the granted TTL. */
  renewEveryMs?: number;
  log: Logger;
}

export class LeaseKeeper {
  private validUntil: number;
  private timer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private lostReason: LeaseLossReason | undefined;
  private readonly listeners: ((reason: LeaseLossReason) => void)[] = [];
  private readonly renewEveryMs: number;

  private constructor(
    private readonly store: ClusterStore,
    readonly lease: Lease,
    grantedAt: number,
    options: LeaseKeeperOptions,
    private readonly log: Logger,
  ) {
    this.renewEveryMs = options.renewEveryMs ?? Math.max(1, Math.floor(lease.ttlMs / 3));
    this.validUntil = grantedAt + lease.ttlMs;
    this.armExpiry();
    this.schedule(this.renewEveryMs);
  }

  /** Grants a lease and starts renewing it. Throws what `grantLease` throws. */
  static async grant(store: ClusterStore, options: LeaseKeeperOptions, call?: CallOptions): Promise<LeaseKeeper> {
    const sentAt = performance.now();
    const lease = await store.grantLease(options.ttlMs, call);
    const log = options.log.child({ lease: lease.id });
    log.debug({ ttlMs: lease.ttlMs }, 'lease granted');
    return new LeaseKeeper(store, lease, sentAt, options, log);
  }

  isAlive(): boolean {
    return this.lostReason === undefined && performance.now() < this.validUntil;
  }

  /** Called once, when the lease is lost (not after `close`). Fires at once if already lost. */
  onLost(listener: (reason: LeaseLossReason) => void): void {
    if (this.lostReason !== undefined && this.lostReason !== 'closed') listener(this.lostReason);
    else this.listeners.push(listener);
  }

  /** Stops renewing; with `revoke`, ends the lease now (its keys vanish). Never throws. */
  async close(options: { revoke: boolean }): Promise<void> {
    const before = this.lostReason;
    this.stop('closed');
    // A lease the backend reported gone, or one already closed, has nothing to revoke.
    if (!options.revoke || before === 'expired' || before === 'closed') return;
    try {
      await this.store.revokeLease(this.lease.id);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'lease revoke failed; it will expire');
    }
  }

  private stop(reason: LeaseLossReason): boolean {
    if (this.lostReason !== undefined) return false;
    this.lostReason = reason;
    clearTimeout(this.timer);
    clearTimeout(this.expiryTimer);
    return true;
  }

  private lose(reason: LeaseLossReason): void {
    if (!this.stop(reason)) return;
    this.log.warn({ reason }, 'lease lost');
    for (const l of this.listeners.splice(0)) l(reason);
  }

  private armExpiry(): void {
    clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => this.lose('unrenewable'), Math.max(0, this.validUntil - performance.now()));
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => void this.renew(), delayMs);
  }

  private async renew(): Promise<void> {
    if (this.lostReason !== undefined) return;
    const sentAt = performance.now();
    const remainingMs = Math.max(1, Math.floor(this.validUntil - sentAt));
    try {
      const ttlMs = await this.store.keepAliveLease(this.lease.id, { timeoutMs: Math.min(remainingMs, this.renewEveryMs * 2) });
      if (this.lostReason !== undefined) return;
      this.validUntil = sentAt + ttlMs;
      this.armExpiry();
      this.schedule(this.renewEveryMs);
    } catch (err) {
      if (this.lostReason !== undefined) return;
      if (isStorageError(err, Code.NOT_FOUND)) {
        this.lose('expired');
        return;
      }
      this.log.warn({ err: (err as Error).message }, 'lease renewal failed; retrying');
      this.schedule(Math.max(1, Math.floor(this.renewEveryMs / 3)));
    }
  }
}
