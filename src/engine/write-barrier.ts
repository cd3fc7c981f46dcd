/**
 * The write barrier (DESIGN.md, rule 5; docs/snapshots.md): a crash-consistent snapshot of
 * the volume on every in-sync replica under one snapshot id.
 *
 * 1. The gate closes (fan-out.ts): new writes, trims and write-zeroes wait; reads and
 *    flushes go on.
 * 2. Drain: every mutating request already in flight settles, including its wait for a
 *    fault commit (the fan-out releases region locks before that wait, so the locks do not
 *    tell), and no member has a fault pending: the in-sync set the copies are taken from is
 *    the one the cluster store holds.
 * 3. The cut: `snapshotReplica` with `cutOnly` on every in-sync member at once (local or
 *    remote control). Each replica lets its own writes in flight settle, flushes its device
 *    where its pool needs that (dm), and answers once its copy's content is fixed. A
 *    write-only (rebuilding) or faulted replica gets no copy.
 * 4. The gate opens. The pause is from 1 to 4.
 * 5. Copies answered `filling` (a file pool fills them while writes go on, holding back only
 *    writes to chunks not copied yet: file-cut-copy.ts) are waited for. The snapshot is taken
 *    when every copy is whole; each pool makes its copy durable (the file pool syncs it; dm
 *    flushed before create_snap), so no flush of the volume is needed under the gate.
 *
 * All copies or none: a failure anywhere (a copy, fencing, closing, no in-sync replica)
 * opens the gate, deletes the copies taken (best effort, logged) and throws. A timer opens
 * the gate at the deadline whatever still runs: the call fails DEADLINE_EXCEEDED, and copies
 * that finish later are deleted once they do. The deadline covers the fill too. One barrier runs at a time per engine: a
 * second is refused ABORTED (the caller retries), as is one whose snapshot id still has
 * copies of a failed attempt being deleted (they would delete the new copies).
 */
import { Code, StorageError, isStaleEpoch, isStorageError } from '../common/errors.js';
import type { SnapshotId } from '../common/ids.js';
import { barrierPauses } from './barrier-stats.js';
import type { ReplicaConnector, SnapshotCopyStatus, VolumeSnapshotResult } from './engine-types.js';
import { type EngineContext, type EngineLife, type Member, newestEpochOf, noInSyncError } from './engine-member.js';
import type { FanOut } from './fan-out.js';
import type { MemberSet } from './member-set.js';

export interface WriteBarrierDeps {
  ctx: EngineContext;
  life: EngineLife;
  members: MemberSet;
  fanOut: FanOut;
  connector: ReplicaConnector;
  /** Whether a reconcile runs (its copying makes the in-sync replicas differ until it ends). */
  reconciling: () => boolean;
}

/** One barrier's state, shared by the call and its work (which may outlive the call). */
interface Attempt {
  readonly snapshotId: SnapshotId;
  /** Set when the call gave up (deadline): the work starts nothing more. */
  expired: boolean;
  /** Members asked for a copy: whatever they answered, they may hold one. */
  readonly asked: Member[];
  readonly startedAt: number;
  drainMs: number;
  /** Until every member's copy was cut (its content fixed). */
  cutMs: number;
  /** After the gate opened, until every copy was whole. */
  fillMs: number;
}

const elapsedMs = (since: number): number => Math.round((performance.now() - since) * 1000) / 1000;

export class WriteBarrier {
  private running = false;
  /** Snapshot ids whose copies of a failed attempt are still being deleted. */
  private readonly cleaning = new Set<SnapshotId>();
  /** Deletions of late copies, running after their barrier failed. */
  private readonly cleanups = new Set<Promise<void>>();

  constructor(private readonly deps: WriteBarrierDeps) {}

