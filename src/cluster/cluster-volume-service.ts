/**
 * Volumes of the cluster: the control plane every cairnd runs, over the cluster store
 * (etcd, or the embedded SQLite store on a single node). A volume is a document in the
 * store (see volume-doc.ts) plus 1-3 replicas on distinct nodes, placed by placement.ts.
 *
 * - create: place, write the document (state `creating`), create every replica (in sync:
 *   they are all zeros), then mark it `ready`. A crash in between leaves a `creating`
 *   document that the same call, repeated, completes.
 * - export: bump the epoch by compare-and-swap with this node as the engine, start the
 *   engine (which fences every older one at the replicas), then serve it over NBD.
 *   `takeover` is failover: the same, while another node's engine holds the volume.
 * - delete: bump the epoch (fencing any engine), mark `deleting`, delete the replicas;
 *   replicas on nodes that are down are deleted by the repair loop when they return.
 *
 * One watch on `volumes/` feeds document changes to the engines running here.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import { newReplicaId, newVolumeId, validateName, type NodeId, type ReplicaId, type VolumeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import { alignUp, formatBytes } from '../common/units.js';
import type { DirtyMapStore, EngineReplicaView, ReplicaConnector } from '../engine/engine-types.js';
import type { ExportInfo, ExportManager } from '../engine/export-manager.js';
import { VolumeEngine } from '../engine/volume-engine.js';
import type { PoolBackend, PoolCapacity } from '../pool/backend.js';
import type { ReplicaStatusView } from '../replica/replica-manager.js';
import { DocEngineControl } from './engine-control.js';
import type { LeaderElection } from './leader-election.js';
import { listNodes, toPlacementNodes, type NodeStatus } from './node-registry.js';
import { placeReplicas } from './placement.js';
import type { ClusterStore, Watch } from './store/cluster-store.js';
import { keys } from './store/keys.js';
import {
  MAX_REPLICAS, createVolumeDoc, getVolumeDoc, inSyncReplicas, listVolumeDocs, regionBytesFor, updateVolumeDoc, volumeHealth, VOLUMES_PREFIX,
  type VolumeDoc, type VolumeReplicaEntry,
} from './volume-doc.js';
import type {
  ClusterStatusView, CreateVolumeOptions, ExportOptions, ReplicaView, VerifyMismatch, VerifyResult, VolumeApi, VolumeView,
} from './volume-views.js';

/** Volume sizes are rounded up to this, the preferred block size we advertise. */
export const VOLUME_ALIGNMENT_BYTES = 4096;
/** NBD carries 64-bit sizes, but JavaScript numbers are exact only below 2^53. */
export const MAX_VOLUME_BYTES = 2 ** 50; // 1 PiB
/** Regions per ChecksumRange call when verifying. */
const VERIFY_REGIONS_PER_CALL = 1024;

export interface ClusterVolumeServiceOptions {
  nodeId: NodeId;
  clusterName: string;
  store: ClusterStore;
  pool: PoolBackend;
  connector: ReplicaConnector;
  exports: ExportManager;
  dirtyMaps: DirtyMapStore;
  election: LeaderElection | undefined;
  defaultReplicas: number;
  replicaTimeoutMs: number;
  rebuildRateBytesPerSec: number;
  log: Logger;
}

interface RunningEngine {
  engine: VolumeEngine;
  control: DocEngineControl;
  epoch: number;
  /** A rebuild-only engine (no NBD) started for the repair loop. */
  headless?: boolean;
}

