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
 * Hot path: no timer or closure per request beyond the promises; timeouts are found by one
 * sweep timer that looks at per-replica counters of requests in flight by start interval.
 */
import { Code, StorageError, fromNodeError, isStaleEpoch, isStorageError } from '../common/errors.js';
import type { DeviceId, NodeId, ReplicaId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import type { VolumeDoc, VolumeReplicaEntry } from '../cluster/volume-doc.js';
import type { BlockDevice } from '../pool/backend.js';
import { MAX_CHECKPOINT_BYTES } from '../replica/replica-manager.js';
import type { DirtyMapStore, EngineControl, EngineReplicaView, ReplicaConnector, ReplicaControl, ReplicaIo } from './engine-types.js';
import { runRebuild, type RebuildProgress } from './rebuild.js';
import { runReconcile } from './reconcile.js';
import { RegionLocks, RegionMap } from './region-map.js';

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

/** Where a replica's I/O goes: all of it, writes only (rebuilding), or nowhere. */
type Role = 'in-sync' | 'write-only' | 'out';
const enum Kind { Write, Trim, Zeroes, Flush }

/** Requests in flight are counted per sweep interval in a ring of this many. */
const RING = 8;
const MASK = RING - 1;
/** Longest wait before a replica whose rebuilds keep failing is tried again. */
const MAX_RETRY_MS = 60_000;
/** Intervals (of replicaTimeoutMs / 4) after which a request still in flight is overdue. */
const OVERDUE_INTERVALS = 5;

interface RebuildRun {
  abort: AbortController;
  settled: Promise<void>;
  /** While runRebuild runs, it owns `map`: marks go to `deferred` and are merged after. */
  copying: boolean;
  sourceId: ReplicaId | undefined;
  sourceLost: boolean;
  progress: RebuildProgress | undefined;
}

class Member {
  role: Role = 'out';
  /** What views show while the replica is out: faulted, or rebuilding as the document said at start. */
  outState: 'faulted' | 'rebuilding' = 'faulted';
  io: ReplicaIo | undefined;
  /** Requests in flight on `io`, by the sweep interval they started in. */
  inflight = new Int32Array(RING);
  timedOut = false;
  /** Regions the replica may lack; undefined while in sync. */
  map: RegionMap | undefined;
  /** False: `map` holds only what this engine saw the replica miss, on top of an unknown base; never saved. */
  mapKnown = true;
  /** The base may come from the target's rebuild checkpoint (the document said it was rebuilding). */
  checkpointOk = false;
  deferred: RegionMap | undefined;
  /** Regions written on `io` since the last flush was sent: lost if its node crashes before a flush. */
  unflushed: RegionMap | undefined;
  /** The `unflushed` maps of flushes still in flight. */
  readonly flushing = new Set<RegionMap>();
  rebuild: RebuildRun | undefined;
  /** The commit that makes its fault durable, while pending: writes it misses wait for it. */
  faultPending: Promise<void> | undefined;
  connecting = false;
  /** Rebuilds that failed in a row, and when the next reconnect may be tried (back-off). */
  failures = 0;
  retryAt = 0;
  /** The document calls it rebuilding (after its checkpoint was refreshed). */
  announced = false;
  removed = false;
  constructor(readonly entry: VolumeReplicaEntry) {}
  get id(): ReplicaId {
    return this.entry.id;
  }
}

interface CommitBatch {
  saves: Set<Member>;
  faults: Map<Member, string>;
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

const noop = (): void => undefined;
const isCallerFault = (e: StorageError): boolean => e.code === Code.INVALID_ARGUMENT || e.code === Code.OUT_OF_RANGE;
const newestEpochOf = (e: StorageError): number | undefined => (typeof e.details.newestEpoch === 'number' ? e.details.newestEpoch : undefined);
const join = (a: Promise<void> | undefined, b: Promise<void> | undefined): Promise<void> | undefined => (!a ? b : !b ? a : Promise.all([a, b]).then(noop));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class VolumeEngine implements BlockDevice {
  readonly id: DeviceId;
  readonly volumeId: VolumeId;
  readonly name: string;
  readonly sizeBytes: number;
  readonly regionBytes: number;
  private readonly epochValue: number;
  private readonly timeoutMs: number;
  private readonly reconnectMs: number;
  private readonly log: Logger;
  private readonly locks: RegionLocks;
  private readonly members = new Map<ReplicaId, Member>();
  private inSync: Member[] = [];
  private writeOnly: Member[] = [];
  /** inSync followed by writeOnly: where writes go. */
  private targets: Member[] = [];
  /** Members out of sync and not written to: writes mark their maps. */
  private missing: Member[] = [];
  private readMember: Member | undefined;
  private tick = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private allSlowWarned = false;
  private batch: CommitBatch | undefined;
  /** Control calls run one after another, so the store sees them in the engine's order. */
  private controlChain: Promise<unknown> = Promise.resolve();
  private fencedError: StorageError | undefined;
  private started = false;
  private closing = false;
  private closed: Promise<void> | undefined;
  private reconciling: { abort: AbortController; settled: Promise<void> } | undefined;

  private constructor(private readonly opts: VolumeEngineOptions) {
    this.id = opts.volumeId as string as DeviceId;
    this.volumeId = opts.volumeId;
    this.name = opts.name;
    this.sizeBytes = opts.sizeBytes;
    this.regionBytes = opts.regionBytes;
    this.epochValue = opts.epoch;
    this.timeoutMs = opts.replicaTimeoutMs ?? 8000;
    this.reconnectMs = opts.reconnectIntervalMs ?? 2000;
    this.log = opts.log.child({ volume: opts.volumeId, epoch: opts.epoch });
    this.locks = new RegionLocks(opts.sizeBytes, opts.regionBytes);
    for (const entry of opts.replicas) this.members.set(entry.id, new Member(entry));
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
    return this.epochValue;
  }

  get fenced(): boolean {
    return this.fencedError !== undefined;
  }

  // --- BlockDevice --------------------------------------------------------------------

  write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    return this.mutate(Kind.Write, offset, data.byteLength, data, fua);
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
      const m = this.readMember;
      const io = m?.io;
      if (!m || !io) throw this.noInSync();
      const counts = m.inflight;
      const slot = this.tick & MASK;
      counts[slot]!++;
      try {
        const data = await io.read(offset, lengthBytes);
        if (this.fencedError) throw this.fencedError;
        return data;
      } catch (raw) {
        if (this.fencedError) throw this.fencedError;
        const err = this.asError(m, raw);
        if (isStaleEpoch(err)) throw this.fence(newestEpochOf(err), err);
        if (isCallerFault(err)) throw err;
        if (m.removed || m.role !== 'in-sync' || m.io !== io) continue; // dropped meanwhile: the next choice
        if (this.inSync.length <= 1) throw err;
        this.fault(m, `read failed: ${err.message}`);
        const wait = this.markMissed(m, offset, lengthBytes, false);
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

  close(): Promise<void> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  // --- the volume document and views --------------------------------------------------

  /** The volume document changed: new replicas are rebuilt, removed ones dropped, a newer epoch fences. */
  applyDoc(doc: VolumeDoc): void {
    if (doc.id !== this.volumeId) return;
    if (doc.epoch > this.epochValue) {
      this.fence(doc.epoch);
      return;
    }
    if (this.closing || this.fencedError) return;
    let added = false;
    for (const entry of doc.replicas) {
      if (this.members.has(entry.id)) continue;
      const m = new Member(entry);
      m.outState = entry.state === 'faulted' ? 'faulted' : 'rebuilding';
      m.map = RegionMap.full(this.sizeBytes, this.regionBytes);
      this.members.set(entry.id, m);
      this.saveMap(m);
      this.log.info({ replica: m.id, node: entry.nodeId }, 'replica added to the volume; it will be rebuilt in full');
      added = true;
    }
    const wanted = new Set(doc.replicas.map((r) => r.id));
    for (const m of [...this.members.values()]) if (!wanted.has(m.id)) this.remove(m);
    this.rebuildSets();
    if (added) this.reconnectAll();
  }

  /**
   * After an unclean stop of the previous engine: makes the other in-sync replicas equal
   * to the one reads come from, region by region, in the background (see reconcile.ts).
   * A replica that fails meanwhile is faulted with its whole map set. Resolves when done
   * (it never rejects: a reconcile that stops is logged).
   */
  reconcile(): Promise<void> {
    const source = this.readMember;
    if (this.reconciling) return this.reconciling.settled;
    if (this.closing || this.fencedError || !source?.io) return Promise.resolve();
    const others = this.inSync.filter((m) => m !== source && m.io);
    if (others.length === 0) return Promise.resolve();
    const abort = new AbortController();
    const run = async (): Promise<void> => {
      const controlOf = (m: Member): Promise<ReplicaControl> => this.opts.connector.control(m.entry.nodeId);
      const peers = await Promise.all(others.map(async (m) => ({ m, io: m.io!, control: await controlOf(m) })));
      const result = await runReconcile({
        volumeId: this.volumeId, epoch: this.epochValue, sizeBytes: this.sizeBytes, regionBytes: this.regionBytes,
        source: { io: source.io!, control: await controlOf(source) }, others: peers.map(({ io, control }) => ({ io, control })),
        locks: this.locks, signal: abort.signal, log: this.log,
      });
      for (const [id, err] of result.failed) {
        const peer = peers.find((p) => p.m.id === id);
        if (!peer || peer.m.role !== 'in-sync' || peer.m.io !== peer.io || this.inSync.length <= 1) continue;
        this.fault(peer.m, `reconcile failed: ${err.message}`);
        void this.markMissed(peer.m, 0, this.sizeBytes, true);
      }
    };
    const settled = run().catch((err: unknown) => {
      if (!abort.signal.aborted && !this.fencedError) this.log.warn({ err: (err as Error).message }, 'reconcile stopped; replicas may differ in regions written just before the previous engine stopped');
    }).finally(() => {
      if (this.reconciling?.abort === abort) this.reconciling = undefined;
    });
    this.reconciling = { abort, settled };
    return settled;
  }

  replicaViews(): EngineReplicaView[] {
    return [...this.members.values()].map((m) => {
      const state = m.role === 'in-sync' ? 'in-sync' : m.role === 'write-only' ? 'rebuilding' : m.outState;
      const dirtyBytes = m.role === 'in-sync' ? 0 : m.map && m.mapKnown ? m.map.dirtyBytes() : this.sizeBytes;
      const view: EngineReplicaView = { replicaId: m.id, nodeId: m.entry.nodeId, state, dirtyBytes };
      if (m.role === 'write-only') {
        const p = m.rebuild?.progress;
        view.rebuild = p ? { ...p } : { doneBytes: 0, totalBytes: dirtyBytes, bytesPerSecond: 0 };
      }
      return view;
    });
  }

  // --- start ----------------------------------------------------------------------------

  private async open(): Promise<void> {
    const { failed, reasons } = await this.openInSync();
    for (const m of failed) {
      m.map = this.loadMap(m) ?? RegionMap.full(this.sizeBytes, this.regionBytes);
      this.saveMap(m);
    }
    const rebuilding: Member[] = [];
    for (const m of this.members.values()) {
      if (m.entry.state === 'in-sync') continue;
      if (m.entry.state === 'rebuilding') rebuilding.push(m);
      m.map = this.loadMap(m);
      if (!m.map) {
        m.map = new RegionMap(this.sizeBytes, this.regionBytes);
        m.mapKnown = false;
        m.checkpointOk = m.entry.state === 'rebuilding';
      }
    }
    this.rebuildSets();
    // A replica the document calls rebuilding is not written to until this engine reaches it: it
    // must not stay "rebuilding", or a later engine elsewhere would trust its rebuild checkpoint,
    // which lacks what this engine writes meanwhile.
    const toFault = [...failed, ...rebuilding];
    if (toFault.length > 0) {
      const why = [...reasons, ...rebuilding.map((m) => `${m.id}: rebuilding again once this engine reaches it`)];
      await this.controlStep(() => this.opts.control.markFaulted(toFault.map((m) => m.id), `engine start at epoch ${this.epochValue}: ${why.join('; ')}`));
      this.log.warn({ replicas: toFault.map((m) => m.id), reasons: why }, 'replicas not in the I/O path at engine start; faulted');
    }
    this.started = true;
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(1, Math.floor(this.timeoutMs / 4)));
    this.sweepTimer.unref();
    this.reconnectTimer = setInterval(() => this.reconnectAll(), this.reconnectMs);
    this.reconnectTimer.unref();
    setImmediate(() => this.reconnectAll());
    this.log.info({ inSync: this.inSync.map((m) => m.id), outOfSync: this.missing.map((m) => m.id), read: this.readMember?.id }, 'volume engine started');
  }

  /** Opens the in-sync replicas in parallel; throws when fenced or when none answers. */
  private async openInSync(): Promise<{ failed: Member[]; reasons: string[] }> {
    const wanted = [...this.members.values()].filter((m) => m.entry.state === 'in-sync');
    const results = await Promise.allSettled(wanted.map((m) => this.openIo(m)));
    const failed: Member[] = [];
    const reasons: string[] = [];
    let stale: StorageError | undefined;
    results.forEach((r, i) => {
      const m = wanted[i]!;
      if (r.status === 'fulfilled') {
        m.io = r.value;
        m.role = 'in-sync';
        return;
      }
      const err = this.asError(m, r.reason);
      if (isStaleEpoch(err)) stale ??= err;
      failed.push(m);
      reasons.push(`${m.id} on node ${m.entry.nodeId}: ${err.message}`);
    });
    if (stale) throw this.fence(newestEpochOf(stale), stale);
    if (failed.length === wanted.length) {
      throw new StorageError(Code.UNAVAILABLE, `no in-sync replica of volume ${this.name} is reachable: ${reasons.join('; ') || 'none is in sync'}`,
        { details: { volume: this.volumeId } });
    }
    return { failed, reasons };
  }

  private abandon(): void {
    this.closing = true;
    this.stopTimers();
    for (const m of this.members.values()) {
      m.io?.cancel();
      m.io = undefined;
    }
  }

  private loadMap(m: Member): RegionMap | undefined {
    const saved = this.opts.dirtyMaps.load(this.volumeId, m.id);
    if (!saved || saved.regionBytes !== this.regionBytes) return undefined;
    try {
      return new RegionMap(this.sizeBytes, this.regionBytes, saved.bits);
    } catch {
      return undefined;
    }
  }

  private openIo(m: Member): Promise<ReplicaIo> {
    const opening = this.opts.connector.openIo(this.volumeId, m.entry, this.epochValue);
    const bounded = withTimeout(opening, this.timeoutMs, `opening replica ${m.id} on node ${m.entry.nodeId}`);
    bounded.catch(() => opening.then((io) => io.cancel(), noop));
    return bounded;
  }

  // --- writes ---------------------------------------------------------------------------

  private mutate(kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | undefined, flag: boolean): Promise<void> {
    const refused = this.refuse(offset, lengthBytes);
    if (refused) return Promise.reject(refused);
    const release = this.locks.tryShared(offset, lengthBytes);
    if (release) return this.fanOut(kind, offset, lengthBytes, data, flag, release);
    return this.locks.shared(offset, lengthBytes).then((r) => this.fanOut(kind, offset, lengthBytes, data, flag, r));
  }

  private async fanOut(kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | undefined, flag: boolean, release: () => void): Promise<void> {
    let wait: Promise<void> | undefined;
    try {
      if (this.fencedError) throw this.fencedError;
      const targets = this.targets;
      const inSyncCount = this.inSync.length;
      if (inSyncCount === 0) throw this.noInSync();
      if (this.missing.length > 0) wait = this.noteMissed(offset, lengthBytes);
      if (targets.length === 1) {
        const err = await this.send(targets[0]!, kind, offset, lengthBytes, data, flag);
        if (err) wait = join(wait, this.afterFailures(targets, inSyncCount, [err], offset, lengthBytes, false));
      } else {
        const errs = await Promise.all(targets.map((m) => this.send(m, kind, offset, lengthBytes, data, flag)));
        if (errs.some((e) => e !== undefined)) wait = join(wait, this.afterFailures(targets, inSyncCount, errs, offset, lengthBytes, false));
      }
    } catch (err) {
      wait?.catch(noop); // the request failed: nobody waits for the commit any more
      throw this.fencedError ?? err;
    } finally {
      // Every target has answered: the region may be copied by a rebuild from now on.
      release();
    }
    if (wait) await wait;
    if (this.fencedError) throw this.fencedError;
  }

  private async flushTargets(): Promise<void> {
    if (this.fencedError) throw this.fencedError;
    const targets = this.targets;
    const inSyncCount = this.inSync.length;
    if (inSyncCount === 0) throw this.noInSync();
    const errs = await Promise.all(targets.map((m) => this.send(m, Kind.Flush, 0, 0, undefined, false)));
    // A replica whose flush failed is faulted; fault() marks what it had not flushed.
    const wait = errs.some((e) => e !== undefined) ? this.afterFailures(targets, inSyncCount, errs, 0, 0, false) : undefined;
    if (wait) await wait;
    if (this.fencedError) throw this.fencedError;
  }

  private issue(io: ReplicaIo, kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | undefined, flag: boolean): Promise<void> {
    switch (kind) {
      case Kind.Write: return io.write(offset, data!, flag);
      case Kind.Trim: return io.trim(offset, lengthBytes);
      case Kind.Zeroes: return io.writeZeroes(offset, lengthBytes, flag);
      default: return io.flush();
    }
  }

  /** One target's part of a request: its error, or undefined. */
  private async send(m: Member, kind: Kind, offset: number, lengthBytes: number, data: Uint8Array | undefined, flag: boolean): Promise<StorageError | undefined> {
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
      if (covered) m.flushing.delete(covered);
      else if (kind !== Kind.Flush && !(kind === Kind.Write && flag) && m.io === io) {
        (m.unflushed ??= new RegionMap(this.sizeBytes, this.regionBytes)).markRange(offset, lengthBytes);
      }
      return undefined;
    } catch (err) {
      return this.asError(m, err);
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
    if (this.fencedError) throw this.fencedError;
    let callerError: StorageError | undefined;
    let inSyncError: StorageError | undefined;
    let survivors = 0;
    for (let i = 0; i < errs.length; i++) {
      const e = errs[i];
      if (!e) {
        if (i < inSyncCount && targets[i]!.role === 'in-sync') survivors++;
        continue;
      }
      if (isStaleEpoch(e)) throw this.fence(newestEpochOf(e), e);
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
      if (m.role !== 'out') this.fault(m, e.message);
      wait = join(wait, this.markMissed(m, offset, lengthBytes, whole));
    }
    return wait;
  }

  /** Marks a write the out-of-sync members miss; returns what its acknowledgement waits for. */
  private noteMissed(offset: number, lengthBytes: number): Promise<void> | undefined {
    let wait: Promise<void> | undefined;
    for (const m of this.missing) wait = join(wait, this.markMissed(m, offset, lengthBytes, false));
    return wait;
  }

  private markMissed(m: Member, offset: number, lengthBytes: number, whole: boolean): Promise<void> | undefined {
    let changed: boolean;
    if (m.rebuild?.copying) {
      m.deferred ??= new RegionMap(this.sizeBytes, this.regionBytes);
      changed = markOn(m.deferred, offset, lengthBytes, whole);
    } else {
      m.map ??= new RegionMap(this.sizeBytes, this.regionBytes);
      changed = markOn(m.map, offset, lengthBytes, whole);
    }
    const commit = changed && m.mapKnown ? this.queueCommit(m) : undefined;
    return join(m.faultPending, commit);
  }

  // --- faults and the group commit ----------------------------------------------------

  /** Takes the replica out of the I/O path; its fault becomes durable in the next commit. */
  private fault(m: Member, reason: string): void {
    const was = m.role;
    if (was === 'write-only') {
      // It failed while being rebuilt (a full disk, say): try again later and later, up to a minute.
      m.failures++;
      m.retryAt = Date.now() + Math.min(MAX_RETRY_MS, this.reconnectMs * 2 ** Math.min(m.failures, 10));
    }
    m.role = 'out';
    m.outState = 'faulted';
    const io = m.io;
    m.io = undefined;
    m.timedOut = false;
    io?.cancel();
    m.rebuild?.abort.abort();
    m.map ??= new RegionMap(this.sizeBytes, this.regionBytes);
    this.markUnflushed(m);
    if (was === 'in-sync') this.sourceGone(m);
    this.rebuildSets();
    const p = this.queueCommit(m, reason);
    m.faultPending = p;
    const clear = (): void => {
      if (m.faultPending === p) m.faultPending = undefined;
    };
    p.then(clear, clear);
    this.log.warn({ replica: m.id, node: m.entry.nodeId, role: was, reason, inSync: this.inSync.map((x) => x.id) }, 'replica left the I/O path; faulting it');
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
    const into = m.rebuild?.copying ? (m.deferred ??= new RegionMap(this.sizeBytes, this.regionBytes)) : m.map!;
    for (const u of maps) for (let r = u.nextSet(0); r >= 0; r = u.nextSet(r + 1)) into.set(r);
  }

  /** Rebuilds copying from `m` stop; they start again from an in-sync source. */
  private sourceGone(m: Member): void {
    for (const w of this.writeOnly) {
      if (w.rebuild?.sourceId !== m.id) continue;
      w.rebuild.sourceLost = true;
      w.rebuild.abort.abort();
    }
  }

  private queueCommit(m: Member, faultReason?: string): Promise<void> {
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
      setImmediate(() => void this.runCommit(batch));
    }
    b.saves.add(m);
    if (faultReason !== undefined) b.faults.set(m, `replica ${m.id} on node ${m.entry.nodeId}: ${faultReason}`);
    return b.promise;
  }

  /** Saves the batch's maps once and marks its faulted replicas once. */
  private async runCommit(b: CommitBatch): Promise<void> {
    if (this.batch === b) this.batch = undefined;
    try {
      if (this.fencedError) throw this.fencedError;
      const settling = [...b.saves].flatMap((m) => (m.rebuild?.copying ? [m.rebuild.settled] : []));
      if (settling.length > 0) await Promise.all(settling);
      for (const m of b.saves) {
        this.mergeDeferred(m);
        this.saveMap(m);
      }
      if (b.faults.size > 0) {
        const ids = [...b.faults.keys()].map((m) => m.id);
        const reason = [...b.faults.values()].join('; ');
        await this.controlStep(() => this.retryMarkFaulted(ids, reason));
      }
      b.resolve();
    } catch (err) {
      b.reject(this.fencedError ?? err);
    }
  }

  /** The store may be unreachable for a while: keep trying (the I/O that needs it waits). */
  private async retryMarkFaulted(ids: ReplicaId[], reason: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      if (this.fencedError) throw this.fencedError;
      try {
        await this.opts.control.markFaulted(ids, reason);
        return;
      } catch (err) {
        // Fenced, or the control was closed (the volume service is stopping this engine).
        if (isStorageError(err, Code.FAILED_PRECONDITION) || isStorageError(err, Code.CANCELLED) || this.closing) throw err;
        this.log.warn({ replicas: ids, attempt, err: (err as Error).message }, 'cannot record faulted replicas yet; retrying (I/O that depends on it waits)');
        await sleep(this.reconnectMs);
      }
    }
  }

  /** One control call after those before it (the store sees them in the engine's order); FAILED_PRECONDITION fences. */
  private controlStep(call: () => Promise<void>): Promise<void> {
    const run = this.controlChain.then(call).catch((err: unknown) => {
      if (isStorageError(err, Code.FAILED_PRECONDITION)) throw this.fence(newestEpochOf(err), err);
      throw err;
    });
    this.controlChain = run.catch(noop);
    return run;
  }

  private mergeDeferred(m: Member): void {
    const d = m.deferred;
    if (!d || m.rebuild?.copying || !m.map) return;
    for (let r = d.nextSet(0); r >= 0; r = d.nextSet(r + 1)) m.map.set(r);
    m.deferred = undefined;
  }

  private saveMap(m: Member): void {
    if (m.removed || !m.mapKnown || !m.map) return;
    this.opts.dirtyMaps.save(this.volumeId, m.id, this.regionBytes, m.map.toBuffer());
  }

  // --- timeouts ---------------------------------------------------------------------------

  private sweep(): void {
    this.tick++;
    let slow: Member[] | undefined;
    for (const m of this.targets) {
      if (!m.io || m.timedOut || !overdue(m.inflight, this.tick)) continue;
      if (m.role === 'write-only') this.timeOut(m);
      else (slow ??= []).push(m);
    }
    if (!slow) {
      this.allSlowWarned = false;
      return;
    }
    // Never drop the last in-sync replicas: with none left there is nothing to continue on.
    if (slow.length < this.inSync.length) {
      for (const m of slow) this.timeOut(m);
    } else if (!this.allSlowWarned) {
      this.allSlowWarned = true;
      this.log.warn({ replicas: slow.map((m) => m.id), timeoutMs: this.timeoutMs }, 'every in-sync replica is slower than the timeout; waiting for them');
    }
  }

  private timeOut(m: Member): void {
    m.timedOut = true;
    this.log.warn({ replica: m.id, node: m.entry.nodeId, timeoutMs: this.timeoutMs }, 'replica did not answer in time; dropping its connection');
    m.io?.cancel();
  }

  // --- reconnect and rebuild -----------------------------------------------------------

  private reconnectAll(): void {
    if (this.closing || this.fencedError) return;
    const now = Date.now();
    for (const m of this.missing) {
      if (!m.connecting && !m.faultPending && !m.rebuild && now >= m.retryAt) void this.reconnect(m);
    }
  }

  private async reconnect(m: Member): Promise<void> {
    m.connecting = true;
    let io: ReplicaIo | undefined;
    const gone = (): boolean => this.closing || this.fencedError !== undefined || m.removed || m.role !== 'out';
    try {
      io = await this.openIo(m);
      if (gone()) throw new StorageError(Code.CANCELLED, 'engine state changed');
      if (!m.mapKnown) await this.resolveMap(m, await this.opts.connector.control(m.entry.nodeId));
      if (gone()) throw new StorageError(Code.CANCELLED, 'engine state changed');
    } catch (err) {
      io?.cancel();
      if (isStaleEpoch(err)) this.fence(newestEpochOf(err as StorageError), err);
      else if (!isStorageError(err, Code.CANCELLED)) this.log.debug({ replica: m.id, node: m.entry.nodeId, err: (err as Error).message }, 'replica still unreachable');
      return;
    } finally {
      m.connecting = false;
    }
    // From here on the replica gets every live write: its map changes only by the rebuild's
    // copies, and a failure faults it again.
    m.io = io;
    m.inflight = new Int32Array(RING);
    m.timedOut = false;
    m.role = 'write-only';
    m.announced = false;
    this.rebuildSets();
    void this.rebuildMember(m);
  }

  private async rebuildMember(m: Member): Promise<void> {
    let settle!: () => void;
    const run: RebuildRun = { abort: new AbortController(), settled: new Promise((r) => (settle = r)), copying: false, sourceId: undefined, sourceLost: false, progress: undefined };
    m.rebuild = run;
    const { signal } = run.abort;
    const cancelled = (): StorageError => new StorageError(Code.CANCELLED, `rebuild of replica ${m.id} stopped`);
    try {
      const source = this.readMember;
      const sourceIo = source?.io;
      const targetIo = m.io;
      const map = m.map;
      if (!source || !sourceIo || !targetIo || !map) throw this.noInSync();
      run.sourceId = source.id;
      const [sourceControl, targetControl] = await Promise.all([this.opts.connector.control(source.entry.nodeId), this.opts.connector.control(m.entry.nodeId)]);
      if (!m.announced) await this.announceRebuild(m, map, targetControl);
      if (signal.aborted || m.role !== 'write-only') throw cancelled();
      run.copying = true;
      this.log.info({ replica: m.id, node: m.entry.nodeId, source: source.id, dirtyBytes: map.dirtyBytes(), regions: map.count() }, 'replica rebuild starting');
      const result = await runRebuild({
        volumeId: this.volumeId, target: m.entry, epoch: this.epochValue, sizeBytes: this.sizeBytes, regionBytes: this.regionBytes,
        source: this.tracked(source, sourceIo), targetIo: this.tracked(m, targetIo), sourceControl, targetControl, map, persistMap: () => this.saveMap(m), locks: this.locks,
        rateBytesPerSec: this.opts.rebuildRateBytesPerSec ?? 0, signal, log: this.opts.log, onProgress: (p) => (run.progress = p),
      });
      run.copying = false;
      if (signal.aborted || m.role !== 'write-only') throw cancelled();
      await this.controlStep(() => this.opts.control.markInSync(m.id));
      if (m.role !== 'write-only' || m.removed) return; // failed meanwhile: its fault, recorded after, stands
      m.role = 'in-sync';
      m.failures = 0;
      m.map = undefined;
      m.deferred = undefined;
      this.opts.dirtyMaps.delete(this.volumeId, m.id);
      this.rebuildSets();
      const bytesPerSecond = result.durationMs > 0 ? Math.round(result.copiedBytes / (result.durationMs / 1000)) : 0;
      this.log.info({ replica: m.id, node: m.entry.nodeId, copiedBytes: result.copiedBytes, zeroedBytes: result.zeroedBytes, bytesPerSecond, durationMs: result.durationMs },
        'replica rebuilt; it rejoined the in-sync set');
    } catch (err) {
      run.copying = false;
      this.rebuildFailed(m, run, err);
    } finally {
      if (m.rebuild === run) m.rebuild = undefined;
      settle();
    }
  }

  /**
   * Before the document may call the target "rebuilding", its own rebuild checkpoint must
   * cover every region it lacks: an engine started on another node (without this node's
   * dirty maps) resumes from that checkpoint.
   */
  private async announceRebuild(m: Member, map: RegionMap, targetControl: ReplicaControl): Promise<void> {
    const ref = { replicaId: m.id, volumeId: this.volumeId };
    const totalBytes = map.dirtyBytes();
    const bits = map.toBuffer();
    await targetControl.startRebuild(ref, this.epochValue, totalBytes, false);
    await targetControl.updateRebuildProgress(ref, this.epochValue, { doneBytes: 0, totalBytes, checkpoint: bits.length <= MAX_CHECKPOINT_BYTES ? bits : Buffer.alloc(0) });
    await this.controlStep(() => this.opts.control.markRebuilding(m.id));
    m.announced = true;
  }

  /** The rebuild's I/O, counted with the live I/O so that the sweep times it out too. */
  private tracked(m: Member, io: ReplicaIo): ReplicaIo {
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

  /** The base of a map this engine only saw misses for: the target's checkpoint if it fits, else everything. */
  private async resolveMap(m: Member, targetControl: ReplicaControl): Promise<void> {
    let base: RegionMap | undefined;
    if (m.checkpointOk) {
      try {
        const status = await targetControl.getReplicaStatus({ replicaId: m.id, volumeId: this.volumeId });
        const checkpoint = status.rebuild?.checkpoint;
        if (checkpoint && checkpoint.length > 0) base = new RegionMap(this.sizeBytes, this.regionBytes, checkpoint);
      } catch (err) {
        this.log.info({ replica: m.id, err: (err as Error).message }, 'no usable rebuild checkpoint on the replica; copying every region');
      }
    }
    base ??= RegionMap.full(this.sizeBytes, this.regionBytes);
    const seen = m.map;
    if (seen) for (let r = seen.nextSet(0); r >= 0; r = seen.nextSet(r + 1)) base.set(r);
    m.map = base;
    m.mapKnown = true;
  }

  private rebuildFailed(m: Member, run: RebuildRun, err: unknown): void {
    if (this.closing || this.fencedError || m.removed) return;
    if (isStaleEpoch(err)) {
      this.fence(newestEpochOf(err as StorageError), err);
      return;
    }
    if (m.role !== 'write-only') return; // faulted by a live failure, which marked and saved its map
    if (run.sourceLost) {
      this.log.info({ replica: m.id, source: run.sourceId }, 'rebuild source left the in-sync set; resuming from another');
      setImmediate(() => {
        if (m.role === 'write-only' && !m.rebuild && !this.closing && !this.fencedError) void this.rebuildMember(m);
      });
      return;
    }
    this.fault(m, `rebuild failed: ${(err as Error).message}`);
  }

  // --- membership -------------------------------------------------------------------------

  private remove(m: Member): void {
    const was = m.role;
    m.removed = true;
    m.role = 'out';
    this.members.delete(m.id);
    m.rebuild?.abort.abort();
    if (was === 'in-sync') this.sourceGone(m);
    const io = m.io;
    m.io = undefined;
    if (io) withTimeout(io.close(), this.timeoutMs, `closing replica ${m.id}`).catch(() => io.cancel());
    this.opts.dirtyMaps.delete(this.volumeId, m.id);
    this.log.info({ replica: m.id, node: m.entry.nodeId, role: was }, 'replica removed from the volume; no longer used');
  }

  private rebuildSets(): void {
    const inSync: Member[] = [];
    const writeOnly: Member[] = [];
    const missing: Member[] = [];
    for (const m of this.members.values()) {
      if (m.role === 'in-sync') inSync.push(m);
      else if (m.role === 'write-only') writeOnly.push(m);
      else missing.push(m);
    }
    this.inSync = inSync;
    this.writeOnly = writeOnly;
    this.targets = writeOnly.length > 0 ? [...inSync, ...writeOnly] : inSync;
    this.missing = missing;
    const local = inSync.find((m) => m.entry.nodeId === this.opts.localNodeId);
    const current = this.readMember;
    this.readMember = local ?? (current?.role === 'in-sync' ? current : inSync[0]);
  }

  // --- fencing, errors, shutdown ---------------------------------------------------------

  /** Stops acknowledging anything; returns the error every request gets from now on. */
  private fence(newerEpoch: number | undefined, cause?: unknown): StorageError {
    if (this.fencedError) return this.fencedError;
    const epochText = newerEpoch !== undefined ? `epoch ${newerEpoch}` : `epoch > ${this.epochValue}`;
    const err = new StorageError(Code.FAILED_PRECONDITION,
      `volume ${this.name} was started by a newer engine (${epochText}); this engine is fenced and acknowledges nothing more`,
      { cause, details: { volume: this.volumeId, epoch: this.epochValue, newerEpoch } });
    this.fencedError = err;
    this.log.warn({ newerEpoch, err: cause instanceof Error ? cause.message : undefined }, 'volume engine fenced by a newer one');
    this.stopTimers();
    this.reconciling?.abort.abort();
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
    if (this.reconciling) runs.push(this.reconciling);
    for (const r of runs) r.abort.abort();
    await Promise.all(runs.map((r) => r.settled));
    let failure: unknown;
    if (!this.fencedError && this.inSync.length > 0) {
      try {
        await this.flushTargets();
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

  private refuse(offset: number, lengthBytes: number): StorageError | undefined {
    if (this.fencedError) return this.fencedError;
    if (this.closing) return new StorageError(Code.UNAVAILABLE, `the engine of volume ${this.name} is closed`, { details: { volume: this.volumeId } });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(lengthBytes) || offset < 0 || lengthBytes < 0 || offset + lengthBytes > this.sizeBytes) {
      return new StorageError(Code.OUT_OF_RANGE, `range [${offset}, ${offset + lengthBytes}) is outside volume ${this.name} of ${this.sizeBytes} bytes`,
        { details: { volume: this.volumeId, offset, lengthBytes } });
    }
    return undefined;
  }

  private asError(m: Member, err: unknown): StorageError {
    if (m.timedOut && isStorageError(err, Code.CANCELLED)) {
      return new StorageError(Code.DEADLINE_EXCEEDED, `replica ${m.id} on node ${m.entry.nodeId} did not answer within ${this.timeoutMs} ms`,
        { cause: err, details: { replica: m.id } });
    }
    return fromNodeError(err, `replica ${m.id} I/O`);
  }

  private noIo(m: Member): StorageError {
    return new StorageError(Code.UNAVAILABLE, `replica ${m.id} has no open connection`, { details: { replica: m.id } });
  }

  private noInSync(): StorageError {
    return new StorageError(Code.UNAVAILABLE, `volume ${this.name} has no in-sync replica this engine can use`, { details: { volume: this.volumeId } });
  }
}

function markOn(map: RegionMap, offset: number, lengthBytes: number, whole: boolean): boolean {
  if (!whole) return map.markRange(offset, lengthBytes);
  if (map.count() === map.regionCount) return false;
  map.setAll();
  return true;
}

/** Whether requests that started OVERDUE_INTERVALS or more sweeps ago are still in flight. */
function overdue(counts: Int32Array, tick: number): boolean {
  for (let age = OVERDUE_INTERVALS; age < RING; age++) {
    if (counts[(tick - age) & MASK]! > 0) return true;
  }
  return false;
}
