/**
 * Restore and clone (docs/snapshots.md, "Restore and clone"): a new volume whose data is a
 * snapshot's. The volume lifecycle calls these from `create` with a content source.
 *
 * - placement (`placeRestore`) prefers nodes holding a copy of the snapshot that are up, within
 *   the request's rules (zones, requisite nodes; the preferred node only when it holds a copy
 *   or none qualifies). A replica on such a node is made with `createReplicaFromSnapshot`: a
 *   thin or reflinked child of the copy, in sync at once. A replica elsewhere is created empty
 *   and recorded `faulted` with `fullRebuild`, so the engine (or the repair leader's
 *   rebuild-only engine) copies every region to it from the in-sync replicas over the data
 *   channel, as for any replica added to a volume. The volume is usable at once: the engine
 *   reads only from in-sync replicas.
 * - when the placement the request allows holds no copy node, one extra replica is placed on
 *   a copy node as the in-sync source (a seed, `seedReplicas` in the document, outside
 *   `replicasWanted`); the repair leader removes it once every other replica is in sync
 *   (`dropSeedReplicas`), never while it is the only in-sync one.
 */
import { createHash } from 'node:crypto';
import { Code, StorageError } from '../common/errors.js';
import { newReplicaId, type NodeId, type ReplicaId, type SnapshotId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { formatBytes } from '../common/units.js';
import type { ReplicaControl } from '../engine/engine-types.js';
import { placeReplicas, type PlacementNode } from './placement.js';
import { findSnapshotDoc } from './snapshot-doc.js';
import type { SnapshotDoc } from './snapshot-types.js';
import type { ClusterStore, Guard } from './store/cluster-store.js';
import { updateVolumeDoc, type VolumeDoc, type VolumeReplicaEntry } from './volume-doc.js';

/** Orders copy nodes first among equals in placement (free bytes stay far below 2^52). */
const COPY_NODE_BOOST = 2 ** 52;

/** A snapshot a volume can be restored from now: ready (UNAVAILABLE while creating, FAILED_PRECONDITION while deleting, NOT_FOUND when none). */
export async function restorableSnapshot(store: ClusterStore, nameOrId: string, signal?: AbortSignal): Promise<SnapshotDoc> {
  const found = await findSnapshotDoc(store, nameOrId, { signal });
  if (!found) throw new StorageError(Code.NOT_FOUND, `snapshot "${nameOrId}" not found: name an existing snapshot (by name or id)`, { details: { snapshot: nameOrId } });
  const snap = found.doc;
  if (snap.state === 'creating') throw new StorageError(Code.UNAVAILABLE, `snapshot "${snap.name}" is still being created; try again`, { details: { snapshot: snap.name } });
  if (snap.state === 'deleting') throw new StorageError(Code.FAILED_PRECONDITION, `snapshot "${snap.name}" is being deleted: it cannot be restored`, { details: { snapshot: snap.name } });
  if (snap.copies.length === 0) throw new StorageError(Code.FAILED_PRECONDITION, `snapshot "${snap.name}" has no copy left: it cannot be restored`, { details: { snapshot: snap.name } });
  return snap;
}

/** OUT_OF_RANGE when the new volume would be smaller than the snapshot. */
export function checkRestoreSize(snap: SnapshotDoc, sizeBytes: number, what: string): void {
  if (sizeBytes < snap.sizeBytes) {
    throw new StorageError(Code.OUT_OF_RANGE,
      `${what}: ${formatBytes(sizeBytes)} is smaller than the source's ${formatBytes(snap.sizeBytes)} (snapshot "${snap.name}" of volume "${snap.sourceVolumeName}"); ask for at least that much, or 0 for the same size`,
      { details: { sizeBytes, sourceSizeBytes: snap.sizeBytes } });
  }
}

/** The name of the internal snapshot a clone of `sourceId` into `name` is made from (deterministic, so that a retried clone finds it). */
export function cloneSnapshotName(sourceId: string, name: string): string {
  return `clone-${createHash('sha256').update(`${sourceId}\0${name}`).digest('hex').slice(0, 24)}`;
}

export interface RestorePlacementRequest {
  replicas: number;
  sizeBytes: number;
  nodes: readonly PlacementNode[];
  /** The nodes holding a copy of the snapshot. */
  copyNodes: readonly NodeId[];
  preferredNode?: NodeId;
  firstAmong?: readonly NodeId[];
  zones?: readonly string[];
}

export interface RestorePlacement {
  /** Wanted replicas on copy nodes (thin children, in sync). */
  fromCopy: NodeId[];
  /** Wanted replicas elsewhere (created empty, rebuilt in full). */
  empty: NodeId[];
  /** A seed replica on a copy node, outside the wanted ones, when none of them is on one. */
  seed?: NodeId;
}

/** Where a restored volume's replicas go (see the file comment). */
export function placeRestore(req: RestorePlacementRequest): RestorePlacement {
  const copies = new Set(req.copyNodes);
  const usable = req.nodes.filter((n) => copies.has(n.nodeId) && n.up && n.freeBytes >= req.sizeBytes);
  if (!req.nodes.some((n) => copies.has(n.nodeId) && n.up)) {
    throw new StorageError(Code.UNAVAILABLE, `no node holding a copy of the snapshot is up (copies on ${req.copyNodes.join(', ') || 'no node'}); try again once one of them is back`,
      { details: { copyNodes: req.copyNodes } });
  }
  const boosted = req.nodes.map((n) => (usable.includes(n) ? { ...n, freeBytes: n.freeBytes + COPY_NODE_BOOST } : n));
  const preferred = req.preferredNode && (copies.has(req.preferredNode) || usable.length === 0) ? req.preferredNode : undefined;
  const placed = placeReplicas({
    replicas: req.replicas, sizeBytes: req.sizeBytes, nodes: boosted,
    ...(preferred ? { preferredNode: preferred } : {}),
    ...(req.firstAmong ? { firstAmong: req.firstAmong } : {}),
    ...(req.zones ? { zones: req.zones } : {}),
  }).nodeIds;
  const fromCopy = placed.filter((id) => usable.some((n) => n.nodeId === id));
  const empty = placed.filter((id) => !fromCopy.includes(id));
  if (fromCopy.length > 0) return { fromCopy, empty };
  const seed = usable.filter((n) => !placed.includes(n.nodeId)).sort((a, b) => b.freeBytes - a.freeBytes || (a.nodeId < b.nodeId ? -1 : 1))[0];
  if (!seed) {
    throw new StorageError(Code.RESOURCE_EXHAUSTED, `no node holding a copy of the snapshot (${req.copyNodes.join(', ')}) has ${formatBytes(req.sizeBytes)} free for the restored data`,
      { details: { copyNodes: req.copyNodes, sizeBytes: req.sizeBytes } });
  }
  return { fromCopy, empty, seed: seed.nodeId };
}

/** The replica entries of a restored volume's `creating` document: in sync on copy nodes, faulted with `fullRebuild` elsewhere. */
export function restoreReplicas(placement: RestorePlacement, snap: SnapshotDoc, now: string): { replicas: VolumeReplicaEntry[]; seedReplicas: ReplicaId[] } {
  const inSync = (nodeId: NodeId): VolumeReplicaEntry => ({ id: newReplicaId(), nodeId, state: 'in-sync', since: now });
  const replicas = [
    ...placement.fromCopy.map(inSync),
    ...placement.empty.map((nodeId): VolumeReplicaEntry => ({
      id: newReplicaId(), nodeId, state: 'faulted', since: now, fullRebuild: true, reason: `restored from snapshot "${snap.name}": copied from the in-sync replicas`,
    })),
  ];
  const seedReplicas: ReplicaId[] = [];
  if (placement.seed) {
    const seed = inSync(placement.seed);
    replicas.push(seed);
    seedReplicas.push(seed.id);
  }
  return { replicas, seedReplicas };
}

/** Creates one replica of a restored volume: from the node's copy when it is in sync in the document, else empty. */
export async function createRestoredReplica(control: ReplicaControl, doc: VolumeDoc, r: VolumeReplicaEntry): Promise<void> {
  const ref = { replicaId: r.id, volumeId: doc.id };
  if (r.state === 'in-sync') await control.createReplicaFromSnapshot(ref, doc.sizeBytes, doc.epoch, doc.contentSource!.snapshotId as SnapshotId);
  else await control.createReplica(ref, doc.sizeBytes, doc.epoch, false);
}

export interface SeedDeps {
  store: ClusterStore;
  controls: { control(nodeId: NodeId): Promise<ReplicaControl> };
  log: Logger;
  /** Extra guards of the change (the repair leader's key). */
  guards?: () => readonly Guard[];
}

/**
 * Removes the seed replicas of a restored volume once every other replica is in sync (the
 * repair leader calls it). Never leaves the volume without an in-sync replica. Returns the
 * document as it is afterwards.
 */
export async function dropSeedReplicas(deps: SeedDeps, doc: VolumeDoc): Promise<VolumeDoc> {
  const seeds = doc.seedReplicas ?? [];
  const ready = (d: VolumeDoc): boolean => {
    const others = d.replicas.filter((r) => !(d.seedReplicas ?? []).includes(r.id));
    return d.state === 'ready' && others.length > 0 && others.every((r) => r.state === 'in-sync');
  };
  if (seeds.length === 0 || !ready(doc)) return doc;
  let removed: VolumeReplicaEntry[] = [];
  const stored = await updateVolumeDoc(deps.store, doc.name, (d) => {
    if (d.id !== doc.id || !ready(d)) return undefined;
    removed = d.replicas.filter((r) => (d.seedReplicas ?? []).includes(r.id));
    const { seedReplicas: _seeds, ...rest } = d;
    return { ...rest, replicas: d.replicas.filter((r) => !removed.includes(r)) };
  }, deps.guards);
  for (const r of removed) {
    try {
      await (await deps.controls.control(r.nodeId)).deleteReplica({ replicaId: r.id, volumeId: doc.id }, stored!.doc.epoch);
    } catch (err) {
      deps.log.info({ volume: doc.name, replica: r.id, replicaNode: r.nodeId, err: (err as Error).message }, 'seed replica not deleted now (its node is away); its node deletes it once back');
    }
  }
  if (removed.length > 0) deps.log.info({ volume: doc.name, removed: removed.map((r) => ({ id: r.id, replicaNode: r.nodeId })) }, 'restore complete: seed replica removed, every wanted replica is in sync');
  return stored?.doc ?? doc;
}
