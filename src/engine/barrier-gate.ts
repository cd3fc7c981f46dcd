/**
 * The pause of the write barrier (write-barrier.ts), held by one group at a time: the gate of
 * the fan-out closes, the volume drains, and a lease runs. The gate opens when the group
 * resumes or when its lease expires, whichever comes first; a renewal (the group pausing
 * again) re-arms the lease. Whatever fails elsewhere, the lease timer opens the gate: writes
 * are never left paused.
 *
 * A group's pause ends once. Ended groups are remembered (a bounded number) so that resume
 * is idempotent (it answers the pause again), a late pause of a group already resumed is
 * refused, and a cut after the lease expired is refused ABORTED "lease expired".
 */
import { Code, StorageError } from '../common/errors.js';
import { barrierPauses } from './barrier-stats.js';
import type { EngineContext } from './engine-member.js';
import type { FanOut } from './fan-out.js';

/** How a group's pause ended. */
interface Ended {
  pauseUs: number;
  how: 'resumed' | 'lease expired';
}

interface Hold {
  readonly groupId: string;
  readonly startedAt: number;
  readonly reopen: () => void;
  timer: NodeJS.Timeout | undefined;
  /** Resolves with the drain's duration in ms once nothing mutating is in flight. */
  drained: Promise<number> | undefined;
}

/** How many ended groups are remembered per engine. */
const ENDED_KEPT = 256;

export class BarrierGate {
  private hold: Hold | undefined;
  private readonly ended = new Map<string, Ended>();

  constructor(private readonly ctx: EngineContext, private readonly fanOut: FanOut) {}

  /** The group holding the pause, if any. */
  get holder(): string | undefined {
    return this.hold?.groupId;
  }

  /** Why `groupId` may not pause now, if it may not (another group holds the pause, or it ended). */
  refusal(groupId: string): StorageError | undefined {
    const details = { volumeId: this.ctx.volumeId, group: groupId };
    if (this.hold && this.hold.groupId !== groupId) {
      return new StorageError(Code.ABORTED, `volume ${this.ctx.name} is paused for another snapshot: try again when it finished`, { details });
    }
    const ended = this.ended.get(groupId);
    if (ended) return new StorageError(Code.ABORTED, `the pause of group ${groupId} on volume ${this.ctx.name} already ended (${ended.how})`, { details });
    return undefined;
  }

  /**
   * Closes the gate for `groupId` (or renews its lease when it holds it already) and resolves
   * with the drain's duration once `drain` resolved. ABORTED when the pause ended meanwhile.
   */
  async pause(groupId: string, leaseMs: number, drain: () => Promise<void>): Promise<number> {
    const refused = this.refusal(groupId);
    if (refused) throw refused;
    let hold = this.hold;
    if (!hold) {
      let reopen = (): void => undefined;
      this.fanOut.closeGate(new Promise<void>((resolve) => (reopen = resolve)));
      hold = { groupId, startedAt: performance.now(), reopen, timer: undefined, drained: undefined };
      this.hold = hold;
      const since = performance.now();
      hold.drained = drain().then(() => Math.round((performance.now() - since) * 1000) / 1000);
      this.ctx.log.debug({ group: groupId, leaseMs }, 'barrier paused');
    }
    this.arm(hold, leaseMs);
    try {
      const drainMs = await hold.drained!;
      this.check(groupId);
      return drainMs;
    } catch (err) {
      this.end(groupId, 'resumed');
      throw err;
    }
  }

  /** Throws unless `groupId` holds the pause: ABORTED when its pause ended, FAILED_PRECONDITION when it never paused. */
  check(groupId: string): void {
    if (this.hold?.groupId === groupId) return;
    const details = { volumeId: this.ctx.volumeId, group: groupId };
    const ended = this.ended.get(groupId);
    if (ended?.how === 'lease expired') throw new StorageError(Code.ABORTED, `the pause of group ${groupId} on volume ${this.ctx.name} ended: lease expired`, { details });
    if (ended) throw new StorageError(Code.ABORTED, `the pause of group ${groupId} on volume ${this.ctx.name} ended: resumed`, { details });
    throw new StorageError(Code.FAILED_PRECONDITION, `volume ${this.ctx.name} is not paused by group ${groupId}`, { details });
  }

  /**
   * Opens the gate if `groupId` holds it and answers how long writes waited, in µs; a group
   * whose pause ended answers the same again, and a group that never paused here answers 0
   * (and may not pause afterwards).
   */
  resume(groupId: string): number {
    return this.end(groupId, 'resumed');
  }

  private arm(hold: Hold, leaseMs: number): void {
    clearTimeout(hold.timer);
    hold.timer = setTimeout(() => {
      if (this.hold !== hold) return;
      const pauseUs = this.end(hold.groupId, 'lease expired');
      this.ctx.log.warn({ group: hold.groupId, leaseMs, pauseMs: pauseUs / 1000 }, 'barrier lease expired; writes resumed');
    }, leaseMs);
  }

  private end(groupId: string, how: Ended['how']): number {
    const hold = this.hold;
    if (hold?.groupId !== groupId) {
      const ended = this.ended.get(groupId);
      if (ended) return ended.pauseUs;
      this.remember(groupId, { pauseUs: 0, how });
      return 0;
    }
    clearTimeout(hold.timer);
    this.hold = undefined;
    this.fanOut.openGate();
    hold.reopen();
    const pauseUs = Math.round((performance.now() - hold.startedAt) * 1000);
    barrierPauses.observe(pauseUs / 1e6);
    this.remember(groupId, { pauseUs, how });
    return pauseUs;
  }

  private remember(groupId: string, ended: Ended): void {
    this.ended.set(groupId, ended);
    if (this.ended.size > ENDED_KEPT) this.ended.delete(this.ended.keys().next().value!);
  }
}

/** Throws INVALID_ARGUMENT unless `ms` is a positive whole number (a deadline or a lease). */
export function positiveMs(ms: number, what: string): void {
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new StorageError(Code.INVALID_ARGUMENT, `${what} must be a positive whole number of milliseconds, got ${ms}`);
}
