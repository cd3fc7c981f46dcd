/**
 * Reading SnapshotRule manifests: YAML (1.2, so JSON too), one or several documents
 * separated by `---`. Every document is checked before any is used, and every problem is
 * reported at once, each prefixed with the document it is in ("rules.yaml: document 2 (rule
 * "mysql"): spec.pre[1].timeoutSeconds: ..."). Empty documents (a trailing `---`) are skipped.
 */
import { parseAllDocuments } from 'yaml';
import { Code, StorageError } from '../common/errors.js';
import { validateSnapshotRule, type SnapshotRule } from './snapshot-rule.js';

/** The most documents one manifest may hold, and its largest size: a rule file is small. */
export const MAX_MANIFEST_DOCUMENTS = 100;
export const MAX_MANIFEST_BYTES = 1 << 20;

function invalid(source: string, problems: string[]): StorageError {
  return new StorageError(Code.INVALID_ARGUMENT, `${source}: ${problems.join('; ')}`, { details: { source, problems } });
}

/**
 * The rules in `text`, in document order. INVALID_ARGUMENT (with every problem) when the YAML
 * does not parse, a document is not a valid SnapshotRule, two documents name the same rule, or
 * there is no rule at all. `source` names the text in messages (the file name).
 */
export function parseRuleManifest(text: string, source = 'manifest'): SnapshotRule[] {
  if (Buffer.byteLength(text) > MAX_MANIFEST_BYTES) throw invalid(source, [`is larger than ${MAX_MANIFEST_BYTES} bytes: split it`]);
  const docs = parseAllDocuments(text, { prettyErrors: true, uniqueKeys: true });
  if (!Array.isArray(docs)) throw invalid(source, ['is not YAML']);
  const problems: string[] = [];
  const rules: SnapshotRule[] = [];
  const seen = new Map<string, number>();
  let number = 0;
  for (const doc of docs) {
    number++;
    const where = `document ${number}`;
    if (doc.errors.length > 0) {
      problems.push(...doc.errors.map((e) => `${where}: YAML error: ${e.message.split('\n')[0]}`));
      continue;
    }
    const value: unknown = doc.toJS({ maxAliasCount: 50 });
    if (value === null || value === undefined) continue;
    const name = typeof value === 'object' && !Array.isArray(value) ? (value as { metadata?: { name?: unknown } }).metadata?.name : undefined;
    const label = typeof name === 'string' && name ? `${where} (rule "${name}")` : where;
    try {
      const rule = validateSnapshotRule(value, label);
      const first = seen.get(rule.name);
      if (first !== undefined) problems.push(`${label}: rule "${rule.name}" is also document ${first}: give each rule its own name`);
      else seen.set(rule.name, number);
      rules.push(rule);
    } catch (err) {
      if (!(err instanceof StorageError)) throw err;
      problems.push(...((err.details.problems as string[] | undefined) ?? [err.message]).map((m) => `${label}: ${m}`));
    }
    if (number > MAX_MANIFEST_DOCUMENTS) {
      problems.push(`holds more than ${MAX_MANIFEST_DOCUMENTS} documents: split it`);
      break;
    }
  }
  if (problems.length > 0) throw invalid(source, problems);
  if (rules.length === 0) throw invalid(source, ['holds no SnapshotRule document']);
  return rules;
}
