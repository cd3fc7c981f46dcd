/**
 * The volume engine: one per staged volume, on the node that serves it. It is a
 * `BlockDevice` (the NBD server serves it) that fans every request out to the volume's
 * replicas and keeps the replication contract (DESIGN.md, rules 1-4):
 *
 * - Writes, trims and write-zeroes go to every in-sync replica and every write-only
 *   (rebuilding) one at once, under a shared region lock. A replica that fails or does not
 *   answer within `replicaTimeoutMs` leaves the in-sync set: its dirty-region map is marked
 *   and saved, and `EngineControl.markFaulted` is durable, before the write is acknowledged.
 *   A write that failed on every in-sync replica is an error to the caller and changes
 *   nothing: the last in-sync replica is never faulted.
 * - Writes a replica misses while it is out of sync set bits of its map (saved before the
 *   write is acknowledged, many at once: group commit), so its return copies only those.
 *   A map the node store cannot save is replaced by `fullRebuild` on the replica's entry
 *   in the document (fault-commit.ts); an engine started on such an entry copies everything.
 * - Reads come from the local in-sync replica, else the first in-sync remote one; a read
 *   error faults that replica and the read is retried on another.
 * - A flush is acknowledged once every remaining in-sync replica flushed. A replica that
 *   fails (a flush or anything else) is faulted with the regions it acknowledged since its
 *   last successful flush marked too: its node may have lost them from its page cache.
 * - Out-of-sync replicas are retried every `reconnectIntervalMs`; one that answers is
 *   marked rebuilding, gets every live write from then on, and is copied from an in-sync
 *   source (`runRebuild`); it rejoins the in-sync set after the copy and the checksum
 *   comparison agreed.
 * - The document calls a replica "rebuilding" only while this engine writes to it and the
 *   replica's own rebuild checkpoint covers every region it lacks (pushed to it before
 *   markRebuilding); replicas the document calls rebuilding at start are marked faulted
 *   until this engine reaches them. So an engine started on another node, without this
 *   node's dirty maps, may resume from that checkpoint. A write-only target that fails is
 *   faulted durably before the write is acknowledged, for the same reason.
 * - A stale-epoch refusal, or a control call refused as FAILED_PRECONDITION, means a newer
 *   engine owns the volume: this one fails every request from then on (fenced).
 *
 * The parts, each in its own file: the replicas and their groups (engine-member.ts,
 * member-set.ts), the I/O path and the timeout sweep (fan-out.ts, whose header says how the
 * hot path stays cheap), faults and the group commit of maps and markFaulted
 * (fault-commit.ts), reconnect and rebuild (engine-rebuild.ts), opening the replicas at
 * start (engine-start.ts), the reconcile after an unclean stop (engine-reconcile.ts). This
 * class wires them, starts and stops them, follows the volume document and fences.
 */
