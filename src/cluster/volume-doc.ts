/**
 * The volume document: one JSON value per volume in the cluster store, at
 * `volumes/<name>`. It is the single source of truth for a volume's size, its replicas and
 * where they live, which of them are in sync, its epoch and which node runs its engine.
 *
 * The in-sync set is the replicas whose state is `in-sync`. It changes only by
 * compare-and-swap on the document's mod revision (`updateVolumeDoc`), so two writers can
 * never both believe their change won.
 */
import { Code, StorageError } from '../common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../common/ids.js';
import type { EngineVolumeDoc, VolumeReplicaEntry } from '../engine/engine-types.js';
import type { CallOptions, ClusterStore, Guard, JsonValue, KeyValue } from './store/cluster-store.js';
import { guardFor } from './store/cluster-store.js';
import { keys } from './store/keys.js';
import type { ReplicaState, VolumeState } from '../store/node-store.js';
import { listParsed } from './store/parsed-list.js';

/** in-sync: serves reads, takes writes. rebuilding: takes writes, is being copied to. faulted: neither. */
export type ReplicaHealth = ReplicaState;
export type VolumeDocState = VolumeState;

/** A replica's entry in the document: the engine's shape (engine-types.ts), which the engine follows. */
export type { VolumeReplicaEntry };

export interface VolumeEngineEntry {
  nodeId: NodeId;
  /** The epoch this engine was started with. An engine whose epoch is not the document's is fenced. */
  epoch: number;
  /** Whether the engine runs and serves NBD; restarted after a daemon restart when true. */
  exported: boolean;
  startedAt: string;
  /**
   * Set when the engine stopped cleanly (cairnd shut down gracefully after flushing every
   * replica). An engine that stopped any other way while exported may have left writes in
   * flight on some replicas only, so the next engine reconciles the in-sync replicas.
   */
  cleanStop?: boolean;
  /**
   * A rebuild-only engine (no NBD) that the repair leader runs for a volume nobody
   * exports, so that its out-of-sync replicas are rebuilt. An export anywhere fences it.
   */
  headless?: boolean;
  /**
   * The engine serves a read-only export (a read-only staging). With every publication
   * read-only, other nodes may then serve the volume as readers (cluster/reader-share.ts).
   */
  readOnly?: boolean;
}

/** A node the volume is published to (CSI ControllerPublishVolume): that node may stage it and run its engine. */
export interface VolumePublication {
  nodeId: NodeId;
  readonly: boolean;
}

/** A PersistentVolumeClaim by name and namespace. */
export interface VolumeClaimRef {
  name: string;
  namespace: string;
}

/** The log fields of a volume's claim (`pvc`, `namespace`), to bind on a logger once; empty when it has none. */
export function claimLogFields(claim: VolumeClaimRef | undefined): { pvc?: string; namespace?: string } {
  return claim ? { pvc: claim.name, namespace: claim.namespace } : {};
}

export interface VolumeDoc extends EngineVolumeDoc {
  id: VolumeId;
  name: string;
  sizeBytes: number;
  createdAt: string;
  state: VolumeDocState;
  /** The replication factor asked for; the repair loop keeps `replicas.length` at it. */
  replicasWanted: number;
  /** Granularity of dirty-region maps, rebuild copies and checksums: a power of two ≥ 1 MiB. */
  regionBytes: number;
  /** Bumped by every engine start (rule 3); replicas refuse anything older. */
  epoch: number;
  /**
   * The engine that owns the volume's I/O while `exported`; after an unexport it stays,
   * with `exported: false`, as the record of which node ran the last engine (its
   * dirty-region maps are valid only if no other node's engine ran since).
   */
  engine: VolumeEngineEntry | null;
  replicas: VolumeReplicaEntry[];
  /**
   * The nodes the volume is published to (CSI attach), at most one unless every entry is
   * read-only. Absent or empty: published nowhere (cairnctl export does not publish).
   */
  published?: VolumePublication[];
  /** The filesystem the volume was created for (CSI StorageClass `fsType`); absent for a raw or cairnctl volume. */
  fsType?: string;
  /**
   * The zones its replicas must stay in (CSI StorageClass `zones`): creation, repair and a
   * raised replica count all place inside them. Absent: any zone.
   */
  zones?: string[];
  /**
   * Where the volume's data came from at creation: a snapshot (restore) or a volume
   * (clone), by id and by name as they were then. Absent: created empty.
   */
  contentSource?: VolumeContentSourceEntry;
  /**
   * The Kubernetes PersistentVolumeClaim the volume was provisioned for (CreateVolume's
   * `csi.storage.k8s.io/pvc/*` parameters), kept so that every log line about the volume
   * can name it. Absent for a cairnctl volume or a provisioner without --extra-create-metadata.
   */
  claim?: VolumeClaimRef;
  /**
   * Replicas placed only to seed a restore (on a node holding a copy of the snapshot when
   * the wanted placement allowed none): not counted in `replicasWanted`; the repair loop
   * removes them once every other replica is in sync (volume-restore.ts).
   */
  seedReplicas?: ReplicaId[];
}

