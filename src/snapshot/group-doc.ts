/**
 * The group snapshot document: one JSON value per group snapshot at `group-snapshots/<name>`
 * (group-coordinator.ts). It names the members (each an ordinary snapshot document carrying
 * `groupSnapshotId`), records each member's pause window and the phases' timings, and the
 * group's state: `creating` while the coordinator works (a crash leaves it for the repair
 * leader to undo), `ready` once every member is, `deleting` while members are removed.
 * Changes are compare-and-swap on the key's mod revision, as for snapshot documents.
 */
import { Code, StorageError } from '../common/errors.js';
import type { SnapshotId, VolumeId } from '../common/ids.js';
import type { CallOptions, ClusterStore, JsonValue, KeyValue } from '../cluster/store/cluster-store.js';
import { guardFor } from '../cluster/store/cluster-store.js';
import { keys } from '../cluster/store/keys.js';
import { listParsed } from '../cluster/store/parsed-list.js';
import { parseSnapshotRuleRecord, snapshotRuleRecordToJson } from '../cluster/snapshot-rule-record.js';
import type { SnapshotRuleRecord } from '../cluster/snapshot-types.js';

export const GROUP_SNAPSHOTS_PREFIX = keys.groupSnapshotsPrefix;
export const groupSnapshotKey = (name: string): string => `${GROUP_SNAPSHOTS_PREFIX}${name}`;

export type GroupSnapshotState = 'creating' | 'ready' | 'deleting';

export interface GroupMember {
  volumeId: VolumeId;
  volumeName: string;
  snapshotId: SnapshotId;
  snapshotName: string;
  /** How long the member's writes waited, in µs (0 for a volume no engine served). */
  pauseUs: number;
  /** How long its writes in flight took to settle once paused, in ms. */
  drainMs: number;
  /** The group's snapshot rule as it ran for this member (group-rules.ts), when it had one. */
  rule?: SnapshotRuleRecord;
}

/** Milliseconds per phase: pre hooks, pause (until every member paused), cut, resume, finish (copies whole), and the whole group. */
export interface GroupPhases { preMs: number; pauseMs: number; cutMs: number; resumeMs: number; finishMs: number; totalMs: number }

export interface GroupSnapshotDoc {
  id: string;
  name: string;
  state: GroupSnapshotState;
  readyToUse: boolean;
  /** RFC 3339. */
  createdAt: string;
  members: GroupMember[];
  phases: GroupPhases;
}

export interface StoredGroupDoc { doc: GroupSnapshotDoc; modRevision: number }

const STATES: readonly string[] = ['creating', 'ready', 'deleting'];
const PHASES = ['preMs', 'pauseMs', 'cutMs', 'resumeMs', 'finishMs', 'totalMs'] as const;
const isObject = (v: JsonValue | undefined): v is { [key: string]: JsonValue } => typeof v === 'object' && v !== null && !Array.isArray(v);

function malformed(key: string, why: string): StorageError {
  return new StorageError(Code.DATA_LOSS, `group snapshot document at "${key}" is malformed (${why}); fix or delete the key in the cluster store`, { details: { key } });
}

function fields(key: string, v: { [key: string]: JsonValue }) {
  return {
    str: (name: string): string => {
      const s = v[name];
      if (typeof s !== 'string' || s === '') throw malformed(key, `${name} is not a non-empty string`);
      return s;
    },
    num: (name: string): number => {
      const n = v[name];
      if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw malformed(key, `${name} is not a number >= 0`);
      return n;
    },
  };
}

