/**
 * The snapshot document: one JSON value per snapshot in the cluster store, at
 * `snapshots/<name>`. It is the record of a snapshot's source, size, state and copies (one
 * pool device named by the snapshot id on each node listed). Changes are compare-and-swap
 * on the document's mod revision (`updateSnapshotDoc`), as for volume documents. Lookups by
 * id list the prefix: snapshots number in the thousands at most, and a second key per
 * snapshot would be one more thing to keep in step.
 */
import { Code, StorageError } from '../common/errors.js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';
import { parseSnapshotRuleRecord, snapshotRuleRecordToJson } from './snapshot-rule-record.js';
import type { SnapshotCopyEntry, SnapshotDoc, SnapshotRuleRecord, SnapshotState } from './snapshot-types.js';
import type { CallOptions, ClusterStore, Guard, JsonValue, KeyValue } from './store/cluster-store.js';
import { guardFor } from './store/cluster-store.js';
import { keys } from './store/keys.js';
import { listParsed } from './store/parsed-list.js';

export const SNAPSHOTS_PREFIX = keys.snapshotsPrefix;
export const snapshotKey = (name: string): string => `${SNAPSHOTS_PREFIX}${name}`;

export interface StoredSnapshotDoc {
  doc: SnapshotDoc;
  modRevision: number;
}

const isObject = (v: JsonValue | undefined): v is { [key: string]: JsonValue } => typeof v === 'object' && v !== null && !Array.isArray(v);
const STATES: readonly string[] = ['creating', 'ready', 'deleting'];

function malformed(key: string, why: string): StorageError {
  return new StorageError(Code.DATA_LOSS, `snapshot document at "${key}" is malformed (${why}); fix or delete the key in the cluster store`, { details: { key } });
}

/** Reads a stored document field by field; DATA_LOSS (naming the key) when it does not have the expected shape. */
export function parseSnapshotDoc(key: string, value: JsonValue): SnapshotDoc {
  if (!isObject(value)) throw malformed(key, 'not an object');
  const v = value;
  const str = (name: string): string => {
    const s = v[name];
    if (typeof s !== 'string' || s === '') throw malformed(key, `${name} is not a non-empty string`);
    return s;
  };
  const num = (name: string): number => {
    const n = v[name];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw malformed(key, `${name} is not a whole number`);
    return n;
  };
  const bool = (name: string): boolean => {
    if (typeof v[name] !== 'boolean') throw malformed(key, `${name} is not a boolean`);
    return v[name];
  };
  const state = str('state');
  if (!STATES.includes(state)) throw malformed(key, `unknown state ${state}`);
  if (!Array.isArray(v.copies)) throw malformed(key, 'copies is not a list');
  const copies = v.copies.map((c): SnapshotCopyEntry => {
    if (!isObject(c) || typeof c.nodeId !== 'string' || c.nodeId === '' || typeof c.replicaId !== 'string' || c.replicaId === '') {
      throw malformed(key, 'a copy entry lacks nodeId or replicaId');
    }
    return { nodeId: c.nodeId as NodeId, replicaId: c.replicaId as ReplicaId };
  });
  if (new Set(copies.map((c) => c.nodeId)).size !== copies.length) throw malformed(key, 'two copies on one node');
  if (v.internal !== undefined && typeof v.internal !== 'boolean') throw malformed(key, 'internal is not a boolean');
  if (v.groupSnapshotId !== undefined && (typeof v.groupSnapshotId !== 'string' || v.groupSnapshotId === '')) throw malformed(key, 'groupSnapshotId is not a non-empty string');
  const createdAt = str('createdAt');
  if (Number.isNaN(Date.parse(createdAt))) throw malformed(key, 'createdAt is not a time');
  const doc: SnapshotDoc = {
    id: str('id') as SnapshotId, name: str('name'), sourceVolumeId: str('sourceVolumeId') as VolumeId, sourceVolumeName: str('sourceVolumeName'),
    sizeBytes: num('sizeBytes'), createdAt, state: state as SnapshotState, readyToUse: bool('readyToUse'),
    copiesWanted: num('copiesWanted'), copies, pauseUs: num('pauseUs'),
  };
  if (doc.readyToUse && doc.state !== 'ready') throw malformed(key, `readyToUse while ${doc.state}`);
  if (v.internal === true) doc.internal = true;
  const rule = parseSnapshotRuleRecord(v.rule, (why) => malformed(key, why));
  if (rule) doc.rule = rule;
  if (typeof v.groupSnapshotId === 'string') doc.groupSnapshotId = v.groupSnapshotId;
  return doc;
}

