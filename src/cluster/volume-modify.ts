/**
 * A live change of a volume's replica count (CSI ControllerModifyVolume, `cairnctl volume
 * modify --replicas N`), while its engine keeps serving:
 *
 * - raising it places the new replicas (never next to a sibling), creates them empty, and
 *   in one compare-and-swap raises `replicasWanted` and adds them as `rebuilding`. The
 *   engine that serves the volume (or the repair leader's rebuild-only engine, when nobody
 *   exports it) sees them in the document and copies every region to them; they join the
 *   in-sync set after the copy and its checksum comparison, as any rebuilt replica does;
 * - lowering it takes replicas out of the document in one compare-and-swap (which ones:
 *   `chooseRemovals`), then deletes their data. The engine drops a member that leaves the
 *   document (`VolumeEngine.applyDoc`) without unexporting. Until it has seen the change it
 *   may still write to a removed replica; a write that fails there is absorbed like any
 *   replica failure (the fault it records names a replica the document no longer lists,
 *   which changes nothing), and an engine fault that would leave the document with no
 *   in-sync replica is refused (engine-control.ts), so no write is acknowledged by a
 *   replica that is gone alone. A removed replica whose node cannot be reached now is
 *   deleted by that node's orphan collector (replica-gc.ts) once it is back.
 *
 * The call returns once the change is recorded (and, when lowering, the removed data is
 * deleted where its node answers), not when the new replicas are in sync: a rebuild may
 * take hours. The volume is `degraded` until they are, which ControllerGetVolume's volume
 * condition and `cairnctl volume inspect` show with each replica's progress.
 */
import { abortable, throwIfCancelled } from '../common/abort.js';
import { Code, StorageError, isStorageError } from '../common/errors.js';
import { newReplicaId, type NodeId, type ReplicaId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ReplicaControl } from '../engine/engine-types.js';
import { listNodes, toPlacementNodes } from './node-registry.js';
import { placeReplicas } from './placement.js';
import type { ClusterStore } from './store/cluster-store.js';
import { MAX_REPLICAS, updateVolumeDoc, type VolumeDoc, type VolumeReplicaEntry } from './volume-doc.js';

/** What a change of the replica count to `replicas` does to a document. */
export type ReplicaCountPlan =
  /** `replicasWanted` is already that: nothing to do (a missing replica is the repair loop's to replace). */
  | { kind: 'none' }
  /** Only `replicasWanted` changes: the document already lists that many replicas. */
  | { kind: 'record' }
  | { kind: 'add'; count: number }
  | { kind: 'remove'; victims: VolumeReplicaEntry[] };

export interface PlanContext {
  /** The node whose engine serves the volume, if any: its local replica is removed last. */
  engineNode?: NodeId | undefined;
  /** Nodes that are down: their replicas are removed first among equals. */
  downNodes?: ReadonlySet<NodeId>;
}

/** INVALID_ARGUMENT unless 1 ≤ replicas ≤ MAX_REPLICAS. */
export function checkReplicaCount(replicas: number): void {
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw new StorageError(Code.INVALID_ARGUMENT, `replicas must be 1 to ${MAX_REPLICAS}, got ${replicas}`, { details: { field: 'replicas' } });
  }
}

const STATE_RANK: Record<VolumeReplicaEntry['state'], number> = { faulted: 0, rebuilding: 1, 'in-sync': 2 };

/**
 * The `count` replicas to remove, best first: not in sync (faulted, then rebuilding), then
 * on a node that is down, then not on the engine's node (its reads are local), then the
 * newest. FAILED_PRECONDITION when no in-sync replica would be left: the replicas that are
 * not in sync may lack acknowledged writes, so the last in-sync one is never removed.
 */
