/**
 * Faults and the group commit (DESIGN.md, rules 1-2). A replica that fails leaves the I/O
 * path at once (`fault`), and a write a replica misses sets bits of its dirty-region map
 * (`markMissed`); the write is acknowledged only once both are durable. What is queued
 * meanwhile is committed together once per turn of the event loop: every changed map saved
 * once and every newly faulted replica marked in one `EngineControl.markFaulted`. Control
 * calls run one after another (`controlStep`), so the store sees them in the engine's order;
 * one refused as FAILED_PRECONDITION fences the engine.
 *
 * A map the node store cannot save (a full disk, say) holds up neither the fault nor the
 * writes: the replica's entry in the volume document gets `fullRebuild` (with its fault, or
 * in a CAS of its own when it is faulted already), so that an engine started later ignores
 * the node-local map and copies every region. Once that is durable, the writes the replica
 * missed are acknowledged; this engine keeps its complete map in memory and saves it again
 * every `reconnectMs` in the background. While the cluster store cannot record the flag,
 * those writes wait, as they wait for any fault.
 */
import { Code, isStorageError } from '../common/errors.js';
import type { ReplicaId } from '../common/ids.js';
import type { EngineControl } from './engine-types.js';
import { type EngineContext, type EngineLife, type Member, type MemberMaps, join, markOn, newestEpochOf, noop } from './engine-member.js';
import type { MemberSet } from './member-set.js';
import { RegionMap } from './region-map.js';

/** Longest wait before a replica whose rebuilds keep failing is tried again. */
const MAX_RETRY_MS = 60_000;