export function snapshotDocToJson(doc: SnapshotDoc): JsonValue {
  return {
    id: doc.id, name: doc.name, sourceVolumeId: doc.sourceVolumeId, sourceVolumeName: doc.sourceVolumeName, sizeBytes: doc.sizeBytes,
    createdAt: doc.createdAt, state: doc.state, readyToUse: doc.readyToUse, copiesWanted: doc.copiesWanted,
    copies: doc.copies.map((c) => ({ nodeId: c.nodeId, replicaId: c.replicaId })), pauseUs: doc.pauseUs,
    ...(doc.internal ? { internal: true } : {}),
    ...(doc.rule ? { rule: snapshotRuleRecordToJson(doc.rule) } : {}),
    ...(doc.groupSnapshotId ? { groupSnapshotId: doc.groupSnapshotId } : {}),
  };
}

function stored(kv: KeyValue): StoredSnapshotDoc {
  return { doc: parseSnapshotDoc(kv.key, kv.value), modRevision: kv.modRevision };
}

export async function getSnapshotDoc(store: ClusterStore, name: string, options?: CallOptions): Promise<StoredSnapshotDoc | undefined> {
  const kv = await store.get(snapshotKey(name), options);
  return kv && stored(kv);
}

export interface SnapshotDocList {
  docs: StoredSnapshotDoc[];
  /** Documents this node cannot parse (DATA_LOSS, `details.key` names each): a collector must delete nothing then. */
  unreadable: StorageError[];
}

export async function listSnapshotDocs(store: ClusterStore, options?: CallOptions): Promise<SnapshotDocList> {
  const { docs, unreadable } = await listParsed(store, SNAPSHOTS_PREFIX, stored, options);
  return { docs, unreadable };
}

/** The snapshot named `nameOrId`, or whose id it is. */
export async function findSnapshotDoc(store: ClusterStore, nameOrId: string, options?: CallOptions): Promise<StoredSnapshotDoc | undefined> {
  if (nameOrId === '') return undefined;
  const byName = await getSnapshotDoc(store, nameOrId, options);
  if (byName) return byName;
  const { docs } = await listSnapshotDocs(store, options);
  return docs.find((d) => d.doc.id === nameOrId);
}

/** Writes a new document; false when one of that name exists already. */
export async function createSnapshotDoc(store: ClusterStore, doc: SnapshotDoc): Promise<boolean> {
  const key = snapshotKey(doc.name);
  const r = await store.txn({ guards: [{ key, modRevision: 0 }], ops: [{ type: 'put', key, value: snapshotDocToJson(doc) }] });
  return r.succeeded;
}

/** What a mutation returns: the next document, `undefined` for "nothing to change", or `'delete'`. */
export type SnapshotDocMutation = SnapshotDoc | undefined | 'delete';

const MAX_CAS_ATTEMPTS = 20;

/**
 * Read, mutate, compare-and-swap, and on a lost race read again and re-decide. NOT_FOUND when
 * the snapshot does not exist; returns the document as stored afterwards (undefined after a delete).
 * `guards` are more conditions of the write (the repair leader's key).
 */
export async function updateSnapshotDoc(store: ClusterStore, name: string, mutate: (doc: SnapshotDoc) => SnapshotDocMutation,
  guards?: () => readonly Guard[]): Promise<StoredSnapshotDoc | undefined> {
  const key = snapshotKey(name);
  for (let attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++) {
    const current = await store.get(key);
    if (!current) throw new StorageError(Code.NOT_FOUND, `snapshot "${name}" not found`, { details: { snapshot: name } });
    const before = stored(current);
    const next = mutate(structuredClone(before.doc));
    if (next === undefined) return before;
    const ops = next === 'delete' ? [{ type: 'delete' as const, key }] : [{ type: 'put' as const, key, value: snapshotDocToJson(next) }];
    const r = await store.txn({ guards: [guardFor(key, current), ...(guards?.() ?? [])], ops });
    if (r.succeeded) return next === 'delete' ? undefined : { doc: next, modRevision: r.revision };
  }
  throw new StorageError(Code.ABORTED, `snapshot "${name}" kept changing while being updated (${MAX_CAS_ATTEMPTS} attempts); try again`, { details: { snapshot: name } });
}

/**
 * Writes the rule snapshot `id` was taken under into its document (snapshot-rule-record.ts).
 * Nothing is written when the name now holds another snapshot, one being deleted, or one that
 * records a rule already (a concurrent call of the same name took it); NOT_FOUND when it is
 * gone. Returns the document as stored afterwards.
 */
export async function recordSnapshotRule(store: ClusterStore, name: string, id: SnapshotId, rule: SnapshotRuleRecord): Promise<StoredSnapshotDoc | undefined> {
  return updateSnapshotDoc(store, name, (d) => (d.id === id && d.state !== 'deleting' && !d.rule ? { ...d, rule } : undefined));
}
