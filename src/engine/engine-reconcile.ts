/**
 * The volume engine's reconcile after an unclean stop of the previous engine: it makes the
 * other in-sync replicas equal to the one reads come from, region by region, in the
 * background (the copying itself is reconcile.ts). A replica that fails meanwhile is faulted
 * with its whole map set. The engine aborts a run when it is fenced or closes, and the write
 * barrier refuses snapshots while one runs.
 */
import type { EngineContext, EngineLife, Member } from './engine-member.js';
import type { ReplicaConnector, ReplicaControl } from './engine-types.js';
import type { FaultCommit } from './fault-commit.js';
import type { MemberSet } from './member-set.js';
import { runReconcile } from './reconcile.js';
import type { RegionLocks } from './region-map.js';

export interface ReconcilerDeps {
  ctx: EngineContext;
  life: EngineLife;
  members: MemberSet;
  faults: FaultCommit;
  connector: ReplicaConnector;
  locks: RegionLocks;
}

/** A reconcile in progress: what aborts it and what settles when it ended. */
export interface ReconcileRun {
  abort: AbortController;
  settled: Promise<void>;
}

export class Reconciler {
  private running: ReconcileRun | undefined;

  constructor(private readonly deps: ReconcilerDeps) {}

  /** The run in progress, if any (the engine aborts it when fenced and waits for it when closing). */
  get current(): ReconcileRun | undefined {
    return this.running;
  }

  /** Starts a reconcile unless one runs (then its promise); resolves when done and never rejects: a reconcile that stops is logged. */
  start(): Promise<void> {
    const { ctx } = this.deps;
    const source = this.deps.members.readMember;
    if (this.running) return this.running.settled;
    if (this.deps.life.closing() || this.deps.life.fencedError() || !source?.io) return Promise.resolve();
    const others = this.deps.members.inSync.filter((m) => m !== source && m.io);
    if (others.length === 0) return Promise.resolve();
    const abort = new AbortController();
    const run = async (): Promise<void> => {
      const controlOf = (m: Member): Promise<ReplicaControl> => this.deps.connector.control(m.entry.nodeId);
      const peers = await Promise.all(others.map(async (m) => ({ m, io: m.io!, control: await controlOf(m) })));
      const result = await runReconcile({
        volumeId: ctx.volumeId, epoch: ctx.epoch, sizeBytes: ctx.sizeBytes, regionBytes: ctx.regionBytes,
        source: { io: source.io!, control: await controlOf(source) }, others: peers.map(({ io, control }) => ({ io, control })),
        locks: this.deps.locks, signal: abort.signal, log: ctx.log,
      });
      for (const [id, err] of result.failed) {
        const peer = peers.find((p) => p.m.id === id);
        if (!peer || peer.m.role !== 'in-sync' || peer.m.io !== peer.io || this.deps.members.inSync.length <= 1) continue;
        this.deps.faults.fault(peer.m, `reconcile failed: ${err.message}`);
        // Nothing waits on this commit; one that fails (fenced, closing) is logged here.
        this.deps.faults.markMissed(peer.m, 0, ctx.sizeBytes, true)?.catch((e: unknown) => {
          if (!this.deps.life.fencedError() && !this.deps.life.closing()) ctx.log.warn({ replica: peer.m.id, err: (e as Error).message }, 'cannot record a replica that failed during reconcile');
        });
      }
    };
    const settled = run().catch((err: unknown) => {
      if (!abort.signal.aborted && !this.deps.life.fencedError()) ctx.log.warn({ err: (err as Error).message }, 'reconcile stopped; replicas may differ in regions written just before the previous engine stopped');
    }).finally(() => {
      if (this.running?.abort === abort) this.running = undefined;
    });
    this.running = { abort, settled };
    return settled;
  }
}