interface CommitBatch {
  saves: Set<Member>;
  faults: Map<Member, string>;
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface FaultCommitDeps {
  ctx: EngineContext;
  life: EngineLife;
  members: MemberSet;
  maps: MemberMaps;
  control: EngineControl;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class FaultCommit {
  private readonly ctx: EngineContext;
  private readonly life: EngineLife;
  private readonly members: MemberSet;
  private readonly maps: MemberMaps;
  private readonly control: EngineControl;
  private batch: CommitBatch | undefined;
  /** Control calls run one after another, so the store sees them in the engine's order. */
  private controlChain: Promise<unknown> = Promise.resolve();
  /** Members whose map the store could not save; retried every reconnectMs by `retrying`. */
  private readonly unsaved = new Set<Member>();
  private retrying: Promise<void> | undefined;

  constructor(deps: FaultCommitDeps) {
    this.ctx = deps.ctx;
    this.life = deps.life;
    this.members = deps.members;
    this.maps = deps.maps;
    this.control = deps.control;
  }

  /** Takes the replica out of the I/O path; its fault becomes durable in the next commit. */
  fault(m: Member, reason: string): void {
    const was = m.role;
    if (was === 'write-only') {
      // It failed while being rebuilt (a full disk, say): try again later and later, up to a minute.
      m.failures++;
      m.retryAt = Date.now() + Math.min(MAX_RETRY_MS, this.ctx.reconnectMs * 2 ** Math.min(m.failures, 10));
    }
    m.role = 'out';
    m.outState = 'faulted';
    const io = m.io;
    m.io = undefined;
    m.timedOut = false;
    io?.cancel();
    m.rebuild?.abort.abort();
    m.map ??= new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes);
    this.markUnflushed(m);
    if (was === 'in-sync') this.sourceGone(m);
    this.members.refresh();
    const p = this.queue(m, reason);
    m.faultPending = p;
    const clear = (): void => {
      if (m.faultPending === p) m.faultPending = undefined;
    };
    p.then(clear, clear);
    this.ctx.log.warn({ replica: m.id, replicaNode: m.entry.nodeId, role: was, reason, inSync: this.members.inSync.map((x) => x.id) }, 'replica left the I/O path; faulting it');
  }

  /** Rebuilds copying from `m` stop; they start again from an in-sync source. */
  sourceGone(m: Member): void {
    for (const w of this.members.writeOnly) {
      if (w.rebuild?.sourceId !== m.id) continue;
      w.rebuild.sourceLost = true;
      w.rebuild.abort.abort();
    }
  }

  /** Marks a write the out-of-sync members miss; returns what its acknowledgement waits for. */
  noteMissed(offset: number, lengthBytes: number): Promise<void> | undefined {
    let wait: Promise<void> | undefined;
    for (const m of this.members.missing) wait = join(wait, this.markMissed(m, offset, lengthBytes, false));
    return wait;
  }

  /** Marks what `m` missed (`whole`: everything); returns what the acknowledgement waits for. */
  markMissed(m: Member, offset: number, lengthBytes: number, whole: boolean): Promise<void> | undefined {
    let changed: boolean;
    if (m.rebuild?.copying) {
      m.deferred ??= new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes);
      changed = markOn(m.deferred, offset, lengthBytes, whole);
    } else {
      m.map ??= new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes);
      changed = markOn(m.map, offset, lengthBytes, whole);
    }
    // A bit set by an earlier write whose save has not run yet counts too: wait for that save.
    const commit = changed && m.mapKnown ? this.queue(m) : m.savePending;
    return join(m.faultPending, commit);
  }

  /**
   * Saves `m`'s map now (a replica added to the volume). A save that fails is retried in
   * the background and logged; it never throws.
   */
  saveNow(m: Member): void {
    if (!this.trySave(m)) this.saveInBackground();
  }

  /** One control call after those before it (the store sees them in the engine's order); FAILED_PRECONDITION fences. */
  controlStep(call: () => Promise<void>): Promise<void> {
    const run = this.controlChain.then(call).catch((err: unknown) => {
      if (isStorageError(err, Code.FAILED_PRECONDITION)) throw this.life.fence(newestEpochOf(err), err);
      throw err;
    });
    this.controlChain = run.catch(noop);
    return run;
  }

  /**
   * What the replica acknowledged but had not flushed may be lost with its node (a crash
   * keeps the page cache, a power loss does not): those regions are marked missed too.
   */
  private markUnflushed(m: Member): void {
    const maps = [...m.flushing];
    if (m.unflushed) maps.push(m.unflushed);
    m.unflushed = undefined;
    m.flushing.clear();
    if (maps.length === 0) return;
    const into = m.rebuild?.copying ? (m.deferred ??= new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes)) : m.map!;
    for (const u of maps) for (let r = u.nextSet(0); r >= 0; r = u.nextSet(r + 1)) into.set(r);
  }

  private queue(m: Member, faultReason?: string): Promise<void> {
    let b = this.batch;
    if (!b) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(noop);
      const batch: CommitBatch = { saves: new Set(), faults: new Map(), promise, resolve, reject };
      this.batch = b = batch;
      setImmediate(() => void this.run(batch));
    }
    b.saves.add(m);
    if (m.savePending !== b.promise) {
      const p = b.promise;
      m.savePending = p;
      const clear = (): void => {
        if (m.savePending === p) m.savePending = undefined;
      };
      p.then(clear, clear);
    }
    if (faultReason !== undefined) b.faults.set(m, `replica ${m.id} on node ${m.entry.nodeId}: ${faultReason}`);
    return b.promise;
  }

  /** Saves the batch's maps once and marks its faulted replicas once (with `fullRebuild` for maps not saved). */
  private async run(b: CommitBatch): Promise<void> {
    if (this.batch === b) this.batch = undefined;
    try {
      const fenced = this.life.fencedError();
      if (fenced) throw fenced;
      const settling = [...b.saves].flatMap((m) => (m.rebuild?.copying ? [m.rebuild.settled] : []));
      if (settling.length > 0) await Promise.all(settling);
      const notSaved: Member[] = [];
      for (const m of b.saves) {
        this.mergeDeferred(m);
        if (!this.trySave(m)) notSaved.push(m);
      }
      if (notSaved.length > 0) this.saveInBackground();
      // The fault goes to the cluster store even when the local disk could not save the map.
      if (b.faults.size > 0 || notSaved.some((m) => !m.fullRebuild)) await this.controlStep(() => this.recordFaults(b, notSaved));
      b.resolve();
    } catch (err) {
      b.reject(this.life.fencedError() ?? err);
    }
  }

  /**
   * Runs as a control step: decides which maps need `fullRebuild` only once the calls before
   * it (an in-sync CAS that clears the flag, say) have landed.
   */
  private async recordFaults(b: CommitBatch, notSaved: readonly Member[]): Promise<void> {
    const flag = notSaved.filter((m) => this.unsaved.has(m) && !m.fullRebuild && !m.removed);
    if (b.faults.size === 0 && flag.length === 0) return;
    const ids = [...b.faults.keys()].map((m) => m.id);
    const reasons = [...b.faults.values()];
    if (reasons.length === 0) reasons.push(`the dirty-region maps of ${flag.map((m) => m.id).join(', ')} could not be saved on this node`);
    await this.retryMarkFaulted(ids, reasons.join('; '), flag.map((m) => m.id));
    for (const m of flag) m.fullRebuild = true;
    if (flag.length > 0) this.ctx.log.warn({ replicas: flag.map((m) => m.id) }, 'dirty-region maps not saved; the volume document says to rebuild these replicas in full');
  }

  /** The store may be unreachable for a while: keep trying (the I/O that needs it waits). */
  private async retryMarkFaulted(ids: ReplicaId[], reason: string, fullRebuild: ReplicaId[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const fenced = this.life.fencedError();
      if (fenced) throw fenced;
      try {
        await this.control.markFaulted(ids, reason, fullRebuild);
        return;
      } catch (err) {
        // Fenced, or the control was closed (the volume service is stopping this engine).
        if (isStorageError(err, Code.FAILED_PRECONDITION) || isStorageError(err, Code.CANCELLED) || this.life.closing()) throw err;
        this.ctx.log.warn({ replicas: ids, fullRebuild, attempt, err: (err as Error).message }, 'cannot record faulted replicas yet; retrying (I/O that depends on it waits)');
        await sleep(this.ctx.reconnectMs);
      }
    }
  }

  /** Saves `m`'s map; false when the store could not (then `m` waits in `unsaved` for `saveInBackground`). */
  trySave(m: Member): boolean {
    try {
      this.maps.save(m);
      this.unsaved.delete(m);
      return true;
    } catch (err) {
      if (this.unsaved.size === 0) {
        this.ctx.log.warn({ replica: m.id, err: (err as Error).message, code: isStorageError(err) ? Code[err.code] : undefined },
          'cannot save a dirty-region map; the replica is to be rebuilt in full, and the save is retried in the background');
      }
      this.unsaved.add(m);
      return false;
    }
  }

  /** Saves the maps in `unsaved` every reconnectMs until all are saved, the engine closes or it is fenced. Never rejects. */
  saveInBackground(): void {
    this.retrying ??= this.saveUntilDone().catch((err: unknown) => {
      this.ctx.log.warn({ replicas: [...this.unsaved].map((m) => m.id), err: (err as Error).message }, 'stopped retrying to save dirty-region maps');
    }).finally(() => {
      this.retrying = undefined;
    });
  }

  private async saveUntilDone(): Promise<void> {
    for (let attempt = 1; this.unsaved.size > 0; attempt++) {
      await sleep(this.ctx.reconnectMs);
      if (this.life.fencedError() || this.life.closing()) {
        this.ctx.log.info({ replicas: [...this.unsaved].map((m) => m.id) }, 'engine stopping with dirty-region maps not saved on this node');
        return;
      }
      for (const m of [...this.unsaved]) {
        if (m.rebuild?.copying) continue; // the rebuild owns the map: saved once it has settled
        this.mergeDeferred(m);
        if (m.removed || this.trySave(m)) this.unsaved.delete(m);
      }
      if (this.unsaved.size === 0) this.ctx.log.info({ attempts: attempt }, 'dirty-region maps saved after retries');
    }
  }

  private mergeDeferred(m: Member): void {
    const d = m.deferred;
    if (!d || m.rebuild?.copying || !m.map) return;
    for (let r = d.nextSet(0); r >= 0; r = d.nextSet(r + 1)) m.map.set(r);
    m.deferred = undefined;
  }
}
