/**
 * The cluster's snapshot service (SnapshotService in snapshot-types.ts): snapshot documents
 * in the cluster store and the copies on the nodes (docs/snapshots.md).
 *
 * - create: the document is written `creating` first, naming the nodes that may get a copy,
 *   so that a crash leaves something the repair leader finds (`collect`). Then, when an
 *   engine serves the volume, its node runs the write barrier (`snapshotVolume`: this node's
 *   engine host directly, another node over its replica service); when none does, the
 *   in-sync replicas are copied straight away at the document's epoch, in parallel: a
 *   replica that has seen a newer epoch refuses, which means an engine started meanwhile
 *   (ABORTED, retry). All copies or none: on any failure the copies taken and the document
 *   are deleted. Then the document says `ready`.
 * - delete: the document says `deleting`, each copy's node deletes its copy; copies on nodes
 *   that cannot be reached stay listed and the repair leader finishes them (`collect`).
 *   Deleting a volume keeps its snapshots: nothing here follows volume deletions.
 */
import { throwIfCancelled } from '../common/abort.js';
import { Code, StorageError, isStorageError } from '../common/errors.js';
import { newSnapshotId, validateName, type NodeId, type SnapshotId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { ReplicaControl, VolumeSnapshotResult } from '../engine/engine-types.js';
import { listNodes, type NodeStatus } from './node-registry.js';
import { createSnapshotDoc, findSnapshotDoc, getSnapshotDoc, listSnapshotDocs, updateSnapshotDoc } from './snapshot-doc.js';
import type { CreateSnapshotInput, SnapshotCopyEntry, SnapshotDoc, SnapshotService, SnapshotView } from './snapshot-types.js';
import type { ClusterStore } from './store/cluster-store.js';
import { findVolumeDoc, getVolumeDoc, inSyncReplicas, type VolumeDoc } from './volume-doc.js';

/**
 * The longest a volume's writes may stay paused for a snapshot's barrier. The barrier itself
 * takes milliseconds (flush and a thin snapshot or reflink per replica); the deadline bounds
 * a replica that stops answering mid-snapshot, so that I/O resumes within it whatever fails.
 */
export const SNAPSHOT_DEADLINE_MS = 10_000;

/**
 * A `creating` document older than this was left by a crash: the creation it records has
 * long ended (a barrier is bounded by its deadline, and each copy call by the peer deadline).
 */
export const STALE_CREATING_MS = 5 * 60_000;

/**
 * A group member's `creating` document waits this many times longer: its group's finish may
 * fill copies for up to 10 minutes, and its group's coordinator (or the repair leader's group
 * collection) undoes it.
 */
const GROUP_MEMBER_STALE_FACTOR = 3;

/** The replica services of every node. */
export interface SnapshotControls {
  control(nodeId: NodeId): Promise<ReplicaControl>;
}

export interface SnapshotServiceOptions {
  /** This cairnd's name. */
  nodeId: NodeId;
  store: ClusterStore;
  controls: SnapshotControls;
  log: Logger;
  /** The write barrier of an engine running on this node (EngineHost.snapshotVolume); a node without engines (a controller) has none. */
  localSnapshotVolume?: (volumeId: VolumeDoc['id'], snapshotId: SnapshotId, deadlineMs: number) => Promise<VolumeSnapshotResult>;
  /** The barrier's deadline; SNAPSHOT_DEADLINE_MS by default. */
  deadlineMs?: number;
  /** How old a `creating` document must be for `collect` to undo it; STALE_CREATING_MS by default. */
  staleCreatingMs?: number;
}

/** The node running the volume's engine (exported or rebuild-only) at the document's epoch, if any. */
export function engineNodeOf(doc: VolumeDoc): NodeId | undefined {
  const e = doc.engine;
  return e && (e.exported || e.headless) && e.epoch === doc.epoch ? e.nodeId : undefined;
}

export class ClusterSnapshotService implements SnapshotService {
  private readonly locks = new KeyedLock();
  /** Snapshot ids whose creation runs in this process: `collect` leaves them alone. */
  private readonly inFlight = new Set<SnapshotId>();
  private readonly log: Logger;

  constructor(private readonly opts: SnapshotServiceOptions) {
    this.log = opts.log.child({ component: 'snapshots' });
  }

  private get store(): ClusterStore {
    return this.opts.store;
  }

  async create(input: CreateSnapshotInput, opts: { signal?: AbortSignal } = {}): Promise<SnapshotView> {
    const name = validateName('snapshot', input.name);
    if (!input.volume) throw new StorageError(Code.INVALID_ARGUMENT, `snapshot "${name}": name the source volume (by name or id)`, { details: { snapshot: name } });
    return this.locks.run(name, async () => {
      throwIfCancelled(opts.signal, `create snapshot "${name}"`);
      const existing = await getSnapshotDoc(this.store, name, { signal: opts.signal });
      if (existing) return this.existing(existing.doc, input.volume);
      const stored = await findVolumeDoc(this.store, input.volume, { signal: opts.signal });
      const volume = this.requireSource(stored?.doc, input.volume);
      const inSync = inSyncReplicas(volume);
      const engineNode = engineNodeOf(volume);
      // The copies it may get: the in-sync replicas (every replica when an engine decides, its view may be newer).
      const candidates = (engineNode ? volume.replicas : inSync).map((r) => ({ nodeId: r.nodeId, replicaId: r.id }));
      const doc: SnapshotDoc = {
        id: newSnapshotId(), name, sourceVolumeId: volume.id, sourceVolumeName: volume.name, sizeBytes: volume.sizeBytes,
        createdAt: new Date().toISOString(), state: 'creating', readyToUse: false, copiesWanted: volume.replicasWanted, copies: candidates, pauseUs: 0,
        ...(input.internal ? { internal: true } : {}),
      };
      throwIfCancelled(opts.signal, `create snapshot "${name}"`);
      if (!(await createSnapshotDoc(this.store, doc))) {
        throw new StorageError(Code.ABORTED, `snapshot "${name}" was created concurrently on another node; run the command again`, { details: { snapshot: name } });
      }
      this.inFlight.add(doc.id);
      try {
        const taken = engineNode ? await this.viaEngine(doc, volume, engineNode) : await this.direct(doc, volume);
        const ready = await updateSnapshotDoc(this.store, name, (d) => {
          if (d.id !== doc.id || d.state !== 'creating') {
            throw new StorageError(Code.ABORTED, `snapshot "${name}" was deleted while it was being taken; take it again`, { details: { snapshot: name } });
          }
          return { ...d, state: 'ready', readyToUse: true, copies: taken.copies, pauseUs: taken.pauseUs, sizeBytes: taken.sizeBytes };
        }).catch(async (err: unknown) => {
          await this.undo(doc, candidates);
          throw err;
        });
        this.log.info({ snapshot: name, snapshotId: doc.id, volume: volume.name, copies: taken.copies.map((c) => c.nodeId), copiesWanted: doc.copiesWanted,
          pauseUs: taken.pauseUs, barrier: engineNode !== undefined }, 'snapshot taken');
        return await this.view(ready!.doc);
      } finally {
        this.inFlight.delete(doc.id);
      }
    });
  }

  /** The same name again: the existing snapshot when the source is the same, else ALREADY_EXISTS. */
  private async existing(doc: SnapshotDoc, volume: string): Promise<SnapshotView> {
    if (volume !== doc.sourceVolumeId && volume !== doc.sourceVolumeName) {
      throw new StorageError(Code.ALREADY_EXISTS,
        `snapshot "${doc.name}" already exists for volume "${doc.sourceVolumeName}" (${doc.sourceVolumeId}), not "${volume}": choose another name`,
        { details: { snapshot: doc.name, volume: doc.sourceVolumeName } });
    }
    if (doc.state === 'deleting') {
      throw new StorageError(Code.FAILED_PRECONDITION, `snapshot "${doc.name}" is being deleted; take it again once it is gone`, { details: { snapshot: doc.name } });
    }
    if (doc.state === 'creating') {
      throw new StorageError(Code.UNAVAILABLE, `snapshot "${doc.name}" is still being taken (by another node); try again`, { details: { snapshot: doc.name } });
    }
    return this.view(doc);
  }

  private requireSource(doc: VolumeDoc | undefined, volume: string): VolumeDoc {
    if (!doc) throw new StorageError(Code.NOT_FOUND, `volume "${volume}" not found: name an existing volume (by name or id)`, { details: { volume } });
    if (doc.state === 'deleting') {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${doc.name}" is being deleted: it cannot be snapshotted`, { details: { volume: doc.name } });
    }
    if (doc.state === 'creating') throw new StorageError(Code.UNAVAILABLE, `volume "${doc.name}" is still being created; try again`, { details: { volume: doc.name } });
    const inSync = inSyncReplicas(doc).length;
    if (inSync === 0) {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${doc.name}" has no in-sync replica: there is no data to snapshot safely; wait until it is repaired`,
        { details: { volume: doc.name } });
    }
    if (inSync < doc.replicasWanted) {
      this.log.warn({ volume: doc.name, inSync, replicasWanted: doc.replicasWanted }, 'volume degraded: the snapshot gets copies from its in-sync replicas only');
    }
    return doc;
  }

  /** The barrier of the engine serving the volume, on its node. */
  private async viaEngine(doc: SnapshotDoc, volume: VolumeDoc, engineNode: NodeId): Promise<Taken> {
    try {
      const nodes = await listNodes(this.store, this.log);
      if (!nodes.find((n) => n.nodeId === engineNode)?.up) {
        throw new StorageError(Code.UNAVAILABLE,
          `volume "${volume.name}" is served by node ${engineNode}, which is down: fail the volume over (export --takeover on another node) and retry`,
          { details: { volume: volume.name, node: engineNode } });
      }
      const deadlineMs = this.opts.deadlineMs ?? SNAPSHOT_DEADLINE_MS;
      const result = engineNode === this.opts.nodeId && this.opts.localSnapshotVolume
        ? await this.opts.localSnapshotVolume(volume.id, doc.id, deadlineMs)
        : await (await this.opts.controls.control(engineNode)).snapshotVolume(volume.id, doc.id, deadlineMs);
      if (result.copies.length === 0) throw new StorageError(Code.INTERNAL, `the engine of volume "${volume.name}" on node ${engineNode} reported no snapshot copy`);
      return {
        copies: result.copies.map((c) => ({ nodeId: c.nodeId, replicaId: c.replicaId })),
        pauseUs: result.pauseUs, sizeBytes: result.copies[0]!.sizeBytes || volume.sizeBytes,
      };
    } catch (err) {
      await this.undo(doc, doc.copies);
      if (isStorageError(err, Code.FAILED_PRECONDITION)) {
        throw new StorageError(Code.ABORTED,
          `volume "${volume.name}": its engine on node ${engineNode} stopped or moved while the snapshot was taken (${err.message}); retry`,
          { cause: err, details: { volume: volume.name, node: engineNode } });
      }
      throw err;
    }
  }

  /** No engine runs: every in-sync replica is copied at the document's epoch, all or none. */
  private async direct(doc: SnapshotDoc, volume: VolumeDoc): Promise<Taken> {
    const results = await Promise.allSettled(doc.copies.map(async (c) => {
      const control = await this.opts.controls.control(c.nodeId);
      return control.snapshotReplica({ replicaId: c.replicaId, volumeId: volume.id }, volume.epoch, doc.id);
    }));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [{ copy: doc.copies[i]!, err: r.reason as Error }] : []));
    if (failed.length > 0) {
      await this.undo(doc, doc.copies);
      for (const f of failed) this.log.warn({ snapshot: doc.name, replica: f.copy.replicaId, replicaNode: f.copy.nodeId, err: f.err.message }, 'snapshot copy failed');
      const stale = failed.find((f) => isStorageError(f.err, Code.FAILED_PRECONDITION));
      if (stale) {
        throw new StorageError(Code.ABORTED,
          `volume "${volume.name}" was started by an engine while the snapshot was taken (replica ${stale.copy.replicaId} refused epoch ${volume.epoch}); retry`,
          { cause: stale.err, details: { volume: volume.name } });
      }
      const first = failed[0]!;
      if (isStorageError(first.err)) {
        throw new StorageError(first.err.code, `snapshot "${doc.name}" of volume "${volume.name}": the copy on node ${first.copy.nodeId} failed: ${first.err.message}`,
          { cause: first.err, details: { snapshot: doc.name, node: first.copy.nodeId } });
      }
      throw first.err;
    }
    const sizes = results.map((r) => (r.status === 'fulfilled' ? r.value.sizeBytes : 0));
    return { copies: doc.copies, pauseUs: 0, sizeBytes: sizes[0] || volume.sizeBytes };
  }

  /** Deletes the copies a failed creation may have made, then its document. */
  private async undo(doc: SnapshotDoc, copies: readonly SnapshotCopyEntry[]): Promise<void> {
    const left = await this.deleteCopies(doc, copies);
    if (left.length > 0) {
      // Keep the document (deleting) so that the repair leader deletes the rest once the nodes answer.
      await updateSnapshotDoc(this.store, doc.name, (d) => (d.id === doc.id ? { ...d, state: 'deleting', readyToUse: false, copies: left } : undefined))
        .catch((err: unknown) => this.log.warn({ snapshot: doc.name, err: (err as Error).message }, 'failed snapshot not recorded for cleanup; its nodes\' collectors delete the copies'));
      return;
    }
    await updateSnapshotDoc(this.store, doc.name, (d) => (d.id === doc.id ? 'delete' : undefined)).catch(() => undefined);
  }

  /** Deletes the copies where their nodes answer; returns those left. */
  private async deleteCopies(doc: SnapshotDoc, copies: readonly SnapshotCopyEntry[]): Promise<SnapshotCopyEntry[]> {
    const results = await Promise.allSettled(copies.map(async (c) => (await this.opts.controls.control(c.nodeId)).deleteSnapshotCopy(doc.id)));
    const left: SnapshotCopyEntry[] = [];
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') return;
      left.push(copies[i]!);
      this.log.info({ snapshot: doc.name, snapshotId: doc.id, replica: copies[i]!.replicaId, replicaNode: copies[i]!.nodeId, err: (r.reason as Error).message }, 'snapshot copy not deleted now (its node is away); deleted later');
    });
    return left;
  }

  async get(nameOrId: string): Promise<SnapshotView> {
    const stored = await findSnapshotDoc(this.store, nameOrId);
    if (!stored || stored.doc.state === 'deleting') throw new StorageError(Code.NOT_FOUND, `snapshot "${nameOrId}" not found`, { details: { snapshot: nameOrId } });
    return this.view(stored.doc);
  }

  async list(filter: { volume?: string; includeInternal?: boolean } = {}): Promise<SnapshotView[]> {
    const [{ docs, unreadable }, nodes] = await Promise.all([listSnapshotDocs(this.store), listNodes(this.store, this.log)]);
    for (const err of unreadable) this.log.error({ err: err.message }, 'skipping a malformed snapshot document');
    let match = (_d: SnapshotDoc): boolean => true;
    if (filter.volume) {
      const v = filter.volume;
      // A volume of that name now: its own snapshots (not those of an older volume of the same name).
      const volume = (await getVolumeDoc(this.store, v))?.doc;
      match = volume ? (d) => d.sourceVolumeId === volume.id : (d) => d.sourceVolumeId === v || d.sourceVolumeName === v;
    }
    return docs.map((s) => s.doc)
      .filter((d) => d.state !== 'deleting' && (filter.includeInternal || !d.internal) && match(d))
      .sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.name < b.name ? -1 : 1))
      .map((d) => viewOf(d, nodes));
  }

  async delete(nameOrId: string): Promise<void> {
    const found = await findSnapshotDoc(this.store, nameOrId);
    if (!found) return;
    const name = found.doc.name;
    await this.locks.run(name, async () => {
      let deleting: SnapshotDoc | undefined;
      try {
        deleting = (await updateSnapshotDoc(this.store, name, (d) => {
          if (d.id !== found.doc.id) return undefined;
          return d.state === 'deleting' ? undefined : { ...d, state: 'deleting', readyToUse: false };
        }))?.doc;
      } catch (err) {
        if (isStorageError(err, Code.NOT_FOUND)) return;
        throw err;
      }
      if (deleting?.id !== found.doc.id) return;
      await this.finishDelete(deleting);
    });
  }

  /** Deletes the copies of a `deleting` snapshot; its document goes once none is left. Returns whether it is gone. */
  private async finishDelete(doc: SnapshotDoc): Promise<boolean> {
    const left = await this.deleteCopies(doc, doc.copies);
    const keep = new Set(left.map((c) => c.nodeId));
    const after = await updateSnapshotDoc(this.store, doc.name, (d) => {
      if (d.id !== doc.id || d.state !== 'deleting') return undefined;
      const copies = d.copies.filter((c) => keep.has(c.nodeId));
      return copies.length === 0 ? 'delete' : { ...d, copies };
    }).catch((err: unknown) => {
      if (isStorageError(err, Code.NOT_FOUND)) return undefined;
      throw err;
    });
    if (after) {
      this.log.warn({ snapshot: doc.name, snapshotId: doc.id, nodes: [...keep] }, 'snapshot deleted except copies on nodes that cannot be reached; the repair leader deletes them when they return');
      return false;
    }
    this.log.info({ snapshot: doc.name, snapshotId: doc.id, volume: doc.sourceVolumeName }, 'snapshot deleted');
    return true;
  }

  /**
   * For the repair leader: finishes `deleting` snapshots whose copy nodes are back, undoes
   * `creating` ones older than the stale limit that no creation here works on (a crash), and
   * deletes internal (clone) snapshots that old, which a crashed clone left.
   */
  async collect(nodes?: readonly NodeStatus[], now = Date.now()): Promise<void> {
    const up = new Set((nodes ?? await listNodes(this.store, this.log)).filter((n) => n.up).map((n) => n.nodeId));
    const { docs } = await listSnapshotDocs(this.store);
    const staleMs = this.opts.staleCreatingMs ?? STALE_CREATING_MS;
    for (const { doc } of docs) {
      try {
        if (doc.state === 'deleting' && doc.copies.some((c) => up.has(c.nodeId))) {
          await this.locks.run(doc.name, () => this.finishDelete(doc));
        } else if (doc.state === 'ready' && doc.internal && now - Date.parse(doc.createdAt) >= staleMs) {
          // A clone's snapshot outlives its clone only when the cloning node crashed before deleting it.
          this.log.warn({ snapshot: doc.name, snapshotId: doc.id, volume: doc.sourceVolumeName }, 'internal clone snapshot left behind; deleting it');
          await this.delete(doc.id);
        } else if (doc.state === 'creating' && !this.inFlight.has(doc.id) && now - Date.parse(doc.createdAt) >= (doc.groupSnapshotId ? GROUP_MEMBER_STALE_FACTOR : 1) * staleMs) {
          await this.locks.run(doc.name, async () => {
            if (this.inFlight.has(doc.id)) return;
            const marked = await updateSnapshotDoc(this.store, doc.name, (d) => (d.id === doc.id && d.state === 'creating' ? { ...d, state: 'deleting' } : undefined));
            if (marked?.doc.state !== 'deleting' || marked.doc.id !== doc.id) return;
            this.log.warn({ snapshot: doc.name, snapshotId: doc.id, createdAt: doc.createdAt }, 'snapshot left half-taken by a crash; deleting its copies');
            await this.finishDelete(marked.doc);
          });
        }
      } catch (err) {
        this.log.warn({ snapshot: doc.name, err: (err as Error).message }, 'snapshot cleanup failed; retrying next pass');
      }
    }
  }

  private async view(doc: SnapshotDoc): Promise<SnapshotView> {
    return viewOf(doc, await listNodes(this.store, this.log));
  }
}

interface Taken {
  copies: SnapshotCopyEntry[];
  pauseUs: number;
  sizeBytes: number;
}

function viewOf(doc: SnapshotDoc, nodes: readonly NodeStatus[]): SnapshotView {
  const up = new Set(nodes.filter((n) => n.up).map((n) => n.nodeId));
  return { ...doc, copies: doc.copies.map((c) => ({ ...c, nodeUp: up.has(c.nodeId) })) };
}
