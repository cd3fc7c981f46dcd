/**
 * The readers a node serves: read-only engines (engine/reader-engine.ts) next to another
 * node's engine that holds the volume, while every publication is read-only
 * (reader-share.ts). A reader bumps no epoch and writes nothing in the document; it follows
 * a newer read-only holder and is fenced by a writer. The engine host (engine-host.ts)
 * starts one instead of an engine, and passes the document changes and stops on to it.
 */
import type { NodeId } from '../common/ids.js';
import type { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { ReplicaConnector } from '../engine/engine-types.js';
import type { ExportInfo, ExportManager } from '../engine/export-manager.js';
import { ReaderEngine } from '../engine/reader-engine.js';
import { readersMayShare } from './reader-share.js';
import type { ClusterStore } from './store/cluster-store.js';
import { getVolumeDoc, type VolumeDoc } from './volume-doc.js';

/** What the readers need of the engine host's options. */
export interface ReaderHostOptions {
  nodeId: NodeId;
  store: ClusterStore;
  connector: ReplicaConnector;
  exports: ExportManager;
  replicaTimeoutMs: number;
  log: Logger;
  /** The volume lifecycle's locks, shared with the engine host. */
  locks: KeyedLock;
}

export class ReaderHost {
  /** Reader engines here, by volume name; never among the engine host's engines. */
  private readonly readers = new Map<string, ReaderEngine>();
  private readonly log: Logger;

  constructor(private readonly opts: ReaderHostOptions) {
    this.log = opts.log;
  }

  private get store(): ClusterStore {
    return this.opts.store;
  }

  get(name: string): ReaderEngine | undefined {
    return this.readers.get(name);
  }

  has(name: string): boolean {
    return this.readers.has(name);
  }

  names(): IterableIterator<string> {
    return this.readers.keys();
  }

  /**
   * Serves the volume here as a reader at the document's epoch (its engine logs to `log`).
   * A newer epoch later is followed while readers may still share the volume, else the
   * reader is fenced; its export stays up so that clients get I/O errors at once (unstage
   * removes it).
   */
  async start(doc: VolumeDoc, log: Logger): Promise<ExportInfo> {
    const { name, id } = doc;
    const reader = await ReaderEngine.start({
      volumeId: id, name, sizeBytes: doc.sizeBytes, epoch: doc.epoch, replicas: doc.replicas, localNodeId: this.opts.nodeId,
      connector: this.opts.connector, replicaTimeoutMs: this.opts.replicaTimeoutMs, log,
      newerEpoch: async () => {
        const now = (await getVolumeDoc(this.store, name))?.doc;
        return now && now.id === id && readersMayShare(now, this.opts.nodeId) ? now : undefined;
      },
      onFenced: (err) => this.log.error({ volume: name, err: err.message }, 'reader fenced: a writer took the volume; reads here fail until it is unstaged'),
    });
    this.readers.set(name, reader);
    try {
      const info = await this.opts.exports.start(name, reader, { readOnly: true });
      this.log.info({ volume: name, epoch: doc.epoch, engineNode: doc.engine?.nodeId }, 'volume served read-only as a reader next to its holder');
      return info;
    } catch (err) {
      this.readers.delete(name); // the export manager closed the reader
      throw err;
    }
  }

  /** Stops serving the reader of `name` and closes it (nothing when no reader of it runs here). */
  async stop(name: string): Promise<void> {
    const reader = this.readers.get(name);
    if (reader) {
      this.readers.delete(name);
      if (this.opts.exports.get(name)) await this.opts.exports.stop(name);
      else await reader.close();
    }
  }

  /** A volume document changed (or was deleted): the reader here, if any, follows it (or stops); false when none runs here. */
  docChanged(name: string, deleted: boolean): boolean {
    const reader = this.readers.get(name);
    if (reader) {
      if (deleted) void this.opts.locks.run(name, () => (this.readers.get(name) === reader ? this.stop(name) : Promise.resolve())).catch(() => undefined);
      else void getVolumeDoc(this.store, name).then((s) => s && this.readers.get(name)?.applyDoc(s.doc))
        .catch((err: unknown) => this.log.warn({ volume: name, err }, 'cannot read a changed volume document'));
      return true;
    }
    return false;
  }
}