/** Reads a stored document field by field; DATA_LOSS (naming the key) when it does not have the expected shape. */
export function parseGroupDoc(key: string, value: JsonValue): GroupSnapshotDoc {
  if (!isObject(value)) throw malformed(key, 'not an object');
  const { str } = fields(key, value);
  const state = str('state');
  if (!STATES.includes(state)) throw malformed(key, `unknown state ${state}`);
  if (typeof value.readyToUse !== 'boolean') throw malformed(key, 'readyToUse is not a boolean');
  if (value.readyToUse && state !== 'ready') throw malformed(key, `readyToUse while ${state}`);
  const createdAt = str('createdAt');
  if (Number.isNaN(Date.parse(createdAt))) throw malformed(key, 'createdAt is not a time');
  if (!Array.isArray(value.members) || value.members.length === 0) throw malformed(key, 'members is not a non-empty list');
  const members = value.members.map((m): GroupMember => {
    if (!isObject(m)) throw malformed(key, 'a member is not an object');
    const f = fields(key, m);
    return {
      volumeId: f.str('volumeId') as VolumeId, volumeName: f.str('volumeName'), snapshotId: f.str('snapshotId') as SnapshotId,
      snapshotName: f.str('snapshotName'), pauseUs: f.num('pauseUs'), drainMs: f.num('drainMs'),
      ...ruleOf(key, m.rule),
    };
  });
  if (!isObject(value.phases)) throw malformed(key, 'phases is not an object');
  const p = fields(key, value.phases);
  const phases = Object.fromEntries(PHASES.map((name) => [name, p.num(name)])) as unknown as GroupPhases;
  return { id: str('id'), name: str('name'), state: state as GroupSnapshotState, readyToUse: value.readyToUse, createdAt, members, phases };
}

function ruleOf(key: string, v: JsonValue | undefined): { rule?: SnapshotRuleRecord } {
  const rule = parseSnapshotRuleRecord(v, (why) => malformed(key, `a member's rule: ${why}`));
  return rule ? { rule } : {};
}

export function groupDocToJson(doc: GroupSnapshotDoc): JsonValue {
  return {
    id: doc.id, name: doc.name, state: doc.state, readyToUse: doc.readyToUse, createdAt: doc.createdAt,
    members: doc.members.map(({ rule, ...m }) => ({ ...m, ...(rule ? { rule: snapshotRuleRecordToJson(rule) } : {}) })), phases: { ...doc.phases },
  };
}

const stored = (kv: KeyValue): StoredGroupDoc => ({ doc: parseGroupDoc(kv.key, kv.value), modRevision: kv.modRevision });

export async function getGroupDoc(store: ClusterStore, name: string, options?: CallOptions): Promise<StoredGroupDoc | undefined> {
  const kv = await store.get(groupSnapshotKey(name), options);
  return kv && stored(kv);
}

export async function listGroupDocs(store: ClusterStore, options?: CallOptions): Promise<{ docs: StoredGroupDoc[]; unreadable: StorageError[] }> {
  const { docs, unreadable } = await listParsed(store, GROUP_SNAPSHOTS_PREFIX, stored, options);
  return { docs, unreadable };
}

/** Writes a new document; false when one of that name exists already. */
export async function createGroupDoc(store: ClusterStore, doc: GroupSnapshotDoc): Promise<boolean> {
  const key = groupSnapshotKey(doc.name);
  return (await store.txn({ guards: [{ key, modRevision: 0 }], ops: [{ type: 'put', key, value: groupDocToJson(doc) }] })).succeeded;
}

/** Read, mutate, compare-and-swap (again on a lost race). `undefined` changes nothing; 'delete' removes it. NOT_FOUND without a document. */
export async function updateGroupDoc(store: ClusterStore, name: string, mutate: (doc: GroupSnapshotDoc) => GroupSnapshotDoc | undefined | 'delete'): Promise<GroupSnapshotDoc | undefined> {
  const key = groupSnapshotKey(name);
  for (let attempt = 1; attempt <= 20; attempt++) {
    const current = await store.get(key);
    if (!current) throw new StorageError(Code.NOT_FOUND, `group snapshot "${name}" not found`, { details: { groupSnapshot: name } });
    const before = stored(current);
    const next = mutate(structuredClone(before.doc));
    if (next === undefined) return before.doc;
    const ops = next === 'delete' ? [{ type: 'delete' as const, key }] : [{ type: 'put' as const, key, value: groupDocToJson(next) }];
    if ((await store.txn({ guards: [guardFor(key, current)], ops })).succeeded) return next === 'delete' ? undefined : next;
  }
  throw new StorageError(Code.ABORTED, `group snapshot "${name}" kept changing while being updated; try again`, { details: { groupSnapshot: name } });
}
