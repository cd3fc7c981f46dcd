/**
 * The write barrier (DESIGN.md, rule 5; docs/snapshots.md): a crash-consistent snapshot of
 * the volume on every in-sync replica under one snapshot id, in phases that a group of
 * engines goes through together (a group coordinator holds many engines paused at once).
 *
 * 1. pause(group, lease): the gate closes (fan-out.ts, barrier-gate.ts): new writes, trims and
 *    write-zeroes wait; reads and flushes go on. Drain: every mutating request in flight
 *    settles, its wait for a fault commit included (the fan-out releases region locks before
 *    that wait), and no member has a fault pending: the in-sync set copied is the one the
 *    cluster store holds. Unless the group resumes (or pauses again: a renewal) first, the
 *    gate opens by itself at the lease's end and the group's cut is refused ("lease expired").
 * 2. cut(group, snapshot), only while the group holds the pause: `snapshotReplica` with
 *    `cutOnly` on every in-sync member at once. Each replica settles its own writes, flushes
 *    where its pool needs it (dm) and answers once its copy's content is fixed. Write-only
 *    (rebuilding) and faulted replicas get no copy.
 * 3. resume(group): the gate opens; the pause (1 to 3) is answered in µs and observed.
 * 4. finish(snapshot): copies answered `filling` (file-cut-copy.ts) are waited for; each pool
 *    makes its copy durable.
 * 5. abort(snapshot): every copy asked is deleted (best effort, logged) once the work stopped.
 *
 * All copies or none: a cut or finish that fails deletes its snapshot's copies and throws.
 * `snapshot()` is pause → cut → resume → finish under one deadline: a timer opens the gate at
 * the deadline whatever runs, the call fails DEADLINE_EXCEEDED, and late copies are deleted
 * once they finish. One pause at a time per engine, none while another snapshot's copies are
 * cut or filled, and none for an id whose failed copies are still being deleted: ABORTED.
 */
import { Code, StorageError, isStaleEpoch, isStorageError } from '../common/errors.js';
import type { SnapshotId } from '../common/ids.js';
import { BarrierGate, positiveMs } from './barrier-gate.js';
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

export type SnapshotCopies = VolumeSnapshotResult['copies'];
/** A member's copy at the cut; `filling` until finish. */
export type CutCopy = SnapshotCopies[number] & { filling: boolean };

/** What a group snapshot drives on each member's engine. */
export type BarrierPhases = Pick<WriteBarrier, 'pause' | 'cut' | 'resume' | 'finish' | 'abort'>;

/** One snapshot's copies on this engine, from its cut until it is aborted (or forgotten). */
interface Attempt {
  readonly snapshotId: SnapshotId;
  readonly groupId: string;
  /** Set when the copies are to be deleted: the work starts nothing more. */
  expired: boolean;
  /** Members asked for a copy: whatever they answered, they may hold one. */
  readonly asked: Member[];
  inSync: Member[];
  cuts: SnapshotCopyStatus[] | undefined;
  copies: SnapshotCopies | undefined;
  /** The cut or the finish running now. */
  work: Promise<unknown> | undefined;
  finishing: Promise<SnapshotCopies> | undefined;
  aborting: Promise<void> | undefined;
  cutMs: number;
  fillMs: number;
}

/** How many snapshots' copies an engine remembers after their finish (for abort). */
const FINISHED_KEPT = 64;

const elapsedMs = (since: number): number => Math.round((performance.now() - since) * 1000) / 1000;
let calls = 0;
/** Each single-volume snapshot call pauses under a group of its own. */
const singleGroup = (id: SnapshotId): string => `volume-snapshot/${id}/${++calls}`;

export class WriteBarrier {
  private readonly gate: BarrierGate;
  private readonly attempts = new Map<SnapshotId, Attempt>();
  /** Snapshot ids whose copies of a failed attempt are still being deleted (counted). */
  private readonly cleaning = new Map<SnapshotId, number>();
  /** Deletions of late copies, running after their barrier failed. */
  private readonly cleanups = new Set<Promise<void>>();

  constructor(private readonly deps: WriteBarrierDeps) {
    this.gate = new BarrierGate(deps.ctx, deps.fanOut);
  }

