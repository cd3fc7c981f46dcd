/**
 * The repair loop. Every cairnd runs it; only the elected leader (role "repair") acts, and
 * each change it makes is guarded by its leadership as well as by the document's revision,
 * so a deposed leader changes nothing.
 *
 * Each pass (every `intervalMs`, and soon after a volume document changes):
 * - a volume being deleted: delete the replicas left on nodes that are back, then the document;
 * - a volume whose creation a crash interrupted (`creating` for over 10 s): create its
 *   missing replicas and mark it ready, or undo it when that fails;
 * - a replica faulted for longer than `repairWaitMs`, or on a node down for that long, or
 *   missing (fewer replicas than
 *   wanted): create a new replica on another node (placement, never next to its siblings),
 *   then swap it into the document in state `rebuilding`. The volume's engine sees the
 *   change and rebuilds it from an in-sync replica; the old replica is deleted where its
 *   node can be reached;
 * - a volume that no node exports but has replicas out of sync on nodes that are up: the
 *   leader runs a rebuild-only engine for it (no NBD) until they are in sync again;
 * - a restored volume whose seed replica (volume-restore.ts) is no longer needed: every other
 *   replica is in sync, so the seed is removed (seeds are never replaced);
 * - snapshots: `deleting` ones whose copy nodes are back, and ones a crash left `creating`
 *   (snapshot-service.ts `collect`); `ready` ones with fewer copies on nodes that are up than
 *   wanted get one streamed from a surviving copy, and copies on nodes down for
 *   `repairWaitMs` are dropped once enough others exist (snapshot-repair.ts).
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import { newReplicaId, type NodeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ReplicaConnector } from '../engine/engine-types.js';
import type { ClusterVolumeService } from './cluster-volume-service.js';
import type { LeaderElection } from './leader-election.js';
import { listNodes, toPlacementNodes, type NodeStatus } from './node-registry.js';
import { placeReplicas } from './placement.js';
import { SnapshotRepair } from './snapshot-repair.js';
import type { ClusterStore, Guard } from './store/cluster-store.js';
import { listVolumeDocs, updateVolumeDoc, type VolumeDoc, type VolumeReplicaEntry } from './volume-doc.js';
import { dropSeedReplicas } from './volume-restore.js';

/** A `creating` document older than this was left by a crash: finish it (or undo it). */
const CREATING_GRACE_MS = 10_000;

export interface RepairLoopOptions {
  store: ClusterStore;
  election: LeaderElection;
  connector: ReplicaConnector;
  volumes: ClusterVolumeService;
  /** How long a replica stays faulted before it is replaced. */
  repairWaitMs: number;
  /** Time between passes; default 5000 ms. */
  intervalMs?: number;
  log: Logger;
}

export class RepairLoop {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  /** Volumes whose last placement failed, so the warning is not repeated every pass. */
  private readonly stuck = new Map<string, string>();
  /** The keys of the documents the last pass could not parse, to log a change only. */
  private unreadable = '';
  private readonly log: Logger;
  private readonly snapshotRepair: SnapshotRepair;
  /** Cleanups of layers above (the group snapshot coordinator's `collect`), run each pass after the snapshots'. */
  private readonly cleanups: (() => Promise<void>)[] = [];

  /** Runs `cleanup` on every pass while this node leads repair. */
  addCleanup(cleanup: () => Promise<void>): void {
    this.cleanups.push(cleanup);
  }

  constructor(private readonly opts: RepairLoopOptions) {
    this.log = opts.log.child({ component: 'repair' });
    this.snapshotRepair = new SnapshotRepair({
      store: opts.store, controls: opts.connector, log: opts.log, dropAfterMs: opts.repairWaitMs, guards: () => this.leaderGuard(),
    });
  }

  start(): void {
    const tick = (): void => {
      if (this.closed) return;
      this.opts.volumes.reapRebuilders().catch((err: unknown) => this.log.warn({ err }, 'stopping rebuild-only engines failed'))
        .then(() => this.runPass()).finally(() => {
        if (!this.closed) this.timer = setTimeout(tick, this.opts.intervalMs ?? 5000);
      });
    };
    this.timer = setTimeout(tick, this.opts.intervalMs ?? 5000);
  }

