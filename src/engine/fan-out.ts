/**
 * The volume engine's I/O path. Writes, trims and write-zeroes go to every target (in-sync
 * and write-only replica) at once under a shared region lock; reads go to the read replica
 * and are retried on another after a failure; a flush goes to every target. What the
 * failures of one request mean is decided here (`afterFailures`); faulting replicas and
 * making that durable is FaultCommit's.
 *
 * Hot path: no timer or closure per request beyond the promises; timeouts are found by one
 * sweep timer (`sweep`) that looks at per-replica counters of requests in flight by start
 * interval.
 *
 * The write barrier (write-barrier.ts) closes a gate here: mutating requests that arrive
 * while it is closed wait for it to open (reads and flushes go on). Mutating requests are
 * counted from entry to settlement, including their wait for a fault commit after the
 * region locks were released, so that `drained()` tells when none is left.
 */
import { Code, StorageError, isStaleEpoch } from '../common/errors.js';
import type { ReplicaIo } from './engine-types.js';
import { type EngineContext, type EngineLife, MASK, type Member, join, newestEpochOf, noInSyncError, noop, overdue, replicaError } from './engine-member.js';
import type { FaultCommit } from './fault-commit.js';
import type { MemberSet } from './member-set.js';
import { type RegionLocks, RegionMap } from './region-map.js';

const enum Kind { Write, Trim, Zeroes, Flush }

/** A write's bytes: one buffer, or pieces to write back to back (joined once for replicas that need one buffer). */
class Payload {
  private joined: Uint8Array | undefined;
  constructor(readonly parts: readonly Uint8Array[], readonly lengthBytes: number) {}
  whole(): Uint8Array {
    this.joined ??= Buffer.concat(this.parts, this.lengthBytes);
    return this.joined;
  }
}

const isCallerFault = (e: StorageError): boolean => e.code === Code.INVALID_ARGUMENT || e.code === Code.OUT_OF_RANGE;

export interface FanOutDeps {
  ctx: EngineContext;
  life: EngineLife;
  members: MemberSet;
  faults: FaultCommit;
  locks: RegionLocks;
}

export class FanOut {
  private readonly ctx: EngineContext;
  private readonly life: EngineLife;
  private readonly members: MemberSet;
  private readonly faults: FaultCommit;
  private readonly locks: RegionLocks;
  /** The current sweep interval: requests count in slot `tick & MASK` of their replica's ring. */
  private tick = 0;
  private allSlowWarned = false;
  /** Mutating requests from entry (mutate) to settlement. */
  private mutating = 0;
  /** Closed by a write barrier: resolves when it opens. */
  private gate: Promise<void> | undefined;
  /** Who waits for `mutating` to reach 0 (write barriers). */
  private drainWaiters: (() => void)[] = [];

  constructor(deps: FanOutDeps) {
    this.ctx = deps.ctx;
    this.life = deps.life;
    this.members = deps.members;
    this.faults = deps.faults;
    this.locks = deps.locks;
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.mutate(Kind.Write, offset, data.byteLength, data, fua);
  }

  /** A write in pieces: the local replica writes them with one pwritev; remote ones get them joined once. */
  writev(offset: number, parts: readonly Uint8Array[], fua: boolean): Promise<void> {
    let length = 0;
    for (const p of parts) length += p.byteLength;
    return this.mutate(Kind.Write, offset, length, new Payload(parts, length), fua);
  }

  /** A read into caller-owned buffers (straight from the local replica's device when it reads). */
  async readInto(offset: number, targets: readonly Uint8Array[]): Promise<void> {
    let length = 0;
    for (const t of targets) length += t.byteLength;
    const io = this.members.readMember?.io;
    if (io?.readInto && this.members.readMember?.role === 'in-sync') {
      const counts = this.members.readMember.inflight;
      const slot = this.tick & MASK;
      counts[slot]!++;
      try {
        await io.readInto(offset, targets);
        this.throwIfFenced();
        return;
      } catch {
        // Decided by the full read path below (fencing, faulting, retrying on another replica).
        // A cancelled local read may still complete later and write the local replica's
        // bytes into `targets` over what the fallback put there (LocalReplicaIo holds them,
        // so they are never reused meanwhile). Those bytes are fine to return: the local
        // replica was in sync when the read started, so it holds every write acknowledged
        // before it, and whatever it lacks is a write concurrent with this read, which a
        // read may return either way. (A rebuild writes it only data from in-sync sources.)
      } finally {
        counts[slot]!--;
      }
    }
    const data = await this.read(offset, length);
    let at = 0;
    for (const t of targets) {
      t.set(data.subarray(at, at + t.byteLength));
      at += t.byteLength;
    }
  }