  async snapshot(snapshotId: SnapshotId, deadlineMs: number): Promise<VolumeSnapshotResult> {
    const { ctx, life, fanOut } = this.deps;
    if (!snapshotId) throw new StorageError(Code.INVALID_ARGUMENT, 'a snapshot needs an id');
    if (!Number.isSafeInteger(deadlineMs) || deadlineMs <= 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, `the barrier's deadline must be a positive whole number of milliseconds, got ${deadlineMs}`);
    }
    const refused = this.refusal(snapshotId);
    if (refused) throw refused;
    this.running = true;
    const attempt: Attempt = { snapshotId, expired: false, asked: [], startedAt: performance.now(), drainMs: 0, cutMs: 0, fillMs: 0 };
    let reopen = (): void => undefined;
    fanOut.closeGate(new Promise<void>((resolve) => (reopen = resolve)));
    let pauseUs: number | undefined;
    const open = (): number => {
      if (pauseUs === undefined) {
        fanOut.openGate();
        reopen();
        pauseUs = Math.round((performance.now() - attempt.startedAt) * 1000);
        barrierPauses.observe(pauseUs / 1e6);
      }
      return pauseUs;
    };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        attempt.expired = true;
        open();
        reject(new StorageError(Code.DEADLINE_EXCEEDED,
          `snapshot ${snapshotId} of volume ${ctx.name} did not finish within ${deadlineMs} ms; writes resumed and no copy is kept: try again`,
          { details: { volumeId: ctx.volumeId, snapshot: snapshotId } }));
      }, deadlineMs);
    });
    deadline.catch(() => undefined); // raced below; after the race only the timer's side effects matter
    const work = this.run(attempt, open);
    try {
      const result = await Promise.race([work, deadline]);
      this.logDone(attempt, result);
      return result;
    } catch (raw) {
      if (!attempt.expired) clearTimeout(timer);
      open();
      const err = life.fencedError() ?? raw;
      this.logFailed(attempt, open(), err);
      if (attempt.expired) this.cleanLater(attempt, work);
      else await this.deleteCopies(attempt);
      throw err;
    } finally {
      clearTimeout(timer);
      open();
      this.running = false;
    }
  }

  /** Resolves once the copies of failed barriers that finished late are deleted. */
  async settled(): Promise<void> {
    while (this.cleanups.size > 0) await Promise.all([...this.cleanups]);
  }

  private refusal(snapshotId: SnapshotId): StorageError | undefined {
    const { ctx, life } = this.deps;
    const details = { volumeId: ctx.volumeId, snapshot: snapshotId };
    const fenced = life.fencedError();
    if (fenced) return fenced;
    if (life.closing()) return new StorageError(Code.UNAVAILABLE, `the engine of volume ${ctx.name} is closed`, { details });
    if (this.running) return new StorageError(Code.ABORTED, `a snapshot of volume ${ctx.name} is being taken: try again when it finished`, { details });
    if (this.cleaning.has(snapshotId)) {
      return new StorageError(Code.ABORTED, `copies of a failed attempt at snapshot ${snapshotId} are still being deleted: try again shortly`, { details });
    }
    if (this.deps.reconciling()) {
      return new StorageError(Code.UNAVAILABLE, `volume ${ctx.name} is reconciling its replicas after an unclean stop: try again when it finished`, { details });
    }
    return undefined;
  }

  private async run(attempt: Attempt, open: () => number): Promise<VolumeSnapshotResult> {
    const { ctx, members, fanOut } = this.deps;
    let since = performance.now();
    await fanOut.drained();
    for (let pending = this.faultsPending(); pending.length > 0; pending = this.faultsPending()) await Promise.allSettled(pending);
    attempt.drainMs = elapsedMs(since);
    this.check(attempt);
    const inSync = [...members.inSync];
    if (inSync.length === 0) throw noInSyncError(ctx);
    since = performance.now();
    const cuts = await Promise.allSettled(inSync.map((m) => this.copy(attempt, m, true)));
    attempt.cutMs = elapsedMs(since);
    this.check(attempt);
    this.throwFailures(attempt, inSync, cuts);
    const pauseUs = open();
    since = performance.now();
    const filled = await Promise.allSettled(inSync.map((m, i) => {
      const cut = (cuts[i] as PromiseFulfilledResult<SnapshotCopyStatus>).value;
      return cut.filling ? this.copy(attempt, m, false) : Promise.resolve(cut);
    }));
    attempt.fillMs = elapsedMs(since);
    this.check(attempt);
    this.throwFailures(attempt, inSync, filled);
    const copies = filled.map((r, i) => ({ nodeId: inSync[i]!.entry.nodeId, replicaId: inSync[i]!.id, sizeBytes: (r as PromiseFulfilledResult<SnapshotCopyStatus>).value.sizeBytes }));
    return { copies, pauseUs, epoch: ctx.epoch };
  }

  /** Throws when any member's copy failed: the engine is fenced on a newer epoch, else the first error, naming every failure. */
  private throwFailures(attempt: Attempt, inSync: Member[], results: PromiseSettledResult<SnapshotCopyStatus>[]): void {
    const { ctx } = this.deps;
    const failures: string[] = [];
    let first: StorageError | undefined;
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') return;
      const m = inSync[i]!;
      const err = isStorageError(r.reason) ? r.reason : new StorageError(Code.INTERNAL, String((r.reason as Error)?.message ?? r.reason));
      if (isStaleEpoch(err)) throw this.deps.life.fence(newestEpochOf(err), err);
      first ??= err;
      failures.push(`replica ${m.id} on node ${m.entry.nodeId}: ${err.message}`);
    });
    if (first) {
      throw new StorageError(first.code, `snapshot ${attempt.snapshotId} of volume ${ctx.name} failed (${failures.join('; ')}); writes resumed and no copy is kept`,
        { cause: first, details: { volumeId: ctx.volumeId, snapshot: attempt.snapshotId, replicas: inSync.filter((_, i) => results[i]!.status === 'rejected').map((m) => m.id) } });
    }
  }

  /**
   * Asks a member for its copy: at the cut (`cutOnly`; the answer may say it is still being
   * filled), or, after the cut, until the copy is whole.
   */
  private async copy(attempt: Attempt, m: Member, cutOnly: boolean): Promise<SnapshotCopyStatus> {
    const { ctx, connector } = this.deps;
    const control = await connector.control(m.entry.nodeId);
    if (cutOnly) attempt.asked.push(m);
    try {
      return await control.snapshotReplica({ replicaId: m.id, volumeId: ctx.volumeId }, ctx.epoch, attempt.snapshotId, { cutOnly });
    } catch (err) {
      // ALREADY_EXISTS: the node's copy of this id is another replica's; it is not this attempt's to delete.
      if (cutOnly && isStorageError(err, Code.ALREADY_EXISTS)) attempt.asked.splice(attempt.asked.indexOf(m), 1);
      throw err;
    }
  }

  private faultsPending(): Promise<void>[] {
    const out: Promise<void>[] = [];
    for (const m of this.deps.members.values()) if (m.faultPending) out.push(m.faultPending);
    return out;
  }

  /** Stops the work once the call gave up, the engine is fenced or closing. */
  private check(attempt: Attempt): void {
    const { ctx, life } = this.deps;
    const fenced = life.fencedError();
    if (fenced) throw fenced;
    if (attempt.expired) throw new StorageError(Code.DEADLINE_EXCEEDED, `snapshot ${attempt.snapshotId} of volume ${ctx.name} ran past its deadline`);
    if (life.closing()) throw new StorageError(Code.UNAVAILABLE, `the engine of volume ${ctx.name} closed during snapshot ${attempt.snapshotId}; no copy is kept`);
  }

  /** Deletes every copy the attempt may have made; best effort, each failure logged. */
  private async deleteCopies(attempt: Attempt): Promise<void> {
    const { ctx, connector } = this.deps;
    await Promise.all(attempt.asked.map(async (m) => {
      try {
        await (await connector.control(m.entry.nodeId)).deleteSnapshotCopy(attempt.snapshotId);
      } catch (err) {
        ctx.log.warn({ snapshot: attempt.snapshotId, replica: m.id, node: m.entry.nodeId, err: (err as Error).message },
          'cannot delete the copy of a failed snapshot; the snapshot service or the node\'s orphan cleanup must delete it');
      }
    }));
  }

  /** After a deadline: once the work has stopped, deletes the copies it made. */
  private cleanLater(attempt: Attempt, work: Promise<unknown>): void {
    this.cleaning.add(attempt.snapshotId);
    const cleanup = work.then(() => undefined, () => undefined)
      .then(() => this.deleteCopies(attempt))
      .finally(() => {
        this.cleaning.delete(attempt.snapshotId);
        this.cleanups.delete(cleanup);
        if (attempt.asked.length > 0) this.deps.ctx.log.info({ snapshot: attempt.snapshotId, copies: attempt.asked.length }, 'late copies of a snapshot past its deadline deleted');
      });
    this.cleanups.add(cleanup);
  }

  private logDone(a: Attempt, r: VolumeSnapshotResult): void {
    this.deps.ctx.log.info({ snapshot: a.snapshotId, pauseMs: r.pauseUs / 1000, drainMs: a.drainMs, cutMs: a.cutMs, fillMs: a.fillMs, copies: r.copies.length },
      'volume snapshot taken');
  }

  private logFailed(a: Attempt, pauseUs: number, err: unknown): void {
    this.deps.ctx.log.warn({ snapshot: a.snapshotId, pauseMs: pauseUs / 1000, drainMs: a.drainMs, cutMs: a.cutMs, fillMs: a.fillMs, copies: 0, err: (err as Error).message },
      'volume snapshot failed; no copy kept');
  }
}