  /** One pass, if this node leads; passes never overlap. */
  runPass(): Promise<void> {
    if (!this.opts.election.isLeader()) return Promise.resolve();
    this.running ??= this.pass().catch((err: unknown) => {
      if (isStorageError(err, Code.UNAVAILABLE)) this.log.debug({ err: (err as Error).message }, 'repair pass skipped: cluster store unavailable');
      else this.log.error({ err }, 'repair pass failed');
    }).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private async pass(): Promise<void> {
    const [{ docs, unreadable }, nodes] = await Promise.all([listVolumeDocs(this.opts.store), listNodes(this.opts.store, this.log)]);
    // Such a volume is left alone (nothing here deletes what a document does not list); said once.
    const keys = unreadable.map((err) => String(err.details.key)).sort();
    if (keys.join('\n') !== this.unreadable && keys.length > 0) this.log.error({ keys, errs: unreadable.map((err) => err.message) }, 'volume documents this node cannot read are not repaired');
    this.unreadable = keys.join('\n');
    await this.opts.volumes.snapshots.collect(nodes).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'snapshot cleanup pass failed; retrying next pass'));
    for (const cleanup of this.cleanups) await cleanup().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'cleanup pass failed; retrying next pass'));
    await this.snapshotRepair.pass(nodes, docs.map((d) => d.doc)).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'snapshot repair pass failed; retrying next pass'));
    for (const { doc } of docs) {
      if (this.closed || !this.opts.election.isLeader()) return;
      try {
        if (doc.state === 'deleting') await this.finishDelete(doc, nodes);
        else if (doc.state === 'creating' && Date.now() - Date.parse(doc.createdAt) > CREATING_GRACE_MS) await this.opts.volumes.finishCreate(doc);
        else if (doc.state === 'ready') {
          if (doc.seedReplicas) {
            await dropSeedReplicas({ store: this.opts.store, controls: this.opts.connector, log: this.log, guards: () => this.leaderGuard() }, doc);
          }
          await this.repair(doc, nodes);
          if (!doc.engine?.exported && doc.replicas.some((r) => r.state !== 'in-sync')) await this.opts.volumes.startRebuilder(doc.name, nodes);
        }
      } catch (err) {
        this.log.warn({ volume: doc.name, err: (err as Error).message }, 'repair of volume failed; retrying next pass');
      }
    }
  }

  private async finishDelete(doc: VolumeDoc, nodes: NodeStatus[]): Promise<void> {
    const up = new Set(nodes.filter((n) => n.up).map((n) => n.nodeId));
    if (doc.replicas.some((r) => up.has(r.nodeId))) await this.opts.volumes.finishDelete(doc);
  }

  private async repair(doc: VolumeDoc, nodes: NodeStatus[]): Promise<void> {
    const now = Date.now();
    const wait = this.opts.repairWaitMs;
    const downSince = new Map(nodes.filter((n) => !n.up).map((n) => [n.nodeId, Date.parse(n.heartbeatAt)]));
    // Faulted for too long, or on a node down for too long (no engine may have noticed, e.g.
    // a volume nobody exports; the node's last heartbeat is when it was last known up).
    const seeds = new Set(doc.seedReplicas ?? []);
    const overdue = doc.replicas.filter((r) => !seeds.has(r.id) && ((r.state === 'faulted' && now - Date.parse(r.since) >= wait)
      || (downSince.has(r.nodeId) && now - downSince.get(r.nodeId)! >= wait)));
    const missing = Math.max(0, doc.replicasWanted - (doc.replicas.length - seeds.size));
    if (overdue.length === 0 && missing === 0) {
      this.stuck.delete(doc.name);
      return;
    }
    if (!doc.replicas.some((r) => r.state === 'in-sync')) return; // nothing to rebuild from
    // One change per volume and pass: the next pass sees the document as it became.
    await this.replace(doc, overdue[0], nodes);
  }

  /** The guard every change of the leader carries: its leadership key. */
  private leaderGuard(): Guard[] {
    const guard = this.opts.election.guard();
    if (!guard) throw new StorageError(Code.ABORTED, 'no longer the repair leader');
    return [guard];
  }

  /** Places a new replica, creates it, swaps it into the document for `old` (or adds it). */
  private async replace(doc: VolumeDoc, old: VolumeReplicaEntry | undefined, nodes: NodeStatus[]): Promise<void> {
    let target: NodeId;
    try {
      const placed = placeReplicas({ replicas: 1, sizeBytes: doc.sizeBytes, nodes: toPlacementNodes(nodes), existing: doc.replicas.map((r) => r.nodeId), ...(doc.zones ? { zones: doc.zones } : {}) });
      target = placed.nodeIds[0]!;
    } catch (err) {
      const why = (err as Error).message;
      if (this.stuck.get(doc.name) !== why) this.log.warn({ volume: doc.name, replica: old?.id, why }, 'cannot place a replacement replica yet');
      this.stuck.set(doc.name, why);
      return;
    }
    this.stuck.delete(doc.name);
    const id = newReplicaId();
    const ref = { replicaId: id, volumeId: doc.id };
    const control = await this.opts.connector.control(target);
    await control.createReplica(ref, doc.sizeBytes, doc.epoch, false);
    try {
      await updateVolumeDoc(this.opts.store, doc.name, (d) => {
        if (d.state !== 'ready') throw new StorageError(Code.ABORTED, `volume "${doc.name}" is ${d.state}`);
        if (old && d.replicas.find((r) => r.id === old.id)?.state !== old.state) throw new StorageError(Code.ABORTED, `replica ${old.id} changed state meanwhile`);
        if (!d.replicas.some((r) => r.state === 'in-sync' && r.id !== old?.id)) throw new StorageError(Code.ABORTED, `volume "${doc.name}" would have no in-sync replica left`);
        if (!old && d.replicas.length - (d.seedReplicas?.length ?? 0) >= d.replicasWanted) throw new StorageError(Code.ABORTED, `volume "${doc.name}" has its replicas`);
        const replicas = d.replicas.filter((r) => r.id !== old?.id);
        replicas.push({
          id, nodeId: target, state: 'rebuilding', since: new Date().toISOString(),
          reason: old ? `replaces ${old.id} on ${old.nodeId} (${old.reason ?? 'faulted'})` : 'added to reach the wanted replica count',
        });
        return { ...d, replicas };
      }, () => this.leaderGuard());
    } catch (err) {
      await control.deleteReplica(ref, doc.epoch).catch(() => undefined);
      throw err;
    }
    this.log.info({ volume: doc.name, replica: id, replicaNode: target, replaces: old?.id, replacedNode: old?.nodeId }, 'replacement replica added; the engine rebuilds it');
    if (old) {
      await this.opts.connector.control(old.nodeId).then((c) => c.deleteReplica({ replicaId: old.id, volumeId: doc.id }, doc.epoch))
        .catch((err: unknown) => this.log.info({ volume: doc.name, replica: old.id, replicaNode: old.nodeId, err: (err as Error).message }, 'replaced replica not deleted now (its node is away)'));
    }
  }
}
