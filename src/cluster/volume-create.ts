/**
 * Creating a volume, the half of the volume lifecycle (volume-lifecycle.ts) that makes one:
 * place, write the document (state `creating`), create every replica (in sync: they are all
 * zeros), then mark it `ready`. A crash in between leaves a `creating` document that the same
 * call, repeated, completes (or the repair loop, `finishCreate`). A cancelled call (its
 * AbortSignal fires) rolls the creation back: the replicas being created are waited for, then
 * every replica and the document are deleted. Restore and clone (a content source) place and
 * make their replicas through volume-restore.ts.
 */
import { abortable, throwIfCancelled } from '../common/abort.js';
import { Code, StorageError } from '../common/errors.js';
import { newReplicaId, newVolumeId, validateName, type NodeId, type ReplicaId } from '../common/ids.js';
import type { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { alignUp, formatBytes } from '../common/units.js';
import type { ReplicaControl } from '../engine/engine-types.js';
import { listNodes, toPlacementNodes } from './node-registry.js';
import { placeReplicas } from './placement.js';
import type { SnapshotDoc, SnapshotService, VolumeContentSource } from './snapshot-types.js';
import { checkRestoreSize, cloneSnapshotName, createRestoredReplica, placeRestore, restorableSnapshot, restoreReplicas } from './volume-restore.js';
import type { ClusterStore } from './store/cluster-store.js';
import {
  MAX_REPLICAS, MAX_VOLUME_BYTES, VOLUME_ALIGNMENT_BYTES, claimLogFields, createVolumeDoc, findVolumeDoc, getVolumeDoc, regionBytesFor, requireVolume,
  updateVolumeDoc,
  type VolumeContentSourceEntry, type VolumeDoc,
} from './volume-doc.js';
import type { CreateVolumeOptions, VolumeView } from './volume-views.js';

/** What creating a volume needs of the lifecycle. */
export interface VolumeCreatorOptions {
  /** This cairnd's name (a controller's is not a registered data node). */
  nodeId: NodeId;
  store: ClusterStore;
  controls: { control(nodeId: NodeId): Promise<ReplicaControl> };
  defaultReplicas: number;
  log: Logger;
  /** The lifecycle's locks: create, delete and export of one volume run one at a time. */
  locks: KeyedLock;
  /** Takes and deletes the internal snapshot a clone is made from; clones are FAILED_PRECONDITION without it. */
  snapshots?: Pick<SnapshotService, 'create' | 'delete'>;
  /** What `cairnctl` shows of a volume. */
  view(doc: VolumeDoc): Promise<VolumeView>;
  /** Deletes each replica; returns the ids that could not be deleted (the rollback of a failed creation). */
  destroyReplicas(doc: VolumeDoc, epoch: number): Promise<ReplicaId[]>;
}

function validateCreate(name: string, requestedBytes: number, replicas: number): void {
  validateName('volume', name);
  if (!Number.isSafeInteger(requestedBytes) || requestedBytes <= 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `volume size must be a positive number of bytes, got ${requestedBytes}`);
  }
  if (requestedBytes > MAX_VOLUME_BYTES) {
    throw new StorageError(Code.OUT_OF_RANGE, `volume size ${formatBytes(requestedBytes)} is over the limit of ${formatBytes(MAX_VOLUME_BYTES)}`);
  }
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw new StorageError(Code.INVALID_ARGUMENT, `replicas must be 1 to ${MAX_REPLICAS}, got ${replicas}`);
  }
}

/** Creates volumes for the lifecycle (VolumeLifecycle.create and finishCreate delegate here). */
export class VolumeCreator {
  constructor(private readonly opts: VolumeCreatorOptions) {}

  private get store(): ClusterStore {
    return this.opts.store;
  }

  private get log(): Logger {
    return this.opts.log;
  }

  private get locks(): KeyedLock {
    return this.opts.locks;
  }

  private view(doc: VolumeDoc): Promise<VolumeView> {
    return this.opts.view(doc);
  }

  private destroyReplicas(doc: VolumeDoc, epoch: number): Promise<ReplicaId[]> {
    return this.opts.destroyReplicas(doc, epoch);
  }