import { Code, StorageError } from '../common/errors.js';
import type { DeviceId, NodeId, SnapshotId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import type { BlockDevice } from '../pool/backend.js';
import { type EngineContext, type EngineLife, Member, MemberMaps } from './engine-member.js';
import { Reconciler } from './engine-reconcile.js';
import { Rebuilder } from './engine-rebuild.js';
import { openMembers } from './engine-start.js';
import type {
  DirtyMapStore, EngineControl, EngineReplicaView, EngineVolumeDoc, ReplicaConnector, VolumeReplicaEntry, VolumeSnapshotResult,
} from './engine-types.js';
import { FanOut } from './fan-out.js';
import { FaultCommit } from './fault-commit.js';
import { MemberSet } from './member-set.js';
import { growMember } from './engine-resize.js';
import { RegionLocks, RegionMap } from './region-map.js';
import { type BarrierPhases, WriteBarrier } from './write-barrier.js';

export interface VolumeEngineOptions {
  volumeId: VolumeId;
  name: string;
  sizeBytes: number;
  regionBytes: number;
  epoch: number;
  /** The replicas of the volume document. */
  replicas: VolumeReplicaEntry[];
  localNodeId: NodeId;
  connector: ReplicaConnector;
  control: EngineControl;
  dirtyMaps: DirtyMapStore;
  /** A replica that has not answered a request for this long is dropped; 8000 by default. */
  replicaTimeoutMs?: number;
  /** Rebuild copy rate; 0 (the default) is unlimited. */
  rebuildRateBytesPerSec?: number;
  /** How often out-of-sync replicas are tried again; 2000 by default. */
  reconnectIntervalMs?: number;
  log: Logger;
  /** Called once when the engine finds itself fenced by a newer one. */
  onFenced?: (err: StorageError) => void;
}

export class VolumeEngine implements BlockDevice {
  readonly id: DeviceId;
  readonly volumeId: VolumeId;
  readonly name: string;
  readonly regionBytes: number;
  /** Grows while the engine runs (`resize`); everything reads it through `ctx.sizeBytes`. */
  private size: number;
  private readonly ctx: EngineContext;
  private readonly life: EngineLife;
  private readonly log: Logger;
  private readonly locks: RegionLocks;
  private readonly members: MemberSet;
  private readonly maps: MemberMaps;
  private readonly faults: FaultCommit;
  private readonly fanOut: FanOut;
  private readonly rebuilder: Rebuilder;
  private readonly reconciler: Reconciler;
  private readonly barrier: WriteBarrier;
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private fencedError: StorageError | undefined;
  private started = false;
  private closing = false;
  private closed: Promise<void> | undefined;

  private constructor(private readonly opts: VolumeEngineOptions) {
    this.id = opts.volumeId as string as DeviceId;
    this.volumeId = opts.volumeId;
    this.name = opts.name;
    this.size = opts.sizeBytes;
    this.regionBytes = opts.regionBytes;
    this.log = opts.log.child({ volume: opts.name, volumeId: opts.volumeId, epoch: opts.epoch });
    const sizeNow = (): number => this.size;
    const ctx: EngineContext = this.ctx = Object.freeze({
      volumeId: opts.volumeId, name: opts.name, epoch: opts.epoch, get sizeBytes(): number { return sizeNow(); }, regionBytes: opts.regionBytes,
      timeoutMs: opts.replicaTimeoutMs ?? 8000, reconnectMs: opts.reconnectIntervalMs ?? 2000, log: this.log,
    });
    const life: EngineLife = this.life = {
      fencedError: () => this.fencedError,
      closing: () => this.closing,
      fence: (newerEpoch, cause) => this.fence(newerEpoch, cause),
    };
    const locks = this.locks = new RegionLocks(opts.sizeBytes, opts.regionBytes);
    const members = this.members = new MemberSet(opts.localNodeId);
    const maps = this.maps = new MemberMaps(opts.dirtyMaps, ctx);
    const faults = this.faults = new FaultCommit({ ctx, life, members, maps, control: opts.control });
    const fanOut = this.fanOut = new FanOut({ ctx, life, members, faults, locks });
    this.rebuilder = new Rebuilder({
      ctx, life, members, maps, faults, connector: opts.connector, control: opts.control, locks,
      rateBytesPerSec: opts.rebuildRateBytesPerSec ?? 0, tracked: (m, io) => fanOut.tracked(m, io),
    });
    const reconciler = this.reconciler = new Reconciler({ ctx, life, members, faults, connector: opts.connector, locks });
    this.barrier = new WriteBarrier({ ctx, life, members, fanOut, connector: opts.connector, reconciling: () => reconciler.current !== undefined });
    for (const entry of opts.replicas) members.add(new Member(entry));
  }

  /**
   * Opens I/O to every in-sync replica. Those that cannot be reached are faulted (durably)
   * before this resolves; UNAVAILABLE when none can; FAILED_PRECONDITION when a replica
   * has seen a newer epoch.
   */
  static async start(opts: VolumeEngineOptions): Promise<VolumeEngine> {
    const engine = new VolumeEngine(opts);
    try {
      await engine.open();
    } catch (err) {
      engine.abandon();
      throw err;
    }
    return engine;
  }

  get epoch(): number {
    return this.ctx.epoch;
  }

  get fenced(): boolean {
    return this.fencedError !== undefined;
  }

  get sizeBytes(): number {
    return this.size;
  }

  /**
   * The volume grew to `sizeBytes` (online expansion; the lifecycle grew every replica
   * before it raised the document's size). Region locks and every member's maps grow first,
   * the out-of-sync members' new regions set and saved (engine-resize.ts); only then are
   * requests past the old end accepted. NBD clients connecting from now on see the new
   * size; connected ones keep theirs until they ask again (the protocol cannot tell them).
   * Not smaller, not when fenced or closing: false, nothing changes.
   */
  resize(sizeBytes: number): boolean {
    if (sizeBytes <= this.size || this.closing || this.fencedError) return false;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes % 512 !== 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, `volume size must be a whole multiple of 512 bytes, got ${sizeBytes}`, { details: { volumeId: this.volumeId } });
    }
    const previousBytes = this.size;
    this.locks.grow(sizeBytes);
    const changed: Member[] = [];
    for (const m of this.members.values()) if (growMember(m, previousBytes, sizeBytes, this.regionBytes)) changed.push(m);
    this.size = sizeBytes;
    for (const m of changed) this.faults.saveNow(m);
    this.log.info({ sizeBytes, previousBytes, outOfSync: changed.map((m) => m.id) }, 'volume engine grew; the new area is served from now on');
    return true;
  }

  // --- BlockDevice (the I/O path is fan-out.ts) -----------------------------------------

  write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    return this.fanOut.write(offset, data, fua);
  }

  trim(offset: number, lengthBytes: number): Promise<void> {
    return this.fanOut.trim(offset, lengthBytes);
  }

  writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    return this.fanOut.writeZeroes(offset, lengthBytes, mayTrim);
  }

  writev(offset: number, parts: readonly Uint8Array[], fua = false): Promise<void> {
    return this.fanOut.writev(offset, parts, fua);
  }

  readInto(offset: number, targets: readonly Uint8Array[]): Promise<void> {
    return this.fanOut.readInto(offset, targets);
  }

  read(offset: number, lengthBytes: number): Promise<Buffer> {
    return this.fanOut.read(offset, lengthBytes);
  }

  flush(): Promise<void> {
    return this.fanOut.flush();
  }

  close(): Promise<void> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  // --- snapshots ------------------------------------------------------------------------

  /**
   * A crash-consistent snapshot at a write barrier (write-barrier.ts): new writes wait, those
   * in flight and pending fault records finish, every in-sync replica is flushed and copied
   * under `snapshotId`, writes resume. All copies or none; writes never stay paused past
   * `deadlineMs` (DEADLINE_EXCEEDED). ABORTED while another snapshot of the volume runs.
   */
  snapshot(snapshotId: SnapshotId, opts: { deadlineMs: number }): Promise<VolumeSnapshotResult> {
    return this.barrier.snapshot(snapshotId, opts.deadlineMs);
  }

  /** The barrier's phases, for a group snapshot (one cut across engines): pause, cut, resume, finish, abort. */
  get barrierPhases(): BarrierPhases {
    return this.barrier;
  }

  /** Resolves once copies that finished after their barrier's deadline are deleted. */
  snapshotsSettled(): Promise<void> {
    return this.barrier.settled();
  }

  // --- the volume document and views --------------------------------------------------

  /** The volume document changed: it grew, new replicas are rebuilt, removed ones dropped, a newer epoch fences. */
  applyDoc(doc: EngineVolumeDoc): void {
    if (doc.id !== this.volumeId) return;
    if (doc.epoch > this.ctx.epoch) {
      this.fence(doc.epoch);
      return;
    }
    if (this.closing || this.fencedError) return;
    if (doc.sizeBytes !== undefined) this.resize(doc.sizeBytes);
    let added = false;
    for (const entry of doc.replicas) {
      if (this.members.has(entry.id)) continue;
      const m = new Member(entry);
      m.outState = entry.state === 'faulted' ? 'faulted' : 'rebuilding';
      m.map = RegionMap.full(this.sizeBytes, this.regionBytes);
      this.members.add(m);
      this.faults.saveNow(m); // never throws: a save the node store refuses is retried
      this.log.info({ replica: m.id, replicaNode: entry.nodeId }, 'replica added to the volume; it will be rebuilt in full');
      added = true;
    }
    const wanted = new Set(doc.replicas.map((r) => r.id));
    for (const m of [...this.members.values()]) if (!wanted.has(m.id)) this.remove(m);
    this.members.refresh();
    if (added) this.rebuilder.reconnectAll();
  }

  /**
   * A node registered again (its daemon is back): try its out-of-sync replicas now rather
   * than at the next reconnect tick. Back-off after failed rebuilds still applies.
   */
  nodeReturned(nodeId: string): void {
    if ([...this.members.values()].some((m) => m.entry.nodeId === nodeId && m.role === 'out')) this.rebuilder.reconnectAll();
  }

  /**
   * After an unclean stop of the previous engine: makes the other in-sync replicas equal to
   * the one reads come from, in the background (engine-reconcile.ts). Never rejects.
   */
  reconcile(): Promise<void> {
    return this.reconciler.start();
  }

  replicaViews(): EngineReplicaView[] {
    return this.members.views(this.sizeBytes);
  }

  // --- start ----------------------------------------------------------------------------

  private async open(): Promise<void> {
    await openMembers({ ctx: this.ctx, life: this.life, members: this.members, maps: this.maps, faults: this.faults, connector: this.opts.connector, control: this.opts.control });
    this.started = true;
    this.sweepTimer = setInterval(() => this.fanOut.sweep(), Math.max(1, Math.floor(this.ctx.timeoutMs / 4)));
    this.sweepTimer.unref();
    this.reconnectTimer = setInterval(() => this.rebuilder.reconnectAll(), this.ctx.reconnectMs);
    this.reconnectTimer.unref();
    setImmediate(() => this.rebuilder.reconnectAll());
    this.log.info({ inSync: this.members.inSync.map((m) => m.id), outOfSync: this.members.missing.map((m) => m.id), read: this.members.readMember?.id }, 'volume engine started');
  }

  private abandon(): void {
    this.closing = true;
    this.stopTimers();
    for (const m of this.members.values()) {
      m.io?.cancel();
      m.io = undefined;
    }
  }

  // --- membership -------------------------------------------------------------------------

  private remove(m: Member): void {
    const was = m.role;
    m.removed = true;
    m.role = 'out';
    this.members.delete(m);
    m.rebuild?.abort.abort();
    if (was === 'in-sync') this.faults.sourceGone(m);
    const io = m.io;
    m.io = undefined;
    if (io) withTimeout(io.close(), this.ctx.timeoutMs, `closing replica ${m.id}`).catch(() => io.cancel());
    this.maps.delete(m);
    this.log.info({ replica: m.id, replicaNode: m.entry.nodeId, role: was }, 'replica removed from the volume; no longer used');
  }

  // --- fencing, shutdown ------------------------------------------------------------------

  /** Stops acknowledging anything; returns the error every request gets from now on. */
  private fence(newerEpoch: number | undefined, cause?: unknown): StorageError {
    if (this.fencedError) return this.fencedError;
    const { epoch } = this.ctx;
    const epochText = newerEpoch !== undefined ? `epoch ${newerEpoch}` : `epoch > ${epoch}`;
    const err = new StorageError(Code.FAILED_PRECONDITION,
      `volume ${this.name} was started by a newer engine (${epochText}); this engine is fenced and acknowledges nothing more`,
      { cause, details: { volumeId: this.volumeId, epoch, newerEpoch } });
    this.fencedError = err;
    this.log.warn({ newerEpoch, err: cause instanceof Error ? cause.message : undefined }, 'volume engine fenced by a newer one');
    this.stopTimers();
    this.reconciler.current?.abort.abort();
    for (const m of this.members.values()) {
      m.rebuild?.abort.abort();
      m.io?.cancel();
      m.io = undefined;
    }
    if (this.started) {
      try {
        this.opts.onFenced?.(err);
      } catch (e) {
        this.log.error({ err: e }, 'onFenced handler threw');
      }
    }
    return err;
  }

  private async shutdown(): Promise<void> {
    this.closing = true;
    this.stopTimers();
    const runs: { abort: AbortController; settled: Promise<void> }[] = [...this.members.values()].flatMap((m) => (m.rebuild ? [m.rebuild] : []));
    if (this.reconciler.current) runs.push(this.reconciler.current);
    for (const r of runs) r.abort.abort();
    await Promise.all(runs.map((r) => r.settled));
    let failure: unknown;
    if (!this.fencedError && this.members.inSync.length > 0) {
      try {
        await this.fanOut.flushTargets();
      } catch (err) {
        failure = err;
      }
    }
    await Promise.all([...this.members.values()].map(async (m) => {
      const io = m.io;
      m.io = undefined;
      if (io) await io.close().catch(() => io.cancel());
    }));
    this.log.info({ fenced: this.fenced }, 'volume engine closed');
    if (failure) throw failure;
  }

  private stopTimers(): void {
    clearInterval(this.sweepTimer);
    clearInterval(this.reconnectTimer);
    this.sweepTimer = undefined;
    this.reconnectTimer = undefined;
  }
}
