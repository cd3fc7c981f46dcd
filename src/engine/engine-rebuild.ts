/**
 * How the volume engine brings out-of-sync replicas back. Every `reconnectIntervalMs` it
 * tries those it does not write to (`reconnectAll`); one that answers becomes write-only
 * (it gets every live write from then on) and is copied from an in-sync source by
 * `runRebuild` (rebuild.ts); it rejoins the in-sync set once the copy and the checksum
 * comparison agreed and the document says so.
 *
 * The document calls a replica "rebuilding" only while this engine writes to it and the
 * replica's own rebuild checkpoint covers every region it lacks (`announceRebuild`), so an
 * engine started on another node, without this node's dirty maps, may resume from that
 * checkpoint (`resolveMap`).
 */
import { Code, StorageError, isStaleEpoch, isStorageError } from '../common/errors.js';
import { MAX_CHECKPOINT_BYTES } from '../replica/replica-manager.js';
import type { EngineControl, ReplicaConnector, ReplicaControl, ReplicaIo } from './engine-types.js';
import { type EngineContext, type EngineLife, type Member, type MemberMaps, RING, type RebuildRun, newestEpochOf, noInSyncError, openReplicaIo } from './engine-member.js';
import type { FaultCommit } from './fault-commit.js';
import type { MemberSet } from './member-set.js';
import { ensureTargetSize } from './engine-resize.js';
import { runRebuild } from './rebuild.js';
import { type RegionLocks, RegionMap } from './region-map.js';

export interface RebuilderDeps {
  ctx: EngineContext;
  life: EngineLife;
  members: MemberSet;
  maps: MemberMaps;
  faults: FaultCommit;
  connector: ReplicaConnector;
  control: EngineControl;
  locks: RegionLocks;
  /** Rebuild copy rate; 0 is unlimited. */
  rateBytesPerSec: number;
  /** The rebuild's I/O, counted with the live I/O so that the sweep times it out too. */
  tracked(m: Member, io: ReplicaIo): ReplicaIo;
}

export class Rebuilder {
  private readonly ctx: EngineContext;
  private readonly life: EngineLife;
  private readonly members: MemberSet;
  private readonly deps: RebuilderDeps;

  constructor(deps: RebuilderDeps) {
    this.ctx = deps.ctx;
    this.life = deps.life;
    this.members = deps.members;
    this.deps = deps;
  }

  /** Tries every out-of-sync replica that is not busy and not backing off. */
  reconnectAll(): void {
    if (this.life.closing() || this.life.fencedError()) return;
    const now = Date.now();
    for (const m of this.members.missing) {
      if (!m.connecting && !m.faultPending && !m.rebuild && now >= m.retryAt) void this.reconnect(m);
    }
  }