export interface VolumeContentSourceEntry {
  kind: 'snapshot' | 'volume';
  /** The source snapshot's or volume's id and name. */
  id: string;
  name: string;
  /** The snapshot the replicas are made from: the source itself, or the clone's internal one. */
  snapshotId: string;
}

export interface StoredVolumeDoc {
  doc: VolumeDoc;
  modRevision: number;
}

export const VOLUMES_PREFIX = keys.volumesPrefix;
export const volumeKey = (name: string): string => `${VOLUMES_PREFIX}${name}`;

/** A volume has 1 to this many replicas, each on its own node. */
export const MAX_REPLICAS = 3;
/** Volume sizes are rounded up to this, the preferred block size we advertise. */
export const VOLUME_ALIGNMENT_BYTES = 4096;
/** NBD carries 64-bit sizes, but JavaScript numbers are exact only below 2^53. */
export const MAX_VOLUME_BYTES = 2 ** 50; // 1 PiB

/** Regions are at least 1 MiB, and a volume has at most 256 Ki of them (a 32 KiB bitmap). */
export const MIN_REGION_BYTES = 1 << 20;
export const MAX_REGIONS = 256 * 1024;

export function regionBytesFor(sizeBytes: number): number {
  let region = MIN_REGION_BYTES;
  while (Math.ceil(sizeBytes / region) > MAX_REGIONS) region *= 2;
  return region;
}

export function inSyncReplicas(doc: VolumeDoc): VolumeReplicaEntry[] {
  return doc.replicas.filter((r) => r.state === 'in-sync');
}

export function volumeHealth(doc: VolumeDoc): 'healthy' | 'degraded' | 'faulted' {
  const inSync = inSyncReplicas(doc).length;
  if (inSync === 0) return 'faulted';
  return inSync < Math.max(doc.replicasWanted, doc.replicas.length) ? 'degraded' : 'healthy';
}

const isObject = (v: JsonValue | undefined): v is { [key: string]: JsonValue } => typeof v === 'object' && v !== null && !Array.isArray(v);
const STATES: readonly string[] = ['in-sync', 'rebuilding', 'faulted'];
const DOC_STATES: readonly string[] = ['creating', 'ready', 'deleting'];

function malformed(key: string, why: string): StorageError {
  return new StorageError(Code.DATA_LOSS, `volume document at "${key}" is malformed (${why}); fix or delete the key in the cluster store`, { details: { key } });
}

