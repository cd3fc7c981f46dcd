/**
 * Snapshot rules in the cluster store: one JSON document per rule at `rules/<name>`, holding
 * the SnapshotRule as applied (defaults written out), a generation (1 at creation, one more
 * per change), and when it was created and last changed. Every change is compare-and-swap on
 * the key's mod revision, as for volume and snapshot documents; a lost race reads again and
 * decides again. Works the same over etcd and the embedded store.
 */
import { Code, StorageError } from '../common/errors.js';
import type { CallOptions, ClusterStore, JsonValue, KeyValue } from '../cluster/store/cluster-store.js';
import { guardFor } from '../cluster/store/cluster-store.js';
import { keys } from '../cluster/store/keys.js';
import { ruleToDocument, validateSnapshotRule, type SnapshotRule } from './snapshot-rule.js';
import { listParsed } from '../cluster/store/parsed-list.js';

export const RULES_PREFIX = keys.rulesPrefix;
export const ruleKey = (name: string): string => `${RULES_PREFIX}${name}`;

export interface StoredRule {
  rule: SnapshotRule;
  /** 1 at creation, one more per change that altered the rule. */
  generation: number;
  /** RFC 3339. */
  createdAt: string;
  updatedAt: string;
  modRevision: number;
}

/** What `apply` did, in kubectl's words. */
export type ApplyOutcome = 'created' | 'configured' | 'unchanged';

export interface RuleList {
  rules: StoredRule[];
  /** Documents this node cannot read (DATA_LOSS, `details.key` names each). */
  unreadable: StorageError[];
}

const MAX_CAS_ATTEMPTS = 20;

/** JSON with object keys sorted, so that two equal rules compare equal whatever order their maps were written in. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

export function sameRule(a: SnapshotRule, b: SnapshotRule): boolean {
  return canonical(ruleToDocument(a)) === canonical(ruleToDocument(b));
}

function malformed(key: string, why: string): StorageError {
  return new StorageError(Code.DATA_LOSS, `snapshot rule document at "${key}" is malformed (${why}); apply the rule again or delete the key in the cluster store`, { details: { key } });
}

export function parseStoredRule(kv: KeyValue): StoredRule {
  const v = kv.value;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw malformed(kv.key, 'not an object');
  const { generation, createdAt, updatedAt } = v;
  if (typeof generation !== 'number' || !Number.isSafeInteger(generation) || generation < 1) throw malformed(kv.key, 'generation is not a positive whole number');
  if (typeof createdAt !== 'string' || typeof updatedAt !== 'string') throw malformed(kv.key, 'createdAt or updatedAt is not a string');
  let rule: SnapshotRule;
  try {
    rule = validateSnapshotRule(v.rule);
  } catch (err) {
    throw malformed(kv.key, (err as Error).message);
  }
  if (ruleKey(rule.name) !== kv.key) throw malformed(kv.key, `it names rule "${rule.name}"`);
  return { rule, generation, createdAt, updatedAt, modRevision: kv.modRevision };
}

function storedJson(s: Omit<StoredRule, 'modRevision'>): JsonValue {
  return { rule: ruleToDocument(s.rule) as JsonValue, generation: s.generation, createdAt: s.createdAt, updatedAt: s.updatedAt };
}

function notFound(name: string): StorageError {
  return new StorageError(Code.NOT_FOUND, `snapshot rule "${name}" not found: see cairnctl rule list, or create it with cairnctl rule apply -f FILE`, { details: { rule: name } });
}

export class SnapshotRuleStore {
  constructor(private readonly store: ClusterStore, private readonly now: () => Date = () => new Date()) {}

  /**
   * Creates the rule, or replaces the one of that name; `unchanged` (nothing written) when
   * the stored rule is the same. Idempotent.
   */
  async apply(rule: SnapshotRule, options?: CallOptions): Promise<{ outcome: ApplyOutcome; stored: StoredRule }> {
    const key = ruleKey(rule.name);
    for (let attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++) {
      const current = await this.store.get(key, options);
      const before = current && parseStoredRuleOrUndefined(current);
      if (before && sameRule(before.rule, rule)) return { outcome: 'unchanged', stored: before };
      const at = this.now().toISOString();
      const next = before
        ? { rule, generation: before.generation + 1, createdAt: before.createdAt, updatedAt: at }
        : { rule, generation: 1, createdAt: at, updatedAt: at };
      const r = await this.store.txn({ guards: [guardFor(key, current)], ops: [{ type: 'put', key, value: storedJson(next) }] }, options);
      if (r.succeeded) return { outcome: current ? 'configured' : 'created', stored: { ...next, modRevision: r.revision } };
    }
    throw new StorageError(Code.ABORTED, `snapshot rule "${rule.name}" kept changing while being applied (${MAX_CAS_ATTEMPTS} attempts); apply it again`, { details: { rule: rule.name } });
  }

  /** The rule, or undefined when there is none of that name. DATA_LOSS when its document cannot be read. */
  async find(name: string, options?: CallOptions): Promise<StoredRule | undefined> {
    const kv = await this.store.get(ruleKey(name), options);
    return kv && parseStoredRule(kv);
  }

  /** The rule; NOT_FOUND when there is none of that name. */
  async get(name: string, options?: CallOptions): Promise<StoredRule> {
    const found = await this.find(name, options);
    if (!found) throw notFound(name);
    return found;
  }

  /** Every rule, sorted by name; documents that cannot be read are listed apart. */
  async list(options?: CallOptions): Promise<RuleList> {
    const { docs, unreadable } = await listParsed(this.store, RULES_PREFIX, parseStoredRule, options);
    return { rules: docs, unreadable };
  }

  /** Deletes the rule; NOT_FOUND when there is none of that name. */
  async delete(name: string, options?: CallOptions): Promise<void> {
    const key = ruleKey(name);
    for (let attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++) {
      const current = await this.store.get(key, options);
      if (!current) throw notFound(name);
      const r = await this.store.txn({ guards: [guardFor(key, current)], ops: [{ type: 'delete', key }] }, options);
      if (r.succeeded) return;
    }
    throw new StorageError(Code.ABORTED, `snapshot rule "${name}" kept changing while being deleted (${MAX_CAS_ATTEMPTS} attempts); delete it again`, { details: { rule: name } });
  }
}

/** An unreadable stored document is replaced by apply (it is what apply mends). */
function parseStoredRuleOrUndefined(kv: KeyValue): StoredRule | undefined {
  try {
    return parseStoredRule(kv);
  } catch {
    return undefined;
  }
}
