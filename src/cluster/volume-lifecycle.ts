/**
 * The volume lifecycle: what a volume is in the cluster store and where its replicas are,
 * over the cluster store and the peers' replica services only. No pool, no NBD export and
 * no dirty-region map is needed here, so a controller-role cairnd (no data plane) runs it
 * as it is; a node running engines plugs its engine host in (`LocalVolumeHost`).
 *
 * - create: place, write the `creating` document, create every replica, mark it `ready`
 *   (volume-create.ts, with restore and clone).
 * - delete: bump the epoch (fencing any engine), mark `deleting`, delete the replicas;
 *   replicas on nodes that are down are deleted by the repair loop when they return.
 *   Cancellation is honoured until the document says `deleting`; from then on the delete
 *   is finished (here, or by the repair loop).
 */
import { abortable, throwIfCancelled } from '../common/abort.js';
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import { alignUp, formatBytes } from '../common/units.js';
import type { EngineReplicaView, ReplicaControl } from '../engine/engine-types.js';
import type { ExportInfo } from '../engine/export-manager.js';
import type { PoolCapacity } from '../pool/backend.js';
import type { ReplicaStatusView } from '../replica/replica-manager.js';
import type { LeaderElection } from './leader-election.js';
import { listNodes, toPlacementNodes, type NodeStatus } from './node-registry.js';
import { largestPlaceable } from './placement.js';
import type { SnapshotService } from './snapshot-types.js';
import { VolumeCreator } from './volume-create.js';
import { expandVolume } from './volume-expand.js';
import { changeReplicaCount, checkReplicaCount } from './volume-modify.js';
import { publishVolume, unpublishVolume } from './volume-publish.js';
import type { ClusterStore } from './store/cluster-store.js';
import {
  MAX_VOLUME_BYTES, VOLUME_ALIGNMENT_BYTES, getVolumeDoc, listVolumeDocs, requireVolume, updateVolumeDoc, volumeHealth,
  type VolumeDoc, type VolumeReplicaEntry,
} from './volume-doc.js';
import type {
  CapacityQuery, ClusterStatusView, CreateVolumeOptions, PublishAccess, ReplicaView, VolumeChanges, VolumePage, VolumeView,
} from './volume-views.js';

export { MAX_VOLUME_BYTES, VOLUME_ALIGNMENT_BYTES, requireVolume } from './volume-doc.js';

/** The replica services of every node: the lifecycle only creates, deletes and asks about replicas. */
export interface ReplicaControls {
  control(nodeId: NodeId): Promise<ReplicaControl>;
}

/** What a node that runs engines adds to the lifecycle (the engine host). */
export interface LocalVolumeHost {
  /** Called under the volume's lock before a delete: refuses it (clients connected) or stops the engine here. */
  beforeDelete(name: string, force: boolean): Promise<void>;
  /** The volume is gone: drops what this node kept about its replicas. */
  forget(doc: VolumeDoc): void;
  /** The volume's NBD export on this node, if any. */
  exportOf(name: string): ExportInfo | undefined;
  /** What the engine here knows about the volume's replicas (none when no engine runs here). */
  engineReplicaViews(name: string): EngineReplicaView[];
  /** The document changed here (an expansion): the engine here follows it now rather than at the watch's event. */
  volumeChanged?(doc: VolumeDoc): void;
}

export interface VolumeLifecycleOptions {
  /** This cairnd's name (a controller's is not a registered data node). */
  nodeId: NodeId;
  clusterName: string;
  store: ClusterStore;
  controls: ReplicaControls;
  election: LeaderElection | undefined;
  defaultReplicas: number;
  /** The capacity `cairnctl status` shows: the local pool on a node, the registered nodes' sum on a controller. */
  capacity: () => Promise<PoolCapacity>;
  log: Logger;
  /** Shared with the engine host, so that create, delete and export of one volume run one at a time. */
  locks?: KeyedLock;
  host?: LocalVolumeHost;
  /** Takes and deletes the internal snapshot a clone is made from; clones are FAILED_PRECONDITION without it. */
  snapshots?: Pick<SnapshotService, 'create' | 'delete'>;
}

/** The capacity of the registered nodes that are up, and what the volume documents provision on them. */
export async function clusterCapacity(store: ClusterStore, log?: Logger): Promise<PoolCapacity> {
  const [nodes, { docs }] = await Promise.all([listNodes(store, log), listVolumeDocs(store)]);
  const up = nodes.filter((n) => n.up);
  const totalBytes = up.reduce((sum, n) => sum + n.capacity.totalBytes, 0);
  const freeBytes = up.reduce((sum, n) => sum + n.capacity.freeBytes, 0);
  const provisionedBytes = docs.reduce((sum, { doc }) => sum + (doc.state === 'deleting' ? 0 : doc.sizeBytes * doc.replicas.length), 0);
  return { totalBytes, freeBytes, usedBytes: Math.max(0, totalBytes - freeBytes), provisionedBytes };
}