/** Reads a stored document; DATA_LOSS (naming the key) when it does not have the expected shape. */
export function parseVolumeDoc(key: string, value: JsonValue): VolumeDoc {
  if (!isObject(value)) throw malformed(key, 'not an object');
  const v = value;
  const str = (name: string): string => {
    if (typeof v[name] !== 'string') throw malformed(key, `${name} is not a string`);
    return v[name];
  };
  const num = (name: string, o: { [key: string]: JsonValue } = v): number => {
    const n = o[name];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw malformed(key, `${name} is not a whole number`);
    return n;
  };
  const state = str('state');
  if (!DOC_STATES.includes(state)) throw malformed(key, `unknown state ${state}`);
  if (!Array.isArray(v.replicas)) throw malformed(key, 'replicas is not a list');
  const replicas = v.replicas.map((r): VolumeReplicaEntry => {
    if (!isObject(r) || typeof r.id !== 'string' || typeof r.nodeId !== 'string' || typeof r.state !== 'string' || !STATES.includes(r.state)
      || typeof r.since !== 'string' || (r.reason !== undefined && typeof r.reason !== 'string')) {
      throw malformed(key, 'a replica entry lacks id, nodeId, state or since');
    }
    // A flag that protects acknowledged writes: a value that is not a boolean is not read as "false".
    if (r.fullRebuild !== undefined && typeof r.fullRebuild !== 'boolean') throw malformed(key, 'a replica entry\'s fullRebuild is not a boolean');
    const entry: VolumeReplicaEntry = { id: r.id as ReplicaId, nodeId: r.nodeId as NodeId, state: r.state as ReplicaHealth, since: r.since };
    if (typeof r.reason === 'string') entry.reason = r.reason;
    if (r.fullRebuild === true) entry.fullRebuild = true;
    return entry;
  });
  let engine: VolumeEngineEntry | null = null;
  if (v.engine !== null && v.engine !== undefined) {
    const e = v.engine;
    if (!isObject(e) || typeof e.nodeId !== 'string' || typeof e.exported !== 'boolean' || typeof e.startedAt !== 'string') throw malformed(key, 'engine entry');
    engine = { nodeId: e.nodeId as NodeId, epoch: num('epoch', e), exported: e.exported, startedAt: e.startedAt };
    if (e.cleanStop === true) engine.cleanStop = true;
    if (e.headless === true) engine.headless = true;
    if (e.readOnly === true) engine.readOnly = true;
  }
  let published: VolumePublication[] | undefined;
  if (v.published !== undefined) {
    if (!Array.isArray(v.published)) throw malformed(key, 'published is not a list');
    published = v.published.map((p) => {
      if (!isObject(p) || typeof p.nodeId !== 'string' || typeof p.readonly !== 'boolean') throw malformed(key, 'a published entry lacks nodeId or readonly');
      return { nodeId: p.nodeId as NodeId, readonly: p.readonly };
    });
  }
  if (v.fsType !== undefined && typeof v.fsType !== 'string') throw malformed(key, 'fsType is not a string');
  if (v.zones !== undefined && !(Array.isArray(v.zones) && v.zones.every((z) => typeof z === 'string'))) throw malformed(key, 'zones is not a list of strings');
  let contentSource: VolumeContentSourceEntry | undefined;
  if (v.contentSource !== undefined) {
    const c = v.contentSource;
    if (!isObject(c) || (c.kind !== 'snapshot' && c.kind !== 'volume') || typeof c.id !== 'string' || typeof c.name !== 'string' || typeof c.snapshotId !== 'string') {
      throw malformed(key, 'contentSource lacks kind (snapshot or volume), id, name or snapshotId');
    }
    contentSource = { kind: c.kind, id: c.id, name: c.name, snapshotId: c.snapshotId };
  }
  const c = v.claim;
  if (c !== undefined && !(isObject(c) && typeof c.name === 'string' && typeof c.namespace === 'string')) throw malformed(key, 'claim lacks name or namespace');
  if (v.seedReplicas !== undefined && !(Array.isArray(v.seedReplicas) && v.seedReplicas.every((id) => typeof id === 'string'))) throw malformed(key, 'seedReplicas is not a list of replica ids');
  // A seed replica another change took out of the document (a replacement) is no longer one.
  const seedReplicas = ((v.seedReplicas ?? []) as ReplicaId[]).filter((id) => replicas.some((r) => r.id === id));
  return {
    id: str('id') as VolumeId, name: str('name'), sizeBytes: num('sizeBytes'), createdAt: str('createdAt'), state: state as VolumeDocState,
    replicasWanted: num('replicasWanted'), regionBytes: num('regionBytes'), epoch: num('epoch'), engine, replicas,
    ...(published && published.length > 0 ? { published } : {}),
    ...(typeof v.fsType === 'string' ? { fsType: v.fsType } : {}),
    ...(Array.isArray(v.zones) && v.zones.length > 0 ? { zones: v.zones as string[] } : {}),
    ...(contentSource ? { contentSource } : {}),
    ...(c ? { claim: { name: c.name as string, namespace: c.namespace as string } } : {}),
    ...(seedReplicas.length > 0 ? { seedReplicas } : {}),
  };
}

export function volumeDocToJson(doc: VolumeDoc): JsonValue {
  return {
    id: doc.id, name: doc.name, sizeBytes: doc.sizeBytes, createdAt: doc.createdAt, state: doc.state,
    replicasWanted: doc.replicasWanted, regionBytes: doc.regionBytes, epoch: doc.epoch,
    engine: doc.engine && {
      nodeId: doc.engine.nodeId, epoch: doc.engine.epoch, exported: doc.engine.exported, startedAt: doc.engine.startedAt,
      ...(doc.engine.cleanStop ? { cleanStop: true } : {}),
      ...(doc.engine.headless ? { headless: true } : {}),
      ...(doc.engine.readOnly ? { readOnly: true } : {}),
    },
    replicas: doc.replicas.map((r) => ({
      id: r.id, nodeId: r.nodeId, state: r.state, since: r.since,
      ...(r.reason === undefined ? {} : { reason: r.reason }),
      ...(r.fullRebuild ? { fullRebuild: true } : {}),
    })),
    ...(doc.published && doc.published.length > 0 ? { published: doc.published.map((p) => ({ nodeId: p.nodeId, readonly: p.readonly })) } : {}),
    ...(doc.fsType === undefined ? {} : { fsType: doc.fsType }),
    ...(doc.zones && doc.zones.length > 0 ? { zones: [...doc.zones] } : {}),
    ...(doc.contentSource ? { contentSource: { ...doc.contentSource } } : {}),
    ...(doc.claim ? { claim: { ...doc.claim } } : {}),
    ...(doc.seedReplicas && doc.seedReplicas.length > 0 ? { seedReplicas: [...doc.seedReplicas] } : {}),
  };
}