  private async reconnect(m: Member): Promise<void> {
    m.connecting = true;
    let io: ReplicaIo | undefined;
    const gone = (): boolean => this.life.closing() || this.life.fencedError() !== undefined || m.removed || m.role !== 'out';
    try {
      io = await openReplicaIo(this.ctx, this.deps.connector, m);
      if (gone()) throw new StorageError(Code.CANCELLED, 'engine state changed');
      if (!m.mapKnown) await this.resolveMap(m, await this.deps.connector.control(m.entry.nodeId));
      if (gone()) throw new StorageError(Code.CANCELLED, 'engine state changed');
    } catch (err) {
      io?.cancel();
      if (isStaleEpoch(err)) this.life.fence(newestEpochOf(err as StorageError), err);
      else if (!isStorageError(err, Code.CANCELLED)) this.ctx.log.debug({ replica: m.id, replicaNode: m.entry.nodeId, err: (err as Error).message }, 'replica still unreachable');
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
    this.members.refresh();
    void this.rebuildMember(m);
  }

  private async rebuildMember(m: Member): Promise<void> {
    let settle!: () => void;
    const run: RebuildRun = { abort: new AbortController(), settled: new Promise((r) => (settle = r)), copying: false, sourceId: undefined, sourceLost: false, progress: undefined };
    m.rebuild = run;
    const { signal } = run.abort;
    const { ctx, deps } = this;
    const cancelled = (): StorageError => new StorageError(Code.CANCELLED, `rebuild of replica ${m.id} stopped`);
    try {
      const source = this.members.readMember;
      const sourceIo = source?.io;
      const targetIo = m.io;
      const map = m.map;
      if (!source || !sourceIo || !targetIo || !map) throw noInSyncError(ctx);
      run.sourceId = source.id;
      const [sourceControl, targetControl] = await Promise.all([deps.connector.control(source.entry.nodeId), deps.connector.control(m.entry.nodeId)]);
      await ensureTargetSize(ctx, m, targetControl);
      if (!m.announced) await this.announceRebuild(m, map, targetControl);
      if (signal.aborted || m.role !== 'write-only') throw cancelled();
      run.copying = true;
      ctx.log.info({ replica: m.id, replicaNode: m.entry.nodeId, source: source.id, dirtyBytes: map.dirtyBytes(), regions: map.count() }, 'replica rebuild starting');
      const result = await runRebuild({
        volumeId: ctx.volumeId, target: m.entry, epoch: ctx.epoch, sizeBytes: ctx.sizeBytes, regionBytes: ctx.regionBytes,
        source: deps.tracked(source, sourceIo), targetIo: deps.tracked(m, targetIo), sourceControl, targetControl, map, persistMap: () => deps.maps.save(m), locks: deps.locks,
        rateBytesPerSec: deps.rateBytesPerSec, signal, log: ctx.log, onProgress: (p) => (run.progress = p),
      });
      run.copying = false;
      if (signal.aborted || m.role !== 'write-only') throw cancelled();
      await deps.faults.controlStep(async () => {
        await deps.control.markInSync(m.id);
        m.fullRebuild = false; // the in-sync CAS wrote the entry without it
      });
      if (m.role !== 'write-only' || m.removed) return; // failed meanwhile: its fault, recorded after, stands
      m.role = 'in-sync';
      m.failures = 0;
      m.map = undefined;
      m.deferred = undefined;
      deps.maps.delete(m);
      this.members.refresh();
      const bytesPerSecond = result.durationMs > 0 ? Math.round(result.copiedBytes / (result.durationMs / 1000)) : 0;
      ctx.log.info({ replica: m.id, replicaNode: m.entry.nodeId, doneBytes: result.doneBytes, copiedBytes: result.copiedBytes, zeroedBytes: result.zeroedBytes, discardedBytes: result.discardedBytes, bytesPerSecond, durationMs: result.durationMs },
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
    const { epoch } = this.ctx;
    const ref = { replicaId: m.id, volumeId: this.ctx.volumeId };
    const totalBytes = map.dirtyBytes();
    const bits = map.toBuffer();
    await targetControl.startRebuild(ref, epoch, totalBytes, false);
    await targetControl.updateRebuildProgress(ref, epoch, { doneBytes: 0, totalBytes, checkpoint: bits.length <= MAX_CHECKPOINT_BYTES ? bits : Buffer.alloc(0) });
    await this.deps.faults.controlStep(() => this.deps.control.markRebuilding(m.id));
    m.announced = true;
  }

  /** The base of a map this engine only saw misses for: the target's checkpoint if it fits, else everything. */
  private async resolveMap(m: Member, targetControl: ReplicaControl): Promise<void> {
    const { sizeBytes, regionBytes } = this.ctx;
    let base: RegionMap | undefined;
    if (m.checkpointOk) {
      try {
        const status = await targetControl.getReplicaStatus({ replicaId: m.id, volumeId: this.ctx.volumeId });
        const checkpoint = status.rebuild?.checkpoint;
        if (checkpoint && checkpoint.length > 0) base = new RegionMap(sizeBytes, regionBytes, checkpoint);
      } catch (err) {
        this.ctx.log.info({ replica: m.id, err: (err as Error).message }, 'no usable rebuild checkpoint on the replica; copying every region');
      }
    }
    base ??= RegionMap.full(sizeBytes, regionBytes);
    const seen = m.map;
    if (seen) for (let r = seen.nextSet(0); r >= 0; r = seen.nextSet(r + 1)) base.set(r);
    m.map = base;
    m.mapKnown = true;
  }

  private rebuildFailed(m: Member, run: RebuildRun, err: unknown): void {
    if (this.life.closing() || this.life.fencedError() || m.removed) return;
    if (isStaleEpoch(err)) {
      this.life.fence(newestEpochOf(err as StorageError), err);
      return;
    }
    if (m.role !== 'write-only') return; // faulted by a live failure, which marked and saved its map
    if (run.sourceLost) {
      this.ctx.log.info({ replica: m.id, source: run.sourceId }, 'rebuild source left the in-sync set; resuming from another');
      setImmediate(() => {
        if (m.role === 'write-only' && !m.rebuild && !this.life.closing() && !this.life.fencedError()) void this.rebuildMember(m);
      });
      return;
    }
    this.deps.faults.fault(m, `rebuild failed: ${(err as Error).message}`);
  }
}