/** The size an expansion to `requiredBytes` grows to (rounded up to 4 KiB); INVALID_ARGUMENT or OUT_OF_RANGE when no volume can have it. */
export function expandTarget(requiredBytes: number): number {
  if (!Number.isSafeInteger(requiredBytes) || requiredBytes <= 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `the new volume size must be a positive number of bytes, got ${requiredBytes}`);
  }
  if (requiredBytes > MAX_VOLUME_BYTES) {
    throw new StorageError(Code.OUT_OF_RANGE, `volume size ${formatBytes(requiredBytes)} is over the limit of ${formatBytes(MAX_VOLUME_BYTES)}`);
  }
  return alignUp(requiredBytes, VOLUME_ALIGNMENT_BYTES);
}

export class VolumeLifecycle {
  readonly locks: KeyedLock;
  private readonly log: Logger;
  private readonly creator: VolumeCreator;

  constructor(private readonly opts: VolumeLifecycleOptions) {
    this.locks = opts.locks ?? new KeyedLock();
    this.log = opts.log;
    this.creator = new VolumeCreator({
      nodeId: opts.nodeId, store: opts.store, controls: opts.controls, defaultReplicas: opts.defaultReplicas, log: opts.log, locks: this.locks,
      snapshots: opts.snapshots, view: (doc) => this.view(doc), destroyReplicas: (doc, epoch) => this.destroyReplicas(doc, epoch),
    });
  }

  private get store(): ClusterStore {
    return this.opts.store;
  }

  /** Creates a volume, or returns it when it exists as asked (volume-create.ts); with a content source, restores or clones. */
  create(name: string, requestedBytes: number, options: CreateVolumeOptions = {}, signal?: AbortSignal): Promise<VolumeView> {
    return this.creator.create(name, requestedBytes, options, signal);
  }

  /** Completes a creation that a crash interrupted (the repair loop calls it), or undoes it when it cannot complete. */
  finishCreate(doc: VolumeDoc): Promise<void> {
    return this.creator.finishCreate(doc);
  }

  async delete(name: string, force = false, signal?: AbortSignal): Promise<void> {
    await this.locks.run(name, async () => {
      throwIfCancelled(signal, `delete volume "${name}"`);
      const stored = await getVolumeDoc(this.store, name, { signal });
      if (!stored) return;
      const doc = stored.doc;
      // Without an engine host here (a controller), every exported engine is another process's, whatever its node name.
      const elsewhere = doc.engine?.nodeId !== this.opts.nodeId || !this.opts.host;
      if (doc.engine?.exported && elsewhere && !force && doc.state === 'ready') {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${name}" is served by node ${doc.engine.nodeId}: unexport it there first, or delete with --force`, { details: { volume: name, node: doc.engine.nodeId } });
      }
      const published = (doc.published ?? []).map((p) => p.nodeId);
      if (published.length > 0 && !force && doc.state === 'ready') {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${name}" is still published to node ${published.join(', ')}: unpublish it first (ControllerUnpublishVolume), or delete with --force`, { details: { volume: name, nodes: published } });
      }
      await this.opts.host?.beforeDelete(name, force);
      throwIfCancelled(signal, `delete volume "${name}"`);
      const deleting = await updateVolumeDoc(this.store, name, (d) => ({ ...d, state: 'deleting', epoch: d.epoch + 1, engine: null }));
      await this.finishDelete(deleting!.doc);
    });
  }

  /** Deletes what is left of a `deleting` volume; its document goes once every replica is gone. */
  async finishDelete(doc: VolumeDoc): Promise<boolean> {
    const left = await this.destroyReplicas(doc, doc.epoch);
    if (left.length > 0) {
      await updateVolumeDoc(this.store, doc.name, (d) => ({ ...d, replicas: d.replicas.filter((r) => left.includes(r.id)) }));
      this.log.warn({ volume: doc.name, replicas: left }, 'volume deleted except replicas on nodes that cannot be reached; the repair loop deletes them when they return');
      return false;
    }
    await updateVolumeDoc(this.store, doc.name, () => 'delete').catch((err: unknown) => {
      if (!isStorageError(err) || err.code !== Code.NOT_FOUND) throw err;
    });
    this.opts.host?.forget(doc);
    this.log.info({ volume: doc.name }, 'volume deleted');
    return true;
  }

