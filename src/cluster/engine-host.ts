/**
 * The engine host: the data plane a node daemon runs for the cluster's volumes. It starts
 * a volume's engine here (epoch bump by compare-and-swap, then the engine fences every
 * older one at the replicas) and serves it over NBD, runs rebuild-only engines for the
 * repair leader, stops engines that were fenced, and follows the volume documents and
 * returning nodes through two store watches. A controller-role cairnd has none of this.
 *
 * - export: bump the epoch with this node as the engine, start the engine, serve it over
 *   NBD. `takeover` is failover: the same, while another node's engine holds the volume.
 *   A cancelled export (its AbortSignal fires) stops before the document changes, or
 *   stops the engine it started and clears `exported` again.
 * - readOnly export: the NBD export refuses writes and the document's engine entry says
 *   so. While another node's read-only engine holds the volume and every publication is
 *   read-only (reader-share.ts), this node starts a reader instead (reader-host.ts): no
 *   epoch bump, nothing written to the document; its unexport stops only the reader.
 */
import { throwIfCancelled } from '../common/abort.js';
import { Code, StorageError } from '../common/errors.js';
import type { NodeId, SnapshotId, VolumeId } from '../common/ids.js';
import type { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { DirtyMapStore, EngineReplicaView, ReplicaConnector, RunningEngineView, VolumeSnapshotResult } from '../engine/engine-types.js';
import type { ExportInfo, ExportManager } from '../engine/export-manager.js';
import { VolumeEngine } from '../engine/volume-engine.js';
import { DocEngineControl } from './engine-control.js';
import { listNodes, type NodeStatus } from './node-registry.js';
import { ReaderHost } from './reader-host.js';
import { shouldStartReader } from './reader-share.js';
import type { ClusterStore, Watch } from './store/cluster-store.js';
import { keys } from './store/keys.js';
import { claimLogFields, getVolumeDoc, inSyncReplicas, listVolumeDocs, updateVolumeDoc, VOLUMES_PREFIX, type VolumeDoc } from './volume-doc.js';
import { requireVolume, type LocalVolumeHost } from './volume-lifecycle.js';
import type { ExportOptions } from './volume-views.js';

export interface EngineHostOptions {
  nodeId: NodeId;
  store: ClusterStore;
  connector: ReplicaConnector;
  exports: ExportManager;
  dirtyMaps: DirtyMapStore;
  replicaTimeoutMs: number;
  rebuildRateBytesPerSec: number;
  log: Logger;
  /** The volume lifecycle's locks: export, delete and create of one volume run one at a time. */
  locks: KeyedLock;
}

interface RunningEngine {
  engine: VolumeEngine;
  control: DocEngineControl;
  epoch: number;
  /** A rebuild-only engine (no NBD) started for the repair loop. */
  headless?: boolean;
}

const NODE_ALIVE_RE = /^nodes\/([^/]+)\/alive$/;

export class EngineHost implements LocalVolumeHost {
  private readonly engines = new Map<string, RunningEngine>();
  /** Reader engines here (read-only, next to another node's engine); never in `engines`. */
  private readonly readers: ReaderHost;
  private watch: Watch | undefined;
  private nodeWatch: Watch | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: EngineHostOptions) {
    this.log = opts.log;
    this.readers = new ReaderHost(opts);
  }

  private get store(): ClusterStore {
    return this.opts.store;
  }

  async export(name: string, options: ExportOptions = {}, signal?: AbortSignal): Promise<ExportInfo> {
    return this.opts.locks.run(name, () => this.startExport(name, options, signal));
  }

  private async startExport(name: string, options: ExportOptions, signal?: AbortSignal): Promise<ExportInfo> {
    throwIfCancelled(signal, `export volume "${name}"`);
    const current = this.opts.exports.get(name);
    if (current && (this.engines.get(name)?.engine.fenced === false || this.readers.get(name)?.fenced === false)) return current;
    if (current || this.engines.has(name) || this.readers.has(name)) await this.stopEngine(name); // a fenced one, or a rebuild-only one
    const doc = requireVolume(await getVolumeDoc(this.store, name, { signal }), name);
    if (options.readOnly && shouldStartReader(doc, this.opts.nodeId)) return this.readers.start(doc, this.volumeLog(doc));
    const holder = await this.checkHolder(doc, options);
    if (inSyncReplicas(doc).length === 0) {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" has no in-sync replica: its data cannot be served safely`, { details: { volume: name } });
    }
    throwIfCancelled(signal, `export volume "${name}"`);
    const started = await updateVolumeDoc(this.store, name, (d) => {
      if (d.state !== 'ready') throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" is ${d.state}`);
      if (d.engine?.exported && d.engine.nodeId !== holder) {
        throw new StorageError(Code.ABORTED, `volume "${name}" was just started by node ${d.engine.nodeId}; check and try again`, { details: { volume: name } });
      }
      const epoch = d.epoch + 1;
      return { ...d, epoch, engine: { nodeId: this.opts.nodeId, epoch, exported: true, startedAt: new Date().toISOString(), ...(options.readOnly ? { readOnly: true } : {}) } };
    });
    const engine = await this.startEngine(started!.doc, doc.engine?.nodeId);
    if (doc.engine?.exported && !doc.engine.cleanStop) {
      // The previous engine stopped uncleanly: writes it had in flight may sit on some replicas only.
      void engine.reconcile();
    }
    try {
      throwIfCancelled(signal, `export volume "${name}"`);
      return await this.opts.exports.start(name, engine, { readOnly: options.readOnly === true });
    } catch (err) {
      const running = this.engines.get(name);
      this.engines.delete(name);
      running?.control.close();
      if (signal?.aborted) {
        await engine.close().catch(() => undefined);
        await this.markStopped(name, started!.doc.epoch);
      }
      throw err;
    }
  }

  /** The node whose engine holds the volume now, after checking that this node may take it over. */
  private async checkHolder(doc: VolumeDoc, options: ExportOptions): Promise<NodeId | undefined> {
    const name = doc.name;
    const holder = doc.engine?.exported ? doc.engine.nodeId : undefined;
    if (!holder || holder === this.opts.nodeId) return holder;
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
    this.log.warn({ volume: name, engineNode: holder, epoch: doc.epoch + 1, force: Boolean(options.force) }, 'taking the volume over from another node (failover)');
    return holder;
  }

  /** Clears `exported` on the document while it still names this node at `epoch`. */
  private async markStopped(name: string, epoch: number): Promise<void> {
    await updateVolumeDoc(this.store, name, (d) => (d.engine?.nodeId === this.opts.nodeId && d.epoch === epoch ? { ...d, engine: { ...d.engine, exported: false } } : undefined))
      .catch(() => undefined);
  }

  /** The writing engines here, by volume name (the preStop drain flushes them); a fenced one acknowledges nothing more and is left out. */
  writingEngines(): [string, Pick<VolumeEngine, 'flush'>][] {
    return [...this.engines].filter(([, r]) => !r.engine.fenced).map(([name, r]) => [name, r.engine]);
  }

  /** The logger an engine of `doc` is given: the host's, with the volume's claim (pvc, namespace) bound when it has one. */
  private volumeLog(doc: VolumeDoc): Logger {
    return doc.claim ? this.log.child(claimLogFields(doc.claim)) : this.log;
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
        log: this.volumeLog(doc), // the engine binds volume, volumeId and epoch
        onFenced: (err) => void this.onFenced(doc.name, doc.epoch, err),
      });
    } catch (err) {
      control.close();
      await this.markStopped(doc.name, doc.epoch);
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
    return this.opts.locks.run(name, async () => {
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
      await this.opts.locks.run(name, async () => {
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
      await this.opts.locks.run(name, async () => {
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
    if (this.readers.has(name)) return this.readers.stop(name);
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
    await this.opts.locks.run(name, async () => {
      if (this.readers.has(name)) {
        await this.stopEngine(name); // a reader: the holder and the document are not touched
        return;
      }
      const doc = requireVolume(await getVolumeDoc(this.store, name), name);
      const running = this.engines.get(name);
      await this.stopEngine(name);
      if (doc.engine?.exported && doc.engine.nodeId === this.opts.nodeId && (!running || running.epoch === doc.epoch)) {
        await updateVolumeDoc(this.store, name, (d) => (d.engine?.nodeId === this.opts.nodeId && d.epoch === doc.epoch ? { ...d, engine: { ...d.engine, exported: false } } : undefined));
      }
    });
  }

  async beforeDelete(name: string, force: boolean): Promise<void> {
    const served = this.opts.exports.get(name);
    if (served && served.connectionCount > 0 && !force) {
      throw new StorageError(Code.FAILED_PRECONDITION,
        `volume "${name}" has ${served.connectionCount} NBD client(s) connected: disconnect them first, or delete with --force`, { details: { volume: name } });
    }
    if (this.engines.has(name) || this.readers.has(name)) await this.stopEngine(name);
  }

  forget(doc: VolumeDoc): void {
    for (const r of doc.replicas) this.opts.dirtyMaps.delete(doc.id, r.id);
  }

  exportOf(name: string): ExportInfo | undefined {
    return this.opts.exports.get(name);
  }

  volumeChanged(doc: VolumeDoc): void {
    this.engines.get(doc.name)?.engine.applyDoc(doc);
    this.readers.get(doc.name)?.applyDoc(doc);
  }

  /** The engines running here, rebuild-only ones included (fenced ones left out), for /metrics. */
  runningEngines(): RunningEngineView[] {
    return [...this.engines].filter(([, r]) => !r.engine.fenced).map(([name, { engine, headless }]) => ({
      name, volumeId: engine.volumeId, sizeBytes: engine.sizeBytes, headless: headless === true, replicas: engine.replicaViews(),
    }));
  }

  engineReplicaViews(name: string): EngineReplicaView[] {
    return this.engines.get(name)?.engine.replicaViews() ?? [];
  }

  /** Number of NBD connections over every export of this node. */
  connectionCount(): number {
    return this.opts.exports.connectionCount();
  }

  /**
   * Runs the write barrier of the engine serving volume `volumeId` here (SnapshotVolume, and
   * the snapshot service on this node): every in-sync replica copied under `snapshotId`.
   * FAILED_PRECONDITION when no engine of the volume runs here (or it was fenced).
   */
  async snapshotVolume(volumeId: VolumeId, snapshotId: SnapshotId, deadlineMs: number): Promise<VolumeSnapshotResult> {
    return this.engineOf(volumeId).snapshot(snapshotId, { deadlineMs });
  }

  /** The engine of the volume here (for the engine service); FAILED_PRECONDITION when none runs here (or it was fenced). */
  engineOf(volumeId: VolumeId): VolumeEngine {
    const running = [...this.engines.values()].find((r) => r.engine.volumeId === volumeId);
    if (!running || running.engine.fenced) {
      throw new StorageError(Code.FAILED_PRECONDITION, `no engine of volume ${volumeId} runs on node ${this.opts.nodeId}: snapshot it where it is served`,
        { details: { volumeId, node: this.opts.nodeId } });
    }
    return running.engine;
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
        for (const name of [...this.engines.keys(), ...this.readers.names()]) this.docChanged(name, !present.has(name));
      },
      onError: (err) => this.log.error({ err: err.message }, 'volume watch ended; engines no longer see document changes until restart'),
    });
    // A node that registers again is back: engines here try its replicas at once.
    this.nodeWatch = await this.store.watch(keys.nodesPrefix, {
      onEvents: (events) => {
        for (const e of events) if (e.type === 'put') this.nodeAlive(e.key);
      },
      onResync: (snapshot) => {
        for (const kv of snapshot.items) this.nodeAlive(kv.key);
      },
      onError: (err) => this.log.error({ err: err.message }, 'node watch ended; engines retry returning nodes on their own timer only'),
    });
    const { docs } = await listVolumeDocs(this.store, (err) => this.log.error({ err: err.message }, 'skipping a malformed volume document'));
    for (const { doc } of docs) {
      if (doc.state !== 'ready' || doc.engine?.nodeId !== this.opts.nodeId || !doc.engine.exported) continue;
      await this.opts.locks.run(doc.name, () => this.startExport(doc.name, { readOnly: doc.engine?.readOnly === true }))
        .catch((err: unknown) => this.log.error({ volume: doc.name, err }, 'volume could not be exported again after restart'));
    }
  }

  /** A node's `alive` key was written: the engines here try that node's replicas again. */
  private nodeAlive(key: string): void {
    const m = NODE_ALIVE_RE.exec(key);
    if (!m) return;
    for (const running of this.engines.values()) running.engine.nodeReturned(m[1]!);
  }

  /** A volume document changed (or was deleted): the engine here, if any, follows it. */
  private docChanged(name: string, deleted: boolean): void {
    if (this.readers.docChanged(name, deleted)) return;
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
    await Promise.allSettled([...this.readers.names()].map((name) => this.stopEngine(name)));
    await Promise.allSettled([...this.engines.entries()].map(async ([name, running]) => {
      await this.stopEngine(name);
      await updateVolumeDoc(this.store, name, (d) => (d.epoch === running.epoch && d.engine?.nodeId === this.opts.nodeId
        ? { ...d, engine: { ...d.engine, cleanStop: true } } : undefined))
        .catch((err: unknown) => this.log.warn({ volume: name, err: (err as Error).message }, 'clean stop not recorded; the next engine reconciles the replicas'));
    }));
  }
}