  /** Pause → cut → resume → finish under one deadline; see the file's comment. */
  async snapshot(snapshotId: SnapshotId, deadlineMs: number): Promise<VolumeSnapshotResult> {
    const { ctx, life } = this.deps;
    if (!snapshotId) throw new StorageError(Code.INVALID_ARGUMENT, 'a snapshot needs an id');
    positiveMs(deadlineMs, 'the barrier\'s deadline');
    const group = singleGroup(snapshotId);
    const refused = this.refusal(snapshotId) ?? this.pauseRefusal(group);
    if (refused) throw refused;
    const startedAt = performance.now();
    let expired = false;
    let pauseUs = 0;
    let drainMs = 0;
    const work = (async (): Promise<VolumeSnapshotResult> => {
      drainMs = await this.pause(group, deadlineMs);
      if (expired) throw this.pastDeadline(snapshotId);
      await this.cut(group, snapshotId);
      pauseUs = this.resume(group);
      if (expired) throw this.pastDeadline(snapshotId);
      return { copies: await this.finish(snapshotId), pauseUs, epoch: ctx.epoch };
    })();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        expired = true;
        const attempt = this.attempts.get(snapshotId);
        if (attempt?.groupId === group) attempt.expired = true;
        this.resume(group);
        this.abortLater(snapshotId, work);
        reject(new StorageError(Code.DEADLINE_EXCEEDED,
          `snapshot ${snapshotId} of volume ${ctx.name} did not finish within ${deadlineMs} ms; writes resumed and no copy is kept: try again`,
          { details: { volumeId: ctx.volumeId, snapshot: snapshotId } }));
      }, deadlineMs);
    });
    deadline.catch(() => undefined); // raced below; after the race only the timer's side effects matter
    try {
      const result = await Promise.race([work, deadline]);
      this.attempts.delete(snapshotId);
      this.log(snapshotId, result.pauseUs, drainMs, result.copies.length, startedAt);
      return result;
    } catch (raw) {
      clearTimeout(timer);
      const err = life.fencedError() ?? raw;
      this.log(snapshotId, this.resume(group), drainMs, 0, startedAt, err);
      if (!expired) await this.abort(snapshotId);
      throw err;
    } finally {
      clearTimeout(timer);
      this.resume(group);
    }
  }

  /** Closes the gate for `groupId` and drains (or renews its lease); resolves with the drain in ms. */
  async pause(groupId: string, leaseMs: number): Promise<number> {
    if (!groupId) throw new StorageError(Code.INVALID_ARGUMENT, 'a pause needs a group id');
    positiveMs(leaseMs, 'the pause\'s lease');
    const refused = this.gate.holder === groupId ? this.engineRefusal() : this.pauseRefusal(groupId);
    if (refused) throw refused;
    return this.gate.pause(groupId, leaseMs, () => this.drain());
  }

  /** Opens the gate if `groupId` holds it; the pause in µs (idempotent). */
  resume(groupId: string): number {
    return this.gate.resume(groupId);
  }

  /** Cuts every in-sync member's copy of `snapshotId` while `groupId` holds the pause. */
  async cut(groupId: string, snapshotId: SnapshotId): Promise<CutCopy[]> {
    if (!snapshotId) throw new StorageError(Code.INVALID_ARGUMENT, 'a snapshot needs an id');
    const known = this.attempts.get(snapshotId);
    if (known?.groupId === groupId && known.cuts && !known.expired) return cutView(known);
    const refused = this.refusal(snapshotId) ?? (known ? this.inUse(snapshotId) : undefined);
    if (refused) throw refused;
    this.gate.check(groupId);
    const attempt: Attempt = {
      snapshotId, groupId, expired: false, asked: [], inSync: [], cuts: undefined, copies: undefined,
      work: undefined, finishing: undefined, aborting: undefined, cutMs: 0, fillMs: 0,
    };
    this.attempts.set(snapshotId, attempt);
    const work = this.cutWork(attempt);
    attempt.work = work;
    try {
      await work;
      return cutView(attempt);
    } catch (err) {
      await this.abort(snapshotId);
      throw this.deps.life.fencedError() ?? err;
    } finally {
      attempt.work = undefined;
    }
  }

  /** Waits until every copy of `snapshotId` is whole; its copies. Idempotent. */
  async finish(snapshotId: SnapshotId): Promise<SnapshotCopies> {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt || attempt.expired) {
      throw new StorageError(Code.NOT_FOUND, `volume ${this.deps.ctx.name} has no copies of snapshot ${snapshotId} being taken`,
        { details: { volumeId: this.deps.ctx.volumeId, snapshot: snapshotId } });
    }
    if (!attempt.cuts) throw this.inUse(snapshotId);
    if (!attempt.finishing) {
      const work = this.fillWork(attempt);
      attempt.work = work;
      attempt.finishing = work.finally(() => (attempt.work = undefined));
      attempt.finishing.catch(() => this.abort(snapshotId));
    }
    try {
      return await attempt.finishing;
    } catch (err) {
      await this.abort(snapshotId);
      throw this.deps.life.fencedError() ?? err;
    }
  }

  /** Deletes every copy of `snapshotId` asked, once the work on it stopped. Idempotent. */
  abort(snapshotId: SnapshotId): Promise<void> {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt) return Promise.resolve();
    attempt.expired = true;
    attempt.aborting ??= (async () => {
      this.cleaning.set(snapshotId, (this.cleaning.get(snapshotId) ?? 0) + 1);
      try {
        await attempt.work?.catch(() => undefined);
        await this.deleteCopies(attempt);
      } finally {
        if (this.attempts.get(snapshotId) === attempt) this.attempts.delete(snapshotId);
        this.uncount(snapshotId);
      }
    })();
    return attempt.aborting;
  }

  /** Resolves once the copies of failed barriers that finished late are deleted. */
  async settled(): Promise<void> {
    while (this.cleanups.size > 0) await Promise.all([...this.cleanups]);
  }

  // --- the work ---------------------------------------------------------------------------

  private async drain(): Promise<void> {
    await this.deps.fanOut.drained();
    for (let pending = this.faultsPending(); pending.length > 0; pending = this.faultsPending()) await Promise.allSettled(pending);
  }

  private async cutWork(attempt: Attempt): Promise<void> {
    const { ctx, members } = this.deps;
    const inSync = [...members.inSync];
    if (inSync.length === 0) throw noInSyncError(ctx);
    attempt.inSync = inSync;
    const since = performance.now();
    const cuts = await Promise.allSettled(inSync.map((m) => this.copy(attempt, m, true)));
    attempt.cutMs = elapsedMs(since);
    this.check(attempt);
    this.gate.check(attempt.groupId); // the lease must still hold: writes that went on would be missing from some copies only
    this.throwFailures(attempt, inSync, cuts);
    attempt.cuts = cuts.map((r) => (r as PromiseFulfilledResult<SnapshotCopyStatus>).value);
  }

  private async fillWork(attempt: Attempt): Promise<SnapshotCopies> {
    const since = performance.now();
    const { inSync, cuts } = attempt;
    const filled = await Promise.allSettled(inSync.map((m, i) => (cuts![i]!.filling ? this.copy(attempt, m, false) : Promise.resolve(cuts![i]!))));
    attempt.fillMs = elapsedMs(since);
    this.check(attempt);
    this.throwFailures(attempt, inSync, filled);
    attempt.copies = filled.map((r, i) => ({ nodeId: inSync[i]!.entry.nodeId, replicaId: inSync[i]!.id, sizeBytes: (r as PromiseFulfilledResult<SnapshotCopyStatus>).value.sizeBytes }));
    this.trimFinished();
    return attempt.copies;
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

  /** Stops the work once its copies are to be deleted, the engine is fenced or closing. */
  private check(attempt: Attempt): void {
    const { ctx, life } = this.deps;
    const fenced = life.fencedError();
    if (fenced) throw fenced;
    if (attempt.expired) throw new StorageError(Code.ABORTED, `snapshot ${attempt.snapshotId} of volume ${ctx.name} was aborted`);
    if (life.closing()) throw new StorageError(Code.UNAVAILABLE, `the engine of volume ${ctx.name} closed during snapshot ${attempt.snapshotId}; no copy is kept`);
  }

  /** Deletes every copy the attempt may have made; best effort, each failure logged. */
  private async deleteCopies(attempt: Attempt): Promise<void> {
    const { ctx, connector } = this.deps;
    await Promise.all(attempt.asked.map(async (m) => {
      try {
        await (await connector.control(m.entry.nodeId)).deleteSnapshotCopy(attempt.snapshotId);
      } catch (err) {
        ctx.log.warn({ snapshot: attempt.snapshotId, replica: m.id, replicaNode: m.entry.nodeId, err: (err as Error).message },
          'cannot delete the copy of a failed snapshot; the snapshot service or the node\'s orphan cleanup must delete it');
      }
    }));
  }

  /** After a deadline: once the work has stopped, deletes the copies it made. */
  private abortLater(snapshotId: SnapshotId, work: Promise<unknown>): void {
    this.cleaning.set(snapshotId, (this.cleaning.get(snapshotId) ?? 0) + 1);
    const cleanup = work.then(() => undefined, () => undefined)
      .then(() => this.abort(snapshotId))
      .finally(() => {
        this.uncount(snapshotId);
        this.cleanups.delete(cleanup);
        this.deps.ctx.log.info({ snapshot: snapshotId }, 'late copies of a snapshot past its deadline deleted');
      });
    this.cleanups.add(cleanup);
  }

  /** A finished snapshot's copies are its caller's; the newest few are remembered for abort. */
  private trimFinished(): void {
    const finished = [...this.attempts.values()].filter((a) => a.copies !== undefined);
    for (const a of finished.slice(0, Math.max(0, finished.length - FINISHED_KEPT))) this.attempts.delete(a.snapshotId);
  }

  private uncount(snapshotId: SnapshotId): void {
    const n = (this.cleaning.get(snapshotId) ?? 1) - 1;
    if (n > 0) this.cleaning.set(snapshotId, n);
    else this.cleaning.delete(snapshotId);
  }

  // --- refusals ---------------------------------------------------------------------------

  private engineRefusal(): StorageError | undefined {
    const { ctx, life } = this.deps;
    const fenced = life.fencedError();
    if (fenced) return fenced;
    if (life.closing()) return new StorageError(Code.UNAVAILABLE, `the engine of volume ${ctx.name} is closed`, { details: { volumeId: ctx.volumeId } });
    return undefined;
  }

  private pauseRefusal(groupId: string): StorageError | undefined {
    const { ctx } = this.deps;
    const details = { volumeId: ctx.volumeId, group: groupId };
    const engine = this.engineRefusal();
    if (engine) return engine;
    const busy = [...this.attempts.values()].some((a) => a.work !== undefined);
    if (busy || (this.gate.holder !== undefined && this.gate.holder !== groupId)) {
      return new StorageError(Code.ABORTED, `a snapshot of volume ${ctx.name} is being taken: try again when it finished`, { details });
    }
    if (this.deps.reconciling()) {
      return new StorageError(Code.UNAVAILABLE, `volume ${ctx.name} is reconciling its replicas after an unclean stop: try again when it finished`, { details });
    }
    return this.gate.refusal(groupId);
  }

  private refusal(snapshotId: SnapshotId): StorageError | undefined {
    const engine = this.engineRefusal();
    if (engine) return engine;
    if (this.cleaning.has(snapshotId)) {
      return new StorageError(Code.ABORTED, `copies of a failed attempt at snapshot ${snapshotId} are still being deleted: try again shortly`,
        { details: { volumeId: this.deps.ctx.volumeId, snapshot: snapshotId } });
    }
    return undefined;
  }

  private inUse(snapshotId: SnapshotId): StorageError {
    return new StorageError(Code.ABORTED, `snapshot ${snapshotId} of volume ${this.deps.ctx.name} is being taken by another call`,
      { details: { volumeId: this.deps.ctx.volumeId, snapshot: snapshotId } });
  }

  private pastDeadline(snapshotId: SnapshotId): StorageError {
    return new StorageError(Code.DEADLINE_EXCEEDED, `snapshot ${snapshotId} of volume ${this.deps.ctx.name} ran past its deadline`);
  }

  private log(snapshotId: SnapshotId, pauseUs: number, drainMs: number, copies: number, startedAt: number, err?: unknown): void {
    const fields = { snapshot: snapshotId, pauseMs: pauseUs / 1000, drainMs, totalMs: elapsedMs(startedAt), copies };
    if (err === undefined) this.deps.ctx.log.info(fields, 'volume snapshot taken');
    else this.deps.ctx.log.warn({ ...fields, err: (err as Error).message }, 'volume snapshot failed; no copy kept');
  }
}

function cutView(a: Attempt): CutCopy[] {
  return a.inSync.map((m, i) => ({ nodeId: m.entry.nodeId, replicaId: m.id, sizeBytes: a.cuts![i]!.sizeBytes, filling: a.cuts![i]!.filling === true }));
}