export function chooseRemovals(doc: VolumeDoc, count: number, ctx: PlanContext = {}): VolumeReplicaEntry[] {
  const ranked = doc.replicas.map((r, index) => ({ r, index })).sort((a, b) => (
    STATE_RANK[a.r.state] - STATE_RANK[b.r.state]
    || Number(!ctx.downNodes?.has(a.r.nodeId)) - Number(!ctx.downNodes?.has(b.r.nodeId))
    || Number(a.r.nodeId === ctx.engineNode) - Number(b.r.nodeId === ctx.engineNode)
    || b.index - a.index
  ));
  const victims = ranked.slice(0, count).map((x) => x.r);
  if (!doc.replicas.some((r) => r.state === 'in-sync' && !victims.includes(r))) {
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${doc.name}" has no in-sync replica to keep: removing a replica could drop the only copy of acknowledged writes; wait until the volume is repaired, then retry`,
      { details: { volume: doc.name } });
  }
  return victims;
}

/** What changing `doc`'s replica count to `replicas` takes (see ReplicaCountPlan). */
export function planReplicaCount(doc: VolumeDoc, replicas: number, ctx: PlanContext = {}): ReplicaCountPlan {
  checkReplicaCount(replicas);
  const have = doc.replicas.length;
  if (have > replicas) return { kind: 'remove', victims: chooseRemovals(doc, have - replicas, ctx) };
  if (doc.replicasWanted === replicas) return { kind: 'none' };
  if (have === replicas) return { kind: 'record' };
  if (!doc.replicas.some((r) => r.state === 'in-sync')) {
    throw new StorageError(Code.FAILED_PRECONDITION, `volume "${doc.name}" has no in-sync replica to copy a new replica from; wait until it is repaired, then retry`,
      { details: { volume: doc.name } });
  }
  return { kind: 'add', count: replicas - have };
}

export interface ReplicaCountDeps {
  store: ClusterStore;
  /** The replica services of every node (the lifecycle's `ReplicaControls`). */
  controls: { control(nodeId: NodeId): Promise<ReplicaControl> };
  log: Logger;
}

/**
 * Changes the replica count of the `ready` volume `doc` to `replicas` (the caller holds the
 * volume's lock). Returns the document as stored after the change.
 */
export async function changeReplicaCount(deps: ReplicaCountDeps, doc: VolumeDoc, replicas: number, signal?: AbortSignal): Promise<VolumeDoc> {
  const what = `change the replica count of volume "${doc.name}"`;
  const nodes = await listNodes(deps.store, deps.log);
  const ctx: PlanContext = { engineNode: doc.engine?.exported ? doc.engine.nodeId : undefined, downNodes: new Set(nodes.filter((n) => !n.up).map((n) => n.nodeId)) };
  const plan = planReplicaCount(doc, replicas, ctx);
  throwIfCancelled(signal, what);
  if (plan.kind === 'none') return doc;
  if (plan.kind === 'add') return addReplicas(deps, doc, replicas, plan.count, nodes, signal);
  // Lowering (or recording): re-decided on the fresh document at each compare-and-swap attempt.
  let removed: VolumeReplicaEntry[] = [];
  const stored = await updateVolumeDoc(deps.store, doc.name, (d) => {
    if (d.state !== 'ready' || d.id !== doc.id) throw new StorageError(Code.ABORTED, `volume "${doc.name}" changed meanwhile (${d.state}); retry`, { details: { volume: doc.name } });
    const p = planReplicaCount(d, replicas, ctx);
    if (p.kind === 'add') throw new StorageError(Code.ABORTED, `volume "${doc.name}" lost replicas meanwhile; retry`, { details: { volume: doc.name } });
    removed = p.kind === 'remove' ? p.victims : [];
    if (p.kind === 'none') return undefined;
    return { ...d, replicasWanted: replicas, replicas: d.replicas.filter((r) => !removed.includes(r)) };
  });
  if (removed.length > 0) {
    deps.log.info({ volume: doc.name, replicas, removed: removed.map((r) => ({ id: r.id, replicaNode: r.nodeId, state: r.state })) }, 'replica count lowered; replicas removed from the volume');
    await deleteRemoved(deps, stored!.doc, removed);
  } else {
    deps.log.info({ volume: doc.name, replicas }, 'replica count recorded');
  }
  return stored!.doc;
}

