/**
 * The `rule` field of a snapshot document (snapshot-doc.ts): the snapshot rule the snapshot
 * was taken under and each action's outcome, read field by field like the rest of the
 * document. A document without the field (older ones, snapshots taken without a rule)
 * has no rule record. What is kept of an action's output is a short tail only.
 */
import type { JsonValue } from './store/cluster-store.js';
import type { SnapshotRuleActionRecord, SnapshotRuleRecord } from './snapshot-types.js';

/** How much of an action's output a snapshot document keeps. */
export const SNAPSHOT_RULE_TAIL_BYTES = 512;

type JsonObject = { [key: string]: JsonValue };
const isObject = (v: JsonValue | undefined): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The last SNAPSHOT_RULE_TAIL_BYTES bytes of `text` (whole characters). */
export function shortTail(text: string): string {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= SNAPSHOT_RULE_TAIL_BYTES) return text;
  // Cut on a character boundary: drop continuation bytes at the start of the tail.
  let start = bytes.length - SNAPSHOT_RULE_TAIL_BYTES;
  while (start < bytes.length && (bytes[start]! & 0xc0) === 0x80) start++;
  return bytes.subarray(start).toString('utf8');
}

/** The record of one action from a document; `why` receives what is wrong. */
function parseAction(v: JsonValue, at: string, why: (problem: string) => Error): SnapshotRuleActionRecord {
  if (!isObject(v)) throw why(`${at} is not an object`);
  const str = (name: string, allowEmpty = false): string => {
    const s = v[name];
    if (typeof s !== 'string' || (!allowEmpty && s === '')) throw why(`${at}.${name} is not a${allowEmpty ? '' : ' non-empty'} string`);
    return s;
  };
  const phase = str('phase');
  if (phase !== 'pre' && phase !== 'post') throw why(`${at}.phase is ${phase}`);
  const exitCode = v.exitCode;
  if (exitCode !== null && (typeof exitCode !== 'number' || !Number.isSafeInteger(exitCode))) throw why(`${at}.exitCode is not a whole number or null`);
  const durationMs = v.durationMs;
  if (typeof durationMs !== 'number' || !Number.isSafeInteger(durationMs) || durationMs < 0) throw why(`${at}.durationMs is not a whole number`);
  const out: SnapshotRuleActionRecord = {
    action: str('action'), phase, kind: str('kind'), step: str('step'), target: str('target', true), status: str('status'), exitCode, durationMs,
  };
  if (v.error !== undefined) {
    const e = v.error;
    if (!isObject(e) || typeof e.code !== 'string' || typeof e.message !== 'string') throw why(`${at}.error lacks code or message`);
    out.error = { code: e.code, message: e.message };
  }
  if (v.outputTail !== undefined) {
    if (typeof v.outputTail !== 'string') throw why(`${at}.outputTail is not a string`);
    out.outputTail = v.outputTail;
  }
  return out;
}

/** The `rule` field of a stored document; undefined when it has none. */
export function parseSnapshotRuleRecord(v: JsonValue | undefined, why: (problem: string) => Error): SnapshotRuleRecord | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) throw why('rule is not an object');
  if (typeof v.name !== 'string' || v.name === '') throw why('rule.name is not a non-empty string');
  if (typeof v.ok !== 'boolean') throw why('rule.ok is not a boolean');
  if (typeof v.durationMs !== 'number' || !Number.isSafeInteger(v.durationMs) || v.durationMs < 0) throw why('rule.durationMs is not a whole number');
  if (!Array.isArray(v.actions)) throw why('rule.actions is not a list');
  return { name: v.name, ok: v.ok, durationMs: v.durationMs, actions: v.actions.map((a, i) => parseAction(a, `rule.actions[${i}]`, why)) };
}

export function snapshotRuleRecordToJson(r: SnapshotRuleRecord): JsonValue {
  return {
    name: r.name, ok: r.ok, durationMs: r.durationMs,
    actions: r.actions.map((a) => ({
      action: a.action, phase: a.phase, kind: a.kind, step: a.step, target: a.target, status: a.status, exitCode: a.exitCode, durationMs: a.durationMs,
      ...(a.error ? { error: { code: a.error.code, message: a.error.message } } : {}),
      ...(a.outputTail ? { outputTail: a.outputTail } : {}),
    })),
  };
}