  trim(offset: number, lengthBytes: number): Promise<void> {
    return this.mutate(Kind.Trim, offset, lengthBytes, undefined, false);
  }

  writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    return this.mutate(Kind.Zeroes, offset, lengthBytes, undefined, mayTrim);
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    const refused = this.refuse(offset, lengthBytes);
    if (refused) throw refused;
    for (;;) {
      const m = this.members.readMember;
      const io = m?.io;
      if (!m || !io) throw noInSyncError(this.ctx);
      const counts = m.inflight;
      const slot = this.tick & MASK;
      counts[slot]!++;
      try {
        const data = await io.read(offset, lengthBytes);
        this.throwIfFenced();
        return data;
      } catch (raw) {
        this.throwIfFenced();
        const err = replicaError(m, raw, this.ctx.timeoutMs);
        if (isStaleEpoch(err)) throw this.life.fence(newestEpochOf(err), err);
        if (isCallerFault(err)) throw err;
        if (m.removed || m.role !== 'in-sync' || m.io !== io) continue; // dropped meanwhile: the next choice
        if (this.members.inSync.length <= 1) throw err;
        this.faults.fault(m, `read failed: ${err.message}`);
        const wait = this.faults.markMissed(m, offset, lengthBytes, false);
        if (wait) await wait;
      } finally {
        counts[slot]!--;
      }
    }
  }

  async flush(): Promise<void> {
    const refused = this.refuse(0, 0);
    if (refused) throw refused;
    await this.flushTargets();
  }

  /** Flushes every target; a target whose flush failed is faulted. Also used by close(). */
  async flushTargets(): Promise<void> {
    this.throwIfFenced();
    const targets = this.members.targets;
    const inSyncCount = this.members.inSync.length;
    if (inSyncCount === 0) throw noInSyncError(this.ctx);
    const errs = await Promise.all(targets.map((m) => this.send(m, Kind.Flush, 0, 0, undefined, false)));
    // A replica whose flush failed is faulted; fault() marks what it had not flushed.
    let wait = errs.some((e) => e !== undefined) ? this.afterFailures(targets, inSyncCount, errs, 0, 0, false) : undefined;
    // A replica that a concurrent request took out of the I/O path got no flush, and may hold
    // acknowledged writes it never flushed: the flush waits until its fault is recorded.
    for (const m of this.members.missing) wait = join(wait, m.faultPending);
    if (wait) await wait;
    this.throwIfFenced();
  }

  /** The rebuild's I/O, counted with the live I/O so that the sweep times it out too. */
  tracked(m: Member, io: ReplicaIo): ReplicaIo {
    const track = <T>(call: () => Promise<T>): Promise<T> => {
      const counts = m.inflight;
      const slot = this.tick & MASK;
      counts[slot]!++;
      return call().finally(() => counts[slot]!--);
    };
    return {
      replicaId: io.replicaId, nodeId: io.nodeId, local: io.local,
      write: (offset, data, fua) => track(() => io.write(offset, data, fua)),
      read: (offset, lengthBytes) => track(() => io.read(offset, lengthBytes)),
      flush: () => track(() => io.flush()),
      trim: (offset, lengthBytes) => track(() => io.trim(offset, lengthBytes)),
      writeZeroes: (offset, lengthBytes, mayTrim) => track(() => io.writeZeroes(offset, lengthBytes, mayTrim)),
      close: () => io.close(),
      cancel: () => io.cancel(),
    };
  }

  // --- the write barrier's gate ----------------------------------------------------------

  /** New mutating requests wait until `opened` resolves (or `openGate` is called). */
  closeGate(opened: Promise<void>): void {
    this.gate = opened;
  }

  openGate(): void {
    this.gate = undefined;
  }

  /** Resolves once no mutating request is in flight (with the gate closed, it stays so). */
  drained(): Promise<void> {
    if (this.mutating === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private settled(): void {
    if (--this.mutating === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  // --- timeouts ---------------------------------------------------------------------------

  /** Runs every replicaTimeoutMs / 4: drops the connection of a replica whose requests are overdue. */
  sweep(): void {
    this.tick++;
    let slow: Member[] | undefined;
    for (const m of this.members.targets) {
      if (!m.io || m.timedOut || !overdue(m.inflight, this.tick)) continue;
      if (m.role === 'write-only') this.timeOut(m);
      else (slow ??= []).push(m);
    }
    if (!slow) {
      this.allSlowWarned = false;
      return;
    }
    // Never drop the last in-sync replicas: with none left there is nothing to continue on.
    if (slow.length < this.members.inSync.length) {
      for (const m of slow) this.timeOut(m);
    } else if (!this.allSlowWarned) {
      this.allSlowWarned = true;
      this.ctx.log.warn({ replicas: slow.map((m) => m.id), timeoutMs: this.ctx.timeoutMs }, 'every in-sync replica is slower than the timeout; waiting for them');
    }
  }

  private timeOut(m: Member): void {
    m.timedOut = true;
    this.ctx.log.warn({ replica: m.id, replicaNode: m.entry.nodeId, timeoutMs: this.ctx.timeoutMs }, 'replica did not answer in time; dropping its connection');
    m.io?.cancel();
  }

  // --- writes ---------------------------------------------------------------------------

  private mutate(kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | Payload | undefined, flag: boolean): Promise<void> {
    if (this.gate) return this.gate.then(() => this.mutate(kind, offset, lengthBytes, data, flag));
    const refused = this.refuse(offset, lengthBytes);
    if (refused) return Promise.reject(refused);
    this.mutating++; // settled() in fanOut, or below when the lock is never granted
    const release = this.locks.tryShared(offset, lengthBytes);
    if (release) return this.fanOut(kind, offset, lengthBytes, data, flag, release);
    return this.locks.shared(offset, lengthBytes).then((r) => this.fanOut(kind, offset, lengthBytes, data, flag, r), (err: unknown) => {
      this.settled();
      throw err;
    });
  }

  private async fanOut(kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | Payload | undefined, flag: boolean, release: () => void): Promise<void> {
    try {
      let wait: Promise<void> | undefined;
      try {
        this.throwIfFenced();
        const targets = this.members.targets;
        const inSyncCount = this.members.inSync.length;
        if (inSyncCount === 0) throw noInSyncError(this.ctx);
        if (this.members.missing.length > 0) wait = this.faults.noteMissed(offset, lengthBytes);
        if (targets.length === 1) {
          const err = await this.send(targets[0]!, kind, offset, lengthBytes, data, flag);
          if (err) wait = join(wait, this.afterFailures(targets, inSyncCount, [err], offset, lengthBytes, false));
        } else {
          const errs = await Promise.all(targets.map((m) => this.send(m, kind, offset, lengthBytes, data, flag)));
          if (errs.some((e) => e !== undefined)) wait = join(wait, this.afterFailures(targets, inSyncCount, errs, offset, lengthBytes, false));
        }
      } catch (err) {
        wait?.catch(noop); // the request failed: nobody waits for the commit any more
        throw this.life.fencedError() ?? err;
      } finally {
        // Every target has answered: the region may be copied by a rebuild from now on.
        release();
      }
      if (wait) await wait;
      this.throwIfFenced();
    } finally {
      // Settled, fault commit included: a write barrier may go on.
      this.settled();
    }
  }

  private issue(io: ReplicaIo, kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | Payload | undefined, flag: boolean): Promise<void> {
    switch (kind) {
      case Kind.Write:
        if (!(data instanceof Payload)) return io.write(offset, data!, flag);
        return io.writev ? io.writev(offset, data.parts, flag) : io.write(offset, data.whole(), flag);
      case Kind.Trim: return io.trim(offset, lengthBytes);
      case Kind.Zeroes: return io.writeZeroes(offset, lengthBytes, flag);
      default: return io.flush();
    }
  }

  /** One target's part of a request: its error, or undefined. */
  private async send(m: Member, kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | Payload | undefined, flag: boolean): Promise<StorageError | undefined> {
    const io = m.io;
    if (!io) return this.noIo(m);
    const counts = m.inflight;
    const slot = this.tick & MASK;
    counts[slot]!++;
    let covered: RegionMap | undefined;
    if (kind === Kind.Flush && m.unflushed) {
      covered = m.unflushed;
      m.unflushed = undefined;
      m.flushing.add(covered);
    }
    try {
      await this.issue(io, kind, offset, lengthBytes, data, flag);
      if (covered) {
        m.flushing.delete(covered);
        covered.clearAll();
        m.spareUnflushed = covered;
      } else if (kind !== Kind.Flush && !(kind === Kind.Write && flag) && m.io === io) {
        if (!m.unflushed) {
          m.unflushed = m.spareUnflushed ?? new RegionMap(this.ctx.sizeBytes, this.ctx.regionBytes);
          m.spareUnflushed = undefined;
        }
        m.unflushed.markRange(offset, lengthBytes);
      }
      return undefined;
    } catch (err) {
      return replicaError(m, err, this.ctx.timeoutMs);
    } finally {
      counts[slot]!--;
    }
  }

  /**
   * Decides what the failures of one request mean. Throws what the caller gets (a stale
   * epoch fences; a caller's mistake; a failure on every in-sync replica); otherwise faults
   * the failed replicas and returns what the acknowledgement must wait for.
   */
  private afterFailures(targets: readonly Member[], inSyncCount: number, errs: readonly (StorageError | undefined)[],
    offset: number, lengthBytes: number, whole: boolean): Promise<void> | undefined {
    this.throwIfFenced();
    let callerError: StorageError | undefined;
    let inSyncError: StorageError | undefined;
    let survivors = 0;
    for (let i = 0; i < errs.length; i++) {
      const e = errs[i];
      if (!e) {
        if (i < inSyncCount && targets[i]!.role === 'in-sync') survivors++;
        continue;
      }
      if (isStaleEpoch(e)) throw this.life.fence(newestEpochOf(e), e);
      if (i >= inSyncCount) continue; // a write-only target: any error faults it
      if (isCallerFault(e)) callerError ??= e;
      else inSyncError ??= e;
    }
    if (callerError) throw callerError;
    if (inSyncError && survivors === 0) throw inSyncError;
    let wait: Promise<void> | undefined;
    for (let i = 0; i < errs.length; i++) {
      const e = errs[i];
      const m = targets[i]!;
      if (!e || m.removed) continue;
      if (m.role !== 'out') this.faults.fault(m, e.message);
      wait = join(wait, this.faults.markMissed(m, offset, lengthBytes, whole));
    }
    return wait;
  }

  // --- errors -----------------------------------------------------------------------------

  private throwIfFenced(): void {
    const fenced = this.life.fencedError();
    if (fenced) throw fenced;
  }

  private refuse(offset: number, lengthBytes: number): StorageError | undefined {
    const fenced = this.life.fencedError();
    if (fenced) return fenced;
    const { name, volumeId, sizeBytes } = this.ctx;
    if (this.life.closing()) return new StorageError(Code.UNAVAILABLE, `the engine of volume ${name} is closed`, { details: { volumeId } });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(lengthBytes) || offset < 0 || lengthBytes < 0 || offset + lengthBytes > sizeBytes) {
      return new StorageError(Code.OUT_OF_RANGE, `range [${offset}, ${offset + lengthBytes}) is outside volume ${name} of ${sizeBytes} bytes`,
        { details: { volumeId, offset, lengthBytes } });
    }
    return undefined;
  }

  private noIo(m: Member): StorageError {
    return new StorageError(Code.UNAVAILABLE, `replica ${m.id} has no open connection`, { details: { replica: m.id } });
  }
}