export class ClusterVolumeService implements VolumeApi {
  private readonly locks = new KeyedLock();
  private readonly engines = new Map<string, RunningEngine>();
  private watch: Watch | undefined;
  private nodeWatch: Watch | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: ClusterVolumeServiceOptions) {
    this.log = opts.log;
  }

  private get store(): ClusterStore {
    return this.opts.store;
  }

  async create(name: string, requestedBytes: number, options: CreateVolumeOptions = {}): Promise<VolumeView> {
    validateName('volume', name);
    if (!Number.isSafeInteger(requestedBytes) || requestedBytes <= 0) {
      throw new StorageError(Code.INVALID_ARGUMENT, `volume size must be a positive number of bytes, got ${requestedBytes}`);
    }
    if (requestedBytes > MAX_VOLUME_BYTES) {
      throw new StorageError(Code.OUT_OF_RANGE, `volume size ${formatBytes(requestedBytes)} is over the limit of ${formatBytes(MAX_VOLUME_BYTES)}`);
    }
    const replicas = options.replicas || this.opts.defaultReplicas;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
      throw new StorageError(Code.INVALID_ARGUMENT, `replicas must be 1 to ${MAX_REPLICAS}, got ${replicas}`);
    }
    const sizeBytes = alignUp(requestedBytes, VOLUME_ALIGNMENT_BYTES);
    return this.locks.run(name, async () => {
      let stored = await getVolumeDoc(this.store, name);
      if (stored && stored.doc.state !== 'deleting') {
        const d = stored.doc;
        if (d.sizeBytes !== sizeBytes) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists with size ${formatBytes(d.sizeBytes)}, not ${formatBytes(sizeBytes)}`, { details: { volume: name } });
        }
        if (options.replicas && d.replicasWanted !== options.replicas) {
          throw new StorageError(Code.ALREADY_EXISTS, `volume "${name}" already exists with ${d.replicasWanted} replica(s), not ${options.replicas}`, { details: { volume: name } });
        }
        if (d.state === 'ready') return this.view(d);
      } else if (stored) {
        throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" is still being deleted; try again once it is gone`, { details: { volume: name } });
      } else {
        const placed = placeReplicas({
          replicas, sizeBytes, nodes: toPlacementNodes(await listNodes(this.store, this.log)),
          ...(options.preferredNode ? { preferredNode: options.preferredNode as NodeId } : {}),
        });
        const now = new Date().toISOString();
        const doc: VolumeDoc = {
          id: newVolumeId(), name, sizeBytes, createdAt: now, state: 'creating', replicasWanted: replicas, regionBytes: regionBytesFor(sizeBytes),
          epoch: 1, engine: null, replicas: placed.nodeIds.map((nodeId) => ({ id: newReplicaId(), nodeId, state: 'in-sync', since: now })),
        };
        if (!(await createVolumeDoc(this.store, doc))) {
          throw new StorageError(Code.ABORTED, `volume "${name}" was created concurrently on another node; run the command again`, { details: { volume: name } });
        }
        stored = { doc, modRevision: 0 };
        this.log.info({ volume: name, sizeBytes, replicas: doc.replicas.map((r) => ({ id: r.id, node: r.nodeId })), zonesShared: placed.zonesShared }, 'volume placed');
      }
      return this.view(await this.provision(stored.doc));
    });
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

  /** Creates every replica of a `creating` document (idempotent), then marks it ready. On failure, undoes it. */
  private async provision(doc: VolumeDoc): Promise<VolumeDoc> {
    try {
      await Promise.all(doc.replicas.map(async (r) => {
        const control = await this.opts.connector.control(r.nodeId);
        await control.createReplica({ replicaId: r.id, volumeId: doc.id }, doc.sizeBytes, doc.epoch, true);
      }));
    } catch (err) {
      this.log.warn({ volume: doc.name, err }, 'volume creation failed; rolling back');
      await this.destroyReplicas(doc, doc.epoch);
      await updateVolumeDoc(this.store, doc.name, () => 'delete').catch(() => undefined);
      throw err;
    }
    const ready = await updateVolumeDoc(this.store, doc.name, (d) => (d.state === 'creating' ? { ...d, state: 'ready' } : undefined));
    this.log.info({ volume: doc.name, sizeBytes: doc.sizeBytes, replicas: doc.replicas.length }, 'volume created');
    return ready!.doc;
  }

  async delete(name: string, force = false): Promise<void> {
    await this.locks.run(name, async () => {
      const stored = await getVolumeDoc(this.store, name);
      if (!stored) return;
      const doc = stored.doc;
      const running = this.engines.get(name);
      const served = this.opts.exports.get(name);
      if (served && served.connectionCount > 0 && !force) {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${name}" has ${served.connectionCount} NBD client(s) connected: disconnect them first, or delete with --force`, { details: { volume: name } });
      }
      if (doc.engine?.exported && doc.engine.nodeId !== this.opts.nodeId && !force && doc.state === 'ready') {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${name}" is served by node ${doc.engine.nodeId}: unexport it there first, or delete with --force`, { details: { volume: name, node: doc.engine.nodeId } });
      }
      if (running) await this.stopEngine(name);
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
    for (const r of doc.replicas) this.opts.dirtyMaps.delete(doc.id, r.id);
    this.log.info({ volume: doc.name }, 'volume deleted');
    return true;
  }

  /** Deletes each replica; returns the ids that could not be deleted. */
  private async destroyReplicas(doc: VolumeDoc, epoch: number): Promise<ReplicaId[]> {
    const results = await Promise.allSettled(doc.replicas.map(async (r) => {
      const control = await this.opts.connector.control(r.nodeId);
      await control.deleteReplica({ replicaId: r.id, volumeId: doc.id }, epoch);
    }));
    const left: ReplicaId[] = [];
    results.forEach((res, i) => {
      if (res.status === 'rejected') {
        left.push(doc.replicas[i]!.id);
        this.log.warn({ volume: doc.name, replica: doc.replicas[i]!.id, node: doc.replicas[i]!.nodeId, err: (res.reason as Error).message }, 'replica not deleted');
      }
    });
    return left;
  }

  async export(name: string, options: ExportOptions = {}): Promise<ExportInfo> {
    return this.locks.run(name, () => this.startExport(name, options));
  }

  private async startExport(name: string, options: ExportOptions): Promise<ExportInfo> {
    const current = this.opts.exports.get(name);
    if (current && this.engines.get(name)?.engine.fenced === false) return current;
    if (current || this.engines.has(name)) await this.stopEngine(name); // a fenced one, or a rebuild-only one
    const doc = this.requireReady(await getVolumeDoc(this.store, name), name);
    const holder = doc.engine?.exported ? doc.engine.nodeId : undefined;
    if (holder && holder !== this.opts.nodeId) {
      if (!options.takeover) {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `volume "${name}" is served by node ${holder} (epoch ${doc.epoch}): unexport it there, or fail over with --takeover once that node is down`,
          { details: { volume: name, node: holder } });
      }
      const nodes = await listNodes(this.store, this.log);
      if (nodes.find((n) => n.nodeId === holder)?.up && !options.force) {
        throw new StorageError(Code.FAILED_PRECONDITION,
          `node ${holder} still serves volume "${name}" and is up: unexport it there, or add --force to fence it (its clients get I/O errors)`,
          { details: { volume: name, node: holder } });
      }
      this.log.warn({ volume: name, from: holder, epoch: doc.epoch + 1, force: Boolean(options.force) }, 'taking the volume over from another node (failover)');
    }
    if (inSyncReplicas(doc).length === 0) {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" has no in-sync replica: its data cannot be served safely`, { details: { volume: name } });
    }
    const started = await updateVolumeDoc(this.store, name, (d) => {
      if (d.state !== 'ready') throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" is ${d.state}`);
      if (d.engine?.exported && d.engine.nodeId !== holder) {
        throw new StorageError(Code.ABORTED, `volume "${name}" was just started by node ${d.engine.nodeId}; check and try again`, { details: { volume: name } });
      }
      const epoch = d.epoch + 1;
      return { ...d, epoch, engine: { nodeId: this.opts.nodeId, epoch, exported: true, startedAt: new Date().toISOString() } };
    });
    const engine = await this.startEngine(started!.doc, doc.engine?.nodeId);
    if (doc.engine?.exported && !doc.engine.cleanStop) {
      // The previous engine stopped uncleanly: writes it had in flight may sit on some replicas only.
      void engine.reconcile();
    }
    try {
      return await this.opts.exports.start(name, engine);
    } catch (err) {
      this.engines.get(name)?.control.close();
      this.engines.delete(name);
      throw err;
    }
  }

  private async startEngine(doc: VolumeDoc, previousEngine: NodeId | undefined): Promise<VolumeEngine> {
    if (previousEngine !== this.opts.nodeId) {
      // Another node's engine ran since this node last did: the dirty-region maps kept here
      // do not know what it wrote, so replicas out of sync get a full rebuild instead.
      for (const r of doc.replicas) this.opts.dirtyMaps.delete(doc.id, r.id);
    }
    const control = new DocEngineControl(this.store, doc.name, doc.epoch, this.log);
    let engine: VolumeEngine;
    try {
      engine = await VolumeEngine.start({
        volumeId: doc.id, name: doc.name, sizeBytes: doc.sizeBytes, regionBytes: doc.regionBytes, epoch: doc.epoch, replicas: doc.replicas,
        localNodeId: this.opts.nodeId, connector: this.opts.connector, control, dirtyMaps: this.opts.dirtyMaps,
        replicaTimeoutMs: this.opts.replicaTimeoutMs, rebuildRateBytesPerSec: this.opts.rebuildRateBytesPerSec,
        log: this.log, // the engine binds volume, volumeId and epoch
        onFenced: (err) => void this.onFenced(doc.name, doc.epoch, err),
      });
    } catch (err) {
      control.close();
      await updateVolumeDoc(this.store, doc.name, (d) => (d.engine?.nodeId === this.opts.nodeId && d.epoch === doc.epoch ? { ...d, engine: { ...d.engine, exported: false } } : undefined))
        .catch(() => undefined);
      throw err;
    }
    this.engines.set(doc.name, { engine, control, epoch: doc.epoch });
    this.log.info({ volume: doc.name, epoch: doc.epoch, replicas: doc.replicas.length }, 'volume engine started');
    return engine;
  }

  /**
   * For the repair leader: runs a rebuild-only engine (no NBD) on this node for a volume
   * that no node exports but whose out-of-sync replicas could be rebuilt now. An export
   * anywhere later fences it (epoch + 1). Returns whether one runs here now.
   */
  async startRebuilder(name: string, nodes: readonly NodeStatus[]): Promise<boolean> {
    return this.locks.run(name, async () => {
      if (this.engines.has(name)) return true;
      const doc = (await getVolumeDoc(this.store, name))?.doc;
      if (!doc || doc.state !== 'ready' || doc.engine?.exported || inSyncReplicas(doc).length === 0) return false;
      const up = new Set(nodes.filter((n) => n.up).map((n) => n.nodeId));
      if (!doc.replicas.some((r) => r.state !== 'in-sync' && up.has(r.nodeId))) return false;
      const other = doc.engine?.headless && !doc.engine.cleanStop && doc.engine.nodeId !== this.opts.nodeId ? doc.engine.nodeId : undefined;
      if (other && up.has(other)) return false; // that node's rebuilder still runs
      const started = await updateVolumeDoc(this.store, name, (d) => {
        if (d.state !== 'ready' || d.engine?.exported) throw new StorageError(Code.ABORTED, `volume "${name}" was exported meanwhile`);
        const epoch = d.epoch + 1;
        return { ...d, epoch, engine: { nodeId: this.opts.nodeId, epoch, exported: false, headless: true, startedAt: new Date().toISOString() } };
      });
      await this.startEngine(started!.doc, doc.engine?.nodeId);
      this.engines.get(name)!.headless = true;
      this.log.info({ volume: name, epoch: started!.doc.epoch }, 'rebuild-only engine started for a volume nobody exports');
      return true;
    });
  }

  /** Stops the rebuild-only engines whose replicas are all in sync again (or that were fenced). */
  async reapRebuilders(): Promise<void> {
    for (const [name, running] of [...this.engines]) {
      if (!running.headless) continue;
      if (!running.engine.fenced && !running.engine.replicaViews().every((v) => v.state === 'in-sync')) continue;
      await this.locks.run(name, async () => {
        if (this.engines.get(name) !== running) return;
        await this.stopEngine(name);
        await updateVolumeDoc(this.store, name, (d) => (d.epoch === running.epoch && d.engine?.nodeId === this.opts.nodeId
          ? { ...d, engine: { ...d.engine, headless: false, cleanStop: true } } : undefined))
          .catch((err: unknown) => this.log.warn({ volume: name, err: (err as Error).message }, 'rebuild-only engine stop not recorded'));
        this.log.info({ volume: name, fenced: running.engine.fenced }, 'rebuild-only engine stopped');
      });
    }
  }

  /** Stops the fenced engine here. Called without awaiting (from the engine or the watch): it never rejects. */
  private async onFenced(name: string, epoch: number, err: StorageError): Promise<void> {
    this.log.error({ volume: name, epoch, err: err.message }, 'volume engine fenced by a newer epoch: this node stops serving the volume');
    try {
      await this.locks.run(name, async () => {
        const running = this.engines.get(name);
        if (running?.epoch === epoch) await this.stopEngine(name);
      });
    } catch (e) {
      this.log.warn({ volume: name, epoch, err: (e as Error).message }, 'fenced volume engine did not stop cleanly');
    }
  }

  /**
   * Stops serving and the engine (flush, close). The document is left to the caller. A
   * fenced engine cannot flush (it acknowledges nothing more): its stop succeeds without.
   */
  private async stopEngine(name: string): Promise<void> {
    const running = this.engines.get(name);
    this.engines.delete(name);
    running?.control.close();
    try {
      if (this.opts.exports.get(name)) await this.opts.exports.stop(name);
      else if (running) await running.engine.close();
    } catch (err) {
      if (!running?.engine.fenced) throw err;
      this.log.info({ volume: name, epoch: running.epoch, err: (err as Error).message }, 'fenced engine stopped without a final flush');
    }
  }

  async unexport(name: string): Promise<void> {
    await this.locks.run(name, async () => {
      const doc = this.requireReady(await getVolumeDoc(this.store, name), name);
      const running = this.engines.get(name);
      await this.stopEngine(name);
      if (doc.engine?.exported && doc.engine.nodeId === this.opts.nodeId && (!running || running.epoch === doc.epoch)) {
        await updateVolumeDoc(this.store, name, (d) => (d.engine?.nodeId === this.opts.nodeId && d.epoch === doc.epoch ? { ...d, engine: { ...d.engine, exported: false } } : undefined));
      }
    });
  }

  async get(name: string): Promise<VolumeView> {
    return this.view(this.requireReady(await getVolumeDoc(this.store, name), name, true));
  }

  async list(): Promise<VolumeView[]> {
    const { docs } = await listVolumeDocs(this.store, (err) => this.log.error({ err: err.message }, 'skipping a malformed volume document'));
    return Promise.all(docs.filter((d) => d.doc.state !== 'deleting').map((d) => this.view(d.doc)));
  }

  /**
   * Compares the in-sync replicas region by region (SHA-256 per region, at the volume's
   * epoch). A region that differs is checked once more after a moment, so that a write in
   * flight during the first pass is not reported.
   */
  async verify(name: string): Promise<VerifyResult> {
    const doc = this.requireReady(await getVolumeDoc(this.store, name), name);
    const replicas = inSyncReplicas(doc);
    const result: VerifyResult = { volume: name, replicas: replicas.map((r) => r.id), regionBytes: doc.regionBytes, regionsCompared: 0, mismatches: [] };
    if (replicas.length < 2) {
      result.regionsCompared = Math.ceil(doc.sizeBytes / doc.regionBytes);
      return result;
    }
    const compare = async (offset: number, lengthBytes: number): Promise<VerifyMismatch[]> => {
      const sums = await Promise.all(replicas.map(async (r) => {
        const control = await this.opts.connector.control(r.nodeId);
        return control.checksumRange({ replicaId: r.id, volumeId: doc.id }, doc.epoch, offset, lengthBytes, doc.regionBytes);
      }));
      const out: VerifyMismatch[] = [];
      sums[0]!.digests.forEach((digest, i) => {
        const differ = replicas.filter((_, k) => k > 0 && !sums[k]!.digests[i]!.equals(digest)).map((r) => r.id);
        if (differ.length > 0) {
          const at = offset + i * doc.regionBytes;
          out.push({ offset: at, lengthBytes: Math.min(doc.regionBytes, doc.sizeBytes - at), replicas: differ });
        }
      });
      return out;
    };
    const span = VERIFY_REGIONS_PER_CALL * doc.regionBytes;
    for (let offset = 0; offset < doc.sizeBytes; offset += span) {
      const length = Math.min(span, doc.sizeBytes - offset);
      result.regionsCompared += Math.ceil(length / doc.regionBytes);
      for (const m of await compare(offset, length)) {
        await new Promise((r) => setTimeout(r, 200));
        result.mismatches.push(...await compare(m.offset, m.lengthBytes));
      }
    }
    this.log.info({ volume: name, regionsCompared: result.regionsCompared, mismatches: result.mismatches.length }, 'volume verified');
    return result;
  }

  capacity(): Promise<PoolCapacity> {
    return this.opts.pool.capacity();
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

  /** Number of NBD connections over every export of this node. */
  connectionCount(): number {
    return this.opts.exports.connectionCount();
  }

  /**
   * At start: watch documents for the engines here, then restart the engines this node
   * ran (exported volumes) with a new epoch.
   */
  async recover(): Promise<void> {
    this.watch = await this.store.watch(VOLUMES_PREFIX, {
      onEvents: (events) => {
        for (const e of events) this.docChanged(e.key.slice(VOLUMES_PREFIX.length), e.type === 'delete');
      },
      // The history was compacted while the watch was away: every engine here looks at its document as it is now.
      onResync: (snapshot) => {
        const present = new Set(snapshot.items.map((kv) => kv.key.slice(VOLUMES_PREFIX.length)));
        for (const name of [...this.engines.keys()]) this.docChanged(name, !present.has(name));
      },
      onError: (err) => this.log.error({ err: err.message }, 'volume watch ended; engines no longer see document changes until restart'),
    });
    // A node that registers again is back: engines here try its replicas at once.
    this.nodeWatch = await this.store.watch(keys.nodesPrefix, {
      onEvents: (events) => {
        for (const e of events) {
          const m = /^nodes\/([^/]+)\/alive$/.exec(e.key);
          if (e.type !== 'put' || !m) continue;
          for (const running of this.engines.values()) running.engine.nodeReturned(m[1]!);
        }
      },
      onResync: (snapshot) => {
        for (const kv of snapshot.items) {
          const m = /^nodes\/([^/]+)\/alive$/.exec(kv.key);
          if (m) for (const running of this.engines.values()) running.engine.nodeReturned(m[1]!);
        }
      },
      onError: (err) => this.log.error({ err: err.message }, 'node watch ended; engines retry returning nodes on their own timer only'),
    });
    const { docs } = await listVolumeDocs(this.store, (err) => this.log.error({ err: err.message }, 'skipping a malformed volume document'));
    for (const { doc } of docs) {
      if (doc.state !== 'ready' || doc.engine?.nodeId !== this.opts.nodeId || !doc.engine.exported) continue;
      await this.locks.run(doc.name, () => this.startExport(doc.name, {}))
        .catch((err: unknown) => this.log.error({ volume: doc.name, err }, 'volume could not be exported again after restart'));
    }
  }

  /** A volume document changed (or was deleted): the engine here, if any, follows it. */
  private docChanged(name: string, deleted: boolean): void {
    const running = this.engines.get(name);
    if (!running) return;
    if (deleted) {
      void this.onFenced(name, running.epoch, new StorageError(Code.NOT_FOUND, `volume "${name}" was deleted`));
      return;
    }
    void getVolumeDoc(this.store, name).then((s) => s && this.engines.get(name)?.engine.applyDoc(s.doc))
      .catch((err: unknown) => this.log.warn({ volume: name, err }, 'cannot read a changed volume document'));
  }

  /** Stops every engine here: in-flight requests finish and every replica is flushed. The documents keep naming this node. */
  async shutdown(): Promise<void> {
    await this.watch?.close();
    await this.nodeWatch?.close();
    await Promise.allSettled([...this.engines.entries()].map(async ([name, running]) => {
      await this.stopEngine(name);
      await updateVolumeDoc(this.store, name, (d) => (d.epoch === running.epoch && d.engine?.nodeId === this.opts.nodeId
        ? { ...d, engine: { ...d.engine, cleanStop: true } } : undefined))
        .catch((err: unknown) => this.log.warn({ volume: name, err: (err as Error).message }, 'clean stop not recorded; the next engine reconciles the replicas'));
    }));
  }

  private requireReady(stored: { doc: VolumeDoc } | undefined, name: string, allowCreating = false): VolumeDoc {
    if (!stored || stored.doc.state === 'deleting') throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`, { details: { volume: name } });
    if (stored.doc.state === 'creating' && !allowCreating) {
      throw new StorageError(Code.UNAVAILABLE, `volume "${name}" is still being created; try again`, { details: { volume: name } });
    }
    return stored.doc;
  }

  private async view(doc: VolumeDoc): Promise<VolumeView> {
    const running = this.engines.get(doc.name);
    const engineViews = new Map<string, EngineReplicaView>((running?.engine.replicaViews() ?? []).map((v) => [v.replicaId, v]));
    const replicas = await Promise.all(doc.replicas.map((r) => this.replicaView(doc.id, r, engineViews.get(r.id))));
    return {
      id: doc.id, name: doc.name, sizeBytes: doc.sizeBytes, state: doc.state, health: volumeHealth(doc), epoch: doc.epoch,
      createdAt: doc.createdAt, replicasWanted: doc.replicasWanted, engineNode: doc.engine?.exported ? doc.engine.nodeId : undefined,
      allocatedBytes: replicas.reduce((sum, r) => sum + r.allocatedBytes, 0), replicas,
      export: this.opts.exports.get(doc.name),
    };
  }

  private async replicaView(volumeId: VolumeId, r: VolumeReplicaEntry, engine: EngineReplicaView | undefined): Promise<ReplicaView> {
    let status: ReplicaStatusView | undefined;
    try {
      const control = await this.opts.connector.control(r.nodeId);
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