/** Places and creates `count` replicas, then adds them in one compare-and-swap; undone on failure or cancel. */
async function addReplicas(deps: ReplicaCountDeps, doc: VolumeDoc, replicas: number, count: number,
  nodes: Awaited<ReturnType<typeof listNodes>>, signal: AbortSignal | undefined): Promise<VolumeDoc> {
  const what = `change the replica count of volume "${doc.name}"`;
  let targets: NodeId[];
  try {
    targets = placeReplicas({ replicas: count, sizeBytes: doc.sizeBytes, nodes: toPlacementNodes(nodes), existing: doc.replicas.map((r) => r.nodeId), ...(doc.zones ? { zones: doc.zones } : {}) }).nodeIds;
  } catch (err) {
    // Too few nodes up is a lack of resources for this request, like too little room.
    if (isStorageError(err, Code.FAILED_PRECONDITION)) throw new StorageError(Code.RESOURCE_EXHAUSTED, `volume "${doc.name}": ${err.message}`, { cause: err, details: err.details });
    throw err;
  }
  const added = targets.map((nodeId) => ({ id: newReplicaId(), nodeId }));
  const creating = added.map(async (a) => {
    const control = await deps.controls.control(a.nodeId);
    await control.createReplica({ replicaId: a.id, volumeId: doc.id }, doc.sizeBytes, doc.epoch, false);
  });
  const undo = async (): Promise<void> => {
    await Promise.allSettled(creating);
    await deleteRemoved(deps, doc, added);
  };
  try {
    await abortable(Promise.all(creating), signal, what);
    throwIfCancelled(signal, what);
    const since = new Date().toISOString();
    const stored = await updateVolumeDoc(deps.store, doc.name, (d) => {
      if (d.state !== 'ready' || d.id !== doc.id) throw new StorageError(Code.ABORTED, `volume "${doc.name}" changed meanwhile (${d.state}); retry`, { details: { volume: doc.name } });
      if (d.replicasWanted === replicas && d.replicas.length >= replicas) return undefined;
      if (d.replicas.length + added.length !== replicas || d.replicas.some((r) => targets.includes(r.nodeId))) {
        throw new StorageError(Code.ABORTED, `the replicas of volume "${doc.name}" changed meanwhile; retry`, { details: { volume: doc.name } });
      }
      if (!d.replicas.some((r) => r.state === 'in-sync')) throw new StorageError(Code.FAILED_PRECONDITION, `volume "${doc.name}" has no in-sync replica to copy from`, { details: { volume: doc.name } });
      const entries: VolumeReplicaEntry[] = added.map((a) => ({ id: a.id, nodeId: a.nodeId, state: 'rebuilding', since, reason: `added: replica count raised to ${replicas}` }));
      return { ...d, replicasWanted: replicas, replicas: [...d.replicas, ...entries] };
    });
    if (!stored!.doc.replicas.some((r) => r.id === added[0]!.id)) await undo(); // the count was raised by someone else meanwhile
    else deps.log.info({ volume: doc.name, replicas, added: added.map((a) => ({ id: a.id, replicaNode: a.nodeId })) }, 'replica count raised; the engine rebuilds the new replicas');
    return stored!.doc;
  } catch (err) {
    await undo();
    throw err;
  }
}

/** Deletes the replicas' data where their nodes answer; the others are their nodes' orphan collectors' to delete. */
async function deleteRemoved(deps: ReplicaCountDeps, doc: VolumeDoc, replicas: readonly { id: ReplicaId; nodeId: NodeId }[]): Promise<void> {
  await Promise.all(replicas.map(async (r) => {
    try {
      const control = await deps.controls.control(r.nodeId);
      await control.deleteReplica({ replicaId: r.id, volumeId: doc.id }, doc.epoch);
    } catch (err) {
      deps.log.info({ volume: doc.name, replica: r.id, replicaNode: r.nodeId, err: (err as Error).message }, 'removed replica not deleted now (its node is away); its node deletes it once back');
    }
  }));
}