  /** Deletes each replica; returns the ids that could not be deleted. */
  private async destroyReplicas(doc: VolumeDoc, epoch: number): Promise<ReplicaId[]> {
    const results = await Promise.allSettled(doc.replicas.map(async (r) => {
      const control = await this.opts.controls.control(r.nodeId);
      await control.deleteReplica({ replicaId: r.id, volumeId: doc.id }, epoch);
    }));
    const left: ReplicaId[] = [];
    results.forEach((res, i) => {
      if (res.status === 'rejected') {
        left.push(doc.replicas[i]!.id);
        this.log.warn({ volume: doc.name, replica: doc.replicas[i]!.id, replicaNode: doc.replicas[i]!.nodeId, err: (res.reason as Error).message }, 'replica not deleted');
      }
    });
    return left;
  }

  /**
   * Changes the replica count of a volume live (volume-modify.ts); idempotent. NOT_FOUND for
   * no such volume, RESOURCE_EXHAUSTED when too few nodes are up with room for a new replica.
   * Returns once the change is recorded, before new replicas are rebuilt.
   */
  async modify(name: string, changes: VolumeChanges, signal?: AbortSignal): Promise<VolumeView> {
    if (changes.replicas !== undefined) checkReplicaCount(changes.replicas);
    return this.locks.run(name, async () => {
      throwIfCancelled(signal, `modify volume "${name}"`);
      let doc = requireVolume(await getVolumeDoc(this.store, name, { signal }), name);
      if (changes.replicas !== undefined) doc = await changeReplicaCount({ store: this.store, controls: this.opts.controls, log: this.log }, doc, changes.replicas, signal);
      return this.view(doc);
    });
  }

  /**
   * Grows a volume online to at least `requiredBytes` (rounded up to 4 KiB): its replicas
   * first, then its document, which the engine serving it follows (volume-expand.ts).
   * Idempotent: a volume already that large is returned as it is. OUT_OF_RANGE over the
   * maximum size; UNAVAILABLE while a node holding a replica is down.
   */
  async expand(name: string, requiredBytes: number, signal?: AbortSignal): Promise<VolumeView> {
    const sizeBytes = expandTarget(requiredBytes);
    return this.locks.run(name, async () => {
      const doc = await expandVolume({ store: this.store, controls: this.opts.controls, log: this.log }, name, sizeBytes, signal);
      this.opts.host?.volumeChanged?.(doc);
      return this.view(doc);
    });
  }

  /** Publishes the volume to `nodeId` (volume-publish.ts): NOT_FOUND for an unknown volume or node, FAILED_PRECONDITION while another node holds it. */
  async publish(name: string, nodeId: string, access: PublishAccess, signal?: AbortSignal): Promise<void> {
    await this.locks.run(name, async () => {
      const doc = requireVolume(await getVolumeDoc(this.store, name, { signal }), name);
      await publishVolume({ store: this.store, log: this.log }, doc, nodeId as NodeId, access, signal);
    });
  }

  /** Unpublishes the volume from `nodeId`, or from every node; OK when it is not published there or does not exist. */
  async unpublish(name: string, nodeId: string | undefined, signal?: AbortSignal): Promise<void> {
    await this.locks.run(name, () => unpublishVolume({ store: this.store, log: this.log }, name, nodeId as NodeId | undefined, signal));
  }

  /**
   * A page of volumes in name order after `after` (not necessarily an existing name, so a
   * page stays right when volumes come and go between calls); `last` is set when more follow.
   */
  async listPage(after: string | undefined, maxEntries: number, signal?: AbortSignal): Promise<VolumePage> {
    const { docs } = await listVolumeDocs(this.store, (err) => this.log.error({ err: err.message }, 'skipping a malformed volume document'), { signal });
    const names = docs.filter((d) => d.doc.state !== 'deleting' && (after === undefined || d.doc.name > after))
      .sort((a, b) => (a.doc.name < b.doc.name ? -1 : a.doc.name > b.doc.name ? 1 : 0));
    const page = maxEntries > 0 ? names.slice(0, maxEntries) : names;
    const volumes = await abortable(Promise.all(page.map((d) => this.view(d.doc))), signal, 'list volumes');
    return page.length < names.length ? { volumes, last: page[page.length - 1]!.doc.name } : { volumes };
  }