function stored(kv: KeyValue): StoredVolumeDoc {
  return { doc: parseVolumeDoc(kv.key, kv.value), modRevision: kv.modRevision };
}

/** The volume's document, if any; `options.signal` cancels the read (CANCELLED). */
export async function getVolumeDoc(store: ClusterStore, name: string, options?: CallOptions): Promise<StoredVolumeDoc | undefined> {
  const kv = await store.get(volumeKey(name), options);
  return kv && stored(kv);
}

export interface VolumeDocList {
  docs: StoredVolumeDoc[];
  /**
   * Documents this node cannot parse (DATA_LOSS, `details.key` names each): malformed, or
   * written by a newer release (an unknown state). Not in `docs`, yet their volumes exist:
   * a caller that acts on what is absent from `docs` (deletes) must act on nothing then.
   */
  unreadable: StorageError[];
  revision: number;
}

/** Every volume document: the ones it can parse in `docs`, the others in `unreadable` (and `onMalformed`). */
export async function listVolumeDocs(store: ClusterStore, onMalformed?: (err: StorageError) => void, options?: CallOptions): Promise<VolumeDocList> {
  const list = await listParsed(store, VOLUMES_PREFIX, stored, options);
  if (onMalformed) list.unreadable.forEach(onMalformed);
  return list;
}

/** The volume named `nameOrId`, or whose id it is (volumes are keyed by name: an id lists them). */
export async function findVolumeDoc(store: ClusterStore, nameOrId: string, options?: CallOptions): Promise<StoredVolumeDoc | undefined> {
  if (nameOrId === '') return undefined;
  const byName = await getVolumeDoc(store, nameOrId, options);
  if (byName) return byName;
  const { docs } = await listVolumeDocs(store, undefined, options);
  return docs.find((d) => d.doc.id === nameOrId);
}

/** The document of a volume that exists (NOT_FOUND otherwise); UNAVAILABLE while it is being created, unless allowed. */
export function requireVolume(stored: { doc: VolumeDoc } | undefined, name: string, allowCreating = false): VolumeDoc {
  if (!stored || stored.doc.state === 'deleting') throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`, { details: { volume: name } });
  if (stored.doc.state === 'creating' && !allowCreating) {
    throw new StorageError(Code.UNAVAILABLE, `volume "${name}" is still being created; try again`, { details: { volume: name } });
  }
  return stored.doc;
}

/** Writes a new document; false when one of that name exists already. */
export async function createVolumeDoc(store: ClusterStore, doc: VolumeDoc): Promise<boolean> {
  const key = volumeKey(doc.name);
  const r = await store.txn({ guards: [{ key, modRevision: 0 }], ops: [{ type: 'put', key, value: volumeDocToJson(doc) }] });
  return r.succeeded;
}

/** What a mutation returns: the next document, `undefined` for "nothing to change", or `'delete'`. */
export type VolumeDocMutation = VolumeDoc | undefined | 'delete';

const MAX_CAS_ATTEMPTS = 20;

/**
 * Read, mutate, compare-and-swap, and on a lost race read again and re-decide. `mutate`
 * gets a fresh copy each time and may throw to give up (its error propagates). NOT_FOUND
 * when the volume does not exist. Returns the document as stored afterwards (undefined
 * after a delete). UNAVAILABLE from the store propagates: the caller decides whether to retry.
 * `extraGuards` must hold too (e.g. the repair leader's key); when one of them fails the
 * update gives up with ABORTED.
 */
export async function updateVolumeDoc(store: ClusterStore, name: string, mutate: (doc: VolumeDoc) => VolumeDocMutation,
  extraGuards: () => readonly Guard[] = () => []): Promise<StoredVolumeDoc | undefined> {
  const key = volumeKey(name);
  for (let attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++) {
    const current = await store.get(key);
    if (!current) throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`, { details: { volume: name } });
    const before = stored(current);
    const next = mutate(structuredClone(before.doc));
    if (next === undefined) return before;
    const ops = next === 'delete'
      ? [{ type: 'delete' as const, key }]
      : [{ type: 'put' as const, key, value: volumeDocToJson(next) }];
    const r = await store.txn({ guards: [guardFor(key, current), ...extraGuards()], ops });
    if (r.succeeded) return next === 'delete' ? undefined : { doc: next, modRevision: r.revision };
    const now = r.current.get(key);
    if (now?.modRevision === current.modRevision) {
      throw new StorageError(Code.ABORTED, `volume "${name}" was not changed: another guard of the change failed (leadership moved?)`, { details: { volume: name } });
    }
  }
  throw new StorageError(Code.ABORTED, `volume "${name}" kept changing while being updated (${MAX_CAS_ATTEMPTS} attempts); try again`, { details: { volume: name } });
}