  async create(name: string, requestedBytes: number, options: CreateVolumeOptions = {}, signal?: AbortSignal): Promise<VolumeView> {
    if (options.source) return this.createFrom(name, requestedBytes, options, options.source, signal);
    const replicas = options.replicas || this.opts.defaultReplicas;
    validateCreate(name, requestedBytes, replicas);
    const sizeBytes = alignUp(requestedBytes, VOLUME_ALIGNMENT_BYTES);
    return this.locks.run(name, async () => {
      throwIfCancelled(signal, `create volume "${name}"`);
      let stored = await getVolumeDoc(this.store, name, { signal });
      if (stored && stored.doc.state !== 'deleting') {
        const d = stored.doc;
        if (d.sizeBytes !== sizeBytes) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists with size ${formatBytes(d.sizeBytes)}, not ${formatBytes(sizeBytes)}`, { details: { volume: name } });
        }
        if (options.replicas && d.replicasWanted !== options.replicas) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists with ${d.replicasWanted} replica(s), not ${options.replicas}`, { details: { volume: name } });
        }
        if (options.fsType !== undefined && d.fsType !== options.fsType) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists for ${d.fsType ?? 'no filesystem'}, not ${options.fsType}`, { details: { volume: name } });
        }
        if (options.zones !== undefined && !sameZones(d.zones, options.zones)) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists in ${zoneList(d.zones)}, not ${zoneList(options.zones)}`, { details: { volume: name } });
        }
        if (d.contentSource) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists, made from ${d.contentSource.kind} "${d.contentSource.name}", not empty`, { details: { volume: name } });
        }
        if (d.state === 'ready') return this.view(d);
      } else if (stored) {
        throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" is still being deleted; try again once it is gone`, { details: { volume: name } });
      } else {
        stored = { doc: await this.place(name, sizeBytes, replicas, options, signal), modRevision: 0 };
      }
      return this.view(await this.provision(stored.doc, signal));
    });
  }

  /** Places the replicas and writes the `creating` document. */
  private async place(name: string, sizeBytes: number, replicas: number, options: CreateVolumeOptions, signal: AbortSignal | undefined): Promise<VolumeDoc> {
    const placed = placeReplicas({
      replicas, sizeBytes, nodes: toPlacementNodes(await listNodes(this.store, this.log)),
      ...(options.preferredNode ? { preferredNode: options.preferredNode as NodeId } : {}),
      ...(options.requisiteNodes ? { firstAmong: options.requisiteNodes as readonly NodeId[] } : {}),
      ...(options.zones ? { zones: options.zones } : {}),
    });
    throwIfCancelled(signal, `create volume "${name}"`);
    const now = new Date().toISOString();
    const doc: VolumeDoc = {
      id: newVolumeId(), name, sizeBytes, createdAt: now, state: 'creating', replicasWanted: replicas, regionBytes: regionBytesFor(sizeBytes),
      epoch: 1, engine: null, replicas: placed.nodeIds.map((nodeId) => ({ id: newReplicaId(), nodeId, state: 'in-sync', since: now })),
      ...(options.fsType === undefined ? {} : { fsType: options.fsType }),
      ...(options.claim ? { claim: { ...options.claim } } : {}),
      ...(options.zones && options.zones.length > 0 ? { zones: [...new Set(options.zones)].sort() } : {}),
    };
    if (!(await createVolumeDoc(this.store, doc))) {
      throw new StorageError(Code.ABORTED, `volume "${name}" was created concurrently on another node; run the command again`, { details: { volume: name } });
    }
    this.log.info({ volume: name, ...claimLogFields(doc.claim), sizeBytes, replicas: doc.replicas.map((r) => ({ id: r.id, replicaNode: r.nodeId })), zonesShared: placed.zonesShared }, 'volume placed');
    return doc;
  }

  /**
   * Restore (a snapshot source) or clone (a volume source): see volume-restore.ts. A clone
   * takes an internal snapshot of the source through the snapshot service, restores from it,
   * and deletes it again (the new replicas do not depend on it), whatever the outcome.
   */
  private async createFrom(name: string, requestedBytes: number, options: CreateVolumeOptions, source: VolumeContentSource, signal?: AbortSignal): Promise<VolumeView> {
    validateName('volume', name);
    const replicas = options.replicas || this.opts.defaultReplicas;
    const asked = 'snapshot' in source ? { kind: 'snapshot' as const, ref: source.snapshot } : { kind: 'volume' as const, ref: source.volume };
    if (!asked.ref) throw new StorageError(Code.INVALID_ARGUMENT, `volume "${name}": the content source names no ${asked.kind}`, { details: { volume: name } });
    if (requestedBytes !== 0 && !(Number.isSafeInteger(requestedBytes) && requestedBytes > 0)) {
      throw new StorageError(Code.INVALID_ARGUMENT, `volume size must be 0 (the source's size) or a positive number of bytes, got ${requestedBytes}`);
    }
    return this.locks.run(name, async () => {
      throwIfCancelled(signal, `create volume "${name}"`);
      const stored = await getVolumeDoc(this.store, name, { signal });
      if (stored?.doc.state === 'deleting') {
        throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" is still being deleted; try again once it is gone`, { details: { volume: name } });
      }
      if (stored) return this.view(await this.existingFrom(stored.doc, requestedBytes, options, asked, signal));
      if (asked.kind === 'snapshot') {
        const snap = await restorableSnapshot(this.store, asked.ref, signal);
        const entry = { kind: 'snapshot' as const, id: snap.id, name: snap.name, snapshotId: snap.id };
        return this.view(await this.restore(name, requestedBytes, replicas, options, snap, entry, signal));
      }
      const sourceDoc = requireVolume(await findVolumeDoc(this.store, asked.ref, { signal }), asked.ref);
      if (!this.opts.snapshots) throw new StorageError(Code.FAILED_PRECONDITION, `this cairnd (${this.opts.nodeId}) cannot clone volumes: it has no snapshot service`);
      const snapName = cloneSnapshotName(sourceDoc.id, name);
      const taken = await this.opts.snapshots.create({ name: snapName, volume: sourceDoc.id, internal: true }, signal ? { signal } : {});
      try {
        const snap = await restorableSnapshot(this.store, taken.id, signal);
        const entry = { kind: 'volume' as const, id: sourceDoc.id, name: sourceDoc.name, snapshotId: snap.id };
        return this.view(await this.restore(name, requestedBytes, replicas, options, snap, entry, signal));
      } finally {
        await this.opts.snapshots.delete(taken.id).catch((err: unknown) => this.log.warn({ volume: name, snapshot: snapName, err: (err as Error).message },
          'internal clone snapshot not deleted now; the repair leader deletes it'));
      }
    });
  }

  /** The same name again with a content source: the existing volume when it was made from the same source at that size, else ALREADY_EXISTS. */
  private async existingFrom(d: VolumeDoc, requestedBytes: number, options: CreateVolumeOptions, asked: { kind: 'snapshot' | 'volume'; ref: string },
    signal?: AbortSignal): Promise<VolumeDoc> {
    const name = d.name;
    const src = d.contentSource;
    if (!src || src.kind !== asked.kind || (asked.ref !== src.id && asked.ref !== src.name)) {
      const what = src ? `${src.kind} "${src.name}"` : 'nothing (empty)';
      throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists, made from ${what}, not ${asked.kind} "${asked.ref}"`, { details: { volume: name } });
    }
    if (requestedBytes !== 0 && d.sizeBytes !== alignUp(requestedBytes, VOLUME_ALIGNMENT_BYTES)) {
      throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists with size ${formatBytes(d.sizeBytes)}, not ${formatBytes(requestedBytes)}`, { details: { volume: name } });
    }
    if (options.replicas && d.replicasWanted !== options.replicas) {
      throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists with ${d.replicasWanted} replica(s), not ${options.replicas}`, { details: { volume: name } });
    }
    if (d.state === 'ready') return d;
    return this.provision(d, signal);
  }

  /** Places a restored volume (copy nodes first), writes its `creating` document and makes its replicas. */
  private async restore(name: string, requestedBytes: number, replicas: number, options: CreateVolumeOptions, snap: SnapshotDoc,
    source: VolumeContentSourceEntry, signal?: AbortSignal): Promise<VolumeDoc> {
    const sizeBytes = alignUp(requestedBytes === 0 ? snap.sizeBytes : requestedBytes, VOLUME_ALIGNMENT_BYTES);
    checkRestoreSize(snap, sizeBytes, `volume "${name}"`);
    validateCreate(name, sizeBytes, replicas);
    const placement = placeRestore({
      replicas, sizeBytes, nodes: toPlacementNodes(await listNodes(this.store, this.log)), copyNodes: snap.copies.map((c) => c.nodeId),
      ...(options.preferredNode ? { preferredNode: options.preferredNode as NodeId } : {}),
      ...(options.requisiteNodes ? { firstAmong: options.requisiteNodes as readonly NodeId[] } : {}),
      ...(options.zones ? { zones: options.zones } : {}),
    });
    throwIfCancelled(signal, `create volume "${name}"`);
    const now = new Date().toISOString();
    const { replicas: entries, seedReplicas } = restoreReplicas(placement, snap, now);
    const doc: VolumeDoc = {
      id: newVolumeId(), name, sizeBytes, createdAt: now, state: 'creating', replicasWanted: replicas, regionBytes: regionBytesFor(sizeBytes),
      epoch: 1, engine: null, replicas: entries, contentSource: source,
      ...(seedReplicas.length > 0 ? { seedReplicas } : {}),
      ...(options.fsType === undefined ? {} : { fsType: options.fsType }),
      ...(options.claim ? { claim: { ...options.claim } } : {}),
      ...(options.zones && options.zones.length > 0 ? { zones: [...new Set(options.zones)].sort() } : {}),
    };
    if (!(await createVolumeDoc(this.store, doc))) {
      throw new StorageError(Code.ABORTED, `volume "${name}" was created concurrently on another node; run the command again`, { details: { volume: name } });
    }
    this.log.info({ volume: name, sizeBytes, source, fromCopy: placement.fromCopy, rebuilt: placement.empty, seed: placement.seed }, 'restored volume placed');
    return this.provision(doc, signal);
  }

  /** Completes a creation that a crash interrupted (the repair loop calls it), or undoes it when it cannot complete. */
  async finishCreate(doc: VolumeDoc): Promise<void> {
    await this.locks.run(doc.name, async () => {
      const current = await getVolumeDoc(this.store, doc.name);
      if (current?.doc.state !== 'creating' || current.doc.id !== doc.id) return;
      this.log.info({ volume: doc.name }, 'finishing an interrupted volume creation');
      await this.provision(current.doc);
    });
  }

  /**
   * Creates every replica of a `creating` document (idempotent), then marks it ready. On
   * failure or cancellation, waits for the replica calls in flight and undoes the creation.
   */
  private async provision(doc: VolumeDoc, signal?: AbortSignal): Promise<VolumeDoc> {
    const creating = doc.replicas.map(async (r) => {
      const control = await this.opts.controls.control(r.nodeId);
      if (doc.contentSource) await createRestoredReplica(control, doc, r);
      else await control.createReplica({ replicaId: r.id, volumeId: doc.id }, doc.sizeBytes, doc.epoch, true);
    });
    try {
      await abortable(Promise.all(creating), signal, `create volume "${doc.name}"`);
      throwIfCancelled(signal, `create volume "${doc.name}"`);
    } catch (err) {
      this.log.warn({ volume: doc.name, err }, 'volume creation failed; rolling back');
      await Promise.allSettled(creating); // a replica still being created would outlive its rollback
      await this.destroyReplicas(doc, doc.epoch);
      await updateVolumeDoc(this.store, doc.name, () => 'delete').catch(() => undefined);
      throw err;
    }
    const ready = await updateVolumeDoc(this.store, doc.name, (d) => (d.state === 'creating' ? { ...d, state: 'ready' } : undefined));
    this.log.info({ volume: doc.name, ...claimLogFields(doc.claim), sizeBytes: doc.sizeBytes, replicas: doc.replicas.length, ...(doc.contentSource ? { source: doc.contentSource } : {}) }, 'volume created');
    return ready!.doc;
  }
}

/** Whether a stored volume's zones and a request's are the same set (order and repeats aside). */
function sameZones(stored: readonly string[] | undefined, asked: readonly string[]): boolean {
  const a = [...new Set(stored ?? [])].sort();
  const b = [...new Set(asked)].sort();
  return a.length === b.length && a.every((z, i) => z === b[i]);
}

function zoneList(zones: readonly string[] | undefined): string {
  return zones && zones.length > 0 ? `zone(s) ${zones.join(', ')}` : 'any zone';
}