  /** The largest volume `query` allows now: 4 KiB-aligned, at most MAX_VOLUME_BYTES, 0 when none fits. */
  async placeableBytes(query: CapacityQuery): Promise<number> {
    const bytes = largestPlaceable({
      replicas: query.replicas ?? this.opts.defaultReplicas, nodes: toPlacementNodes(await listNodes(this.store, this.log)),
      ...(query.zones ? { zones: query.zones } : {}),
      ...(query.firstAmong ? { firstAmong: query.firstAmong as readonly NodeId[] } : {}),
    });
    const capped = Math.min(bytes, MAX_VOLUME_BYTES);
    return capped - (capped % VOLUME_ALIGNMENT_BYTES);
  }

  async get(name: string, signal?: AbortSignal): Promise<VolumeView> {
    const doc = requireVolume(await getVolumeDoc(this.store, name, { signal }), name, true);
    return this.view(doc);
  }

  async list(signal?: AbortSignal): Promise<VolumeView[]> {
    const { docs } = await listVolumeDocs(this.store, (err) => this.log.error({ err: err.message }, 'skipping a malformed volume document'), { signal });
    return abortable(Promise.all(docs.filter((d) => d.doc.state !== 'deleting').map((d) => this.view(d.doc))), signal, 'list volumes');
  }

  capacity(): Promise<PoolCapacity> {
    return this.opts.capacity();
  }

  async clusterStatus(): Promise<ClusterStatusView> {
    const [nodes, { docs }] = await Promise.all([listNodes(this.store, this.log), listVolumeDocs(this.store)]);
    const volumes = { total: 0, healthy: 0, degraded: 0, faulted: 0 };
    for (const { doc } of docs) {
      if (doc.state !== 'ready') continue;
      volumes.total++;
      volumes[volumeHealth(doc)]++;
    }
    return {
      cluster: this.opts.clusterName, store: this.store.kind, nodeName: this.opts.nodeId,
      repairLeader: this.opts.election?.state().leader, nodes: { total: nodes.length, up: nodes.filter((n) => n.up).length }, volumes,
    };
  }

  nodes(): Promise<NodeStatus[]> {
    return listNodes(this.store, this.log);
  }

  /** What `cairnctl` shows of a volume: its document, its replicas' nodes' answers, and the engine and export here. */
  async view(doc: VolumeDoc): Promise<VolumeView> {
    const engineViews = new Map<string, EngineReplicaView>((this.opts.host?.engineReplicaViews(doc.name) ?? []).map((v) => [v.replicaId, v]));
    const replicas = await Promise.all(doc.replicas.map((r) => this.replicaView(doc.id, r, engineViews.get(r.id))));
    return {
      id: doc.id, name: doc.name, sizeBytes: doc.sizeBytes, state: doc.state, health: volumeHealth(doc), epoch: doc.epoch,
      createdAt: doc.createdAt, replicasWanted: doc.replicasWanted, engineNode: doc.engine?.exported ? doc.engine.nodeId : undefined,
      allocatedBytes: replicas.reduce((sum, r) => sum + r.allocatedBytes, 0), replicas,
      export: this.opts.host?.exportOf(doc.name),
      published: (doc.published ?? []).map((p) => ({ nodeId: p.nodeId, readonly: p.readonly })),
      ...(doc.fsType === undefined ? {} : { fsType: doc.fsType }),
      ...(doc.zones === undefined ? {} : { zones: doc.zones }),
      ...(doc.contentSource ? { contentSource: { kind: doc.contentSource.kind, id: doc.contentSource.id, name: doc.contentSource.name } } : {}),
      ...(doc.claim ? { claim: { ...doc.claim } } : {}),
    };
  }

  private async replicaView(volumeId: VolumeId, r: VolumeReplicaEntry, engine: EngineReplicaView | undefined): Promise<ReplicaView> {
    let status: ReplicaStatusView | undefined;
    try {
      const control = await this.opts.controls.control(r.nodeId);
      status = await withTimeout(control.getReplicaStatus({ replicaId: r.id, volumeId }), 2000, `status of replica ${r.id}`);
    } catch {
      status = undefined;
    }
    const view: ReplicaView = {
      id: r.id, nodeName: r.nodeId, deviceId: r.id, state: r.state, since: r.since, allocatedBytes: status?.allocatedBytes ?? 0,
      dirtyBytes: engine?.dirtyBytes ?? 0,
    };
    if (r.reason !== undefined) view.reason = r.reason;
    const rebuild = engine?.rebuild ?? (status?.rebuild ? { doneBytes: status.rebuild.doneBytes, totalBytes: status.rebuild.totalBytes, bytesPerSecond: 0 } : undefined);
    if (r.state === 'rebuilding' && rebuild) view.rebuild = rebuild;
    return view;
  }
}
