// The SnapshotRule CustomResourceDefinition (deploy/crds/snapshotrules.cairn.dev.yaml),
// checked offline: a structurally valid apiextensions.k8s.io/v1 CRD, whose schema (run by a
// JSON-schema validator, ajv) accepts every SnapshotRule example in docs/snapshots.md, gives
// the same rule as cairnctl's parser once its defaults are applied, and rejects bad rules.
// The CEL validations (x-kubernetes-validations) are run by a CEL evaluator
// (@marcbachmann/cel-js) on the defaulted objects, as the API server runs them.
import test from 'ava';
import { evaluate } from '@marcbachmann/cel-js';
import { Ajv, type ErrorObject } from 'ajv';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { StorageError } from '../../src/common/errors.js';
import { parseRuleManifest } from '../../src/snapshot/rule-manifest.js';
import { ruleFromCustomResource, validateSnapshotRule } from '../../src/snapshot/snapshot-rule.js';

const ROOT = join(import.meta.dirname, '../..');
type Schema = Record<string, unknown>;
interface Crd {
  apiVersion: string; kind: string; metadata: { name: string };
  spec: { group: string; scope: string; names: Record<string, unknown>; versions: { name: string; served: boolean; storage: boolean; schema: { openAPIV3Schema: Schema } }[] };
}

const crd = parse(readFileSync(join(ROOT, 'deploy/crds/snapshotrules.cairn.dev.yaml'), 'utf8')) as Crd;
const schema = crd.spec.versions[0]!.schema.openAPIV3Schema;

/** The examples in the docs: every ```yaml block holding a SnapshotRule. */
const docExamples = [...readFileSync(join(ROOT, 'docs/snapshots.md'), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)]
  .map((m) => m[1]!).filter((y) => /^kind: SnapshotRule\b/m.test(y));

const FORBIDDEN = ['$ref', 'definitions', 'dependencies', 'id', '$schema', 'patternProperties', 'additionalItems', 'uniqueItems'];

/** What makes a schema non-structural (apiextensions.k8s.io/v1 refuses such a CRD), as "path: problem". */
function structuralProblems(s: Schema, path: string, out: string[] = []): string[] {
  const exempt = s['x-kubernetes-int-or-string'] === true || s['x-kubernetes-preserve-unknown-fields'] === true;
  if (typeof s.type !== 'string' && !exempt) out.push(`${path}: has no type`);
  for (const k of FORBIDDEN) if (k in s) out.push(`${path}: uses ${k}`);
  if (s.properties && s.additionalProperties) out.push(`${path}: has both properties and additionalProperties`);
  if (Array.isArray(s.items)) out.push(`${path}: items is a list`);
  if (s.type === 'array' && !s.items) out.push(`${path}: an array without items`);
  for (const [k, sub] of Object.entries((s.properties ?? {}) as Record<string, Schema>)) structuralProblems(sub, `${path}.properties.${k}`, out);
  if (s.items && !Array.isArray(s.items)) structuralProblems(s.items as Schema, `${path}.items`, out);
  if (typeof s.additionalProperties === 'object') structuralProblems(s.additionalProperties as Schema, `${path}.additionalProperties`, out);
  if (Array.isArray(s.enum) && s.type && !s.enum.every((v) => typeof v === (s.type === 'integer' ? 'number' : s.type))) out.push(`${path}: an enum value is not a ${String(s.type)}`);
  return out;
}

/** Kubernetes with strict field validation (kubectl's default) refuses unknown fields: the same as additionalProperties false. */
function strict(s: Schema): Schema {
  const out: Schema = { ...s };
  if (s.properties) {
    out.properties = Object.fromEntries(Object.entries(s.properties as Record<string, Schema>).map(([k, v]) => [k, strict(v)]));
    if (Object.keys(s.properties as object).length > 0) out.additionalProperties = false;
  }
  if (s.items) out.items = strict(s.items as Schema);
  return out;
}

const ajv = new Ajv({ strict: false, allErrors: true, useDefaults: true });
const validate = ajv.compile(schema);
const validateStrict = ajv.compile(strict(schema));

/** The messages of the CEL validations that fail on `value` (already defaulted), walking the schema with it. */
function celFailures(s: Schema, value: unknown, out: string[] = []): string[] {
  if (value === undefined || value === null) return out;
  for (const v of (s['x-kubernetes-validations'] ?? []) as { rule: string; message: string }[]) {
    if (evaluate(v.rule, { self: value }) !== true) out.push(v.message);
  }
  if (s.properties && typeof value === 'object') {
    for (const [k, sub] of Object.entries(s.properties as Record<string, Schema>)) celFailures(sub, (value as Record<string, unknown>)[k], out);
  }
  if (s.items && Array.isArray(value)) for (const item of value) celFailures(s.items as Schema, item, out);
  return out;
}

function errorsOf(doc: unknown, strictFields = false): string[] {
  const v = strictFields ? validateStrict : validate;
  return v(structuredClone(doc)) ? [] : (v.errors ?? []).map((e: ErrorObject) => `${e.instancePath} ${e.message ?? ''}`);
}

test('the CRD is a structurally valid, namespaced apiextensions.k8s.io/v1 CustomResourceDefinition', (t) => {
  t.is(crd.apiVersion, 'apiextensions.k8s.io/v1');
  t.is(crd.kind, 'CustomResourceDefinition');
  t.is(crd.metadata.name, `${String(crd.spec.names.plural)}.${crd.spec.group}`);
  t.is(crd.spec.group, 'cairn.dev');
  t.is(crd.spec.scope, 'Namespaced');
  t.like(crd.spec.names, { kind: 'SnapshotRule', listKind: 'SnapshotRuleList', plural: 'snapshotrules', singular: 'snapshotrule' });
  t.deepEqual(crd.spec.versions.map((v) => [v.name, v.served, v.storage]), [['v1alpha1', true, true]]);
  t.deepEqual(structuralProblems(schema, 'openAPIV3Schema'), []);
  t.deepEqual((schema.properties as Record<string, Schema>).metadata, { type: 'object' }, 'metadata may only be typed (Kubernetes owns its schema)');
  // Every default must satisfy its own schema (the API server checks this too).
  const action = ((schema.properties as Record<string, Schema>).spec!.properties as Record<string, Schema>).pre!.items as Schema;
  for (const [field, sub] of Object.entries(action.properties as Record<string, Schema>)) {
    if ('default' in sub) t.true(ajv.validate(sub, sub.default), `the default of ${field} fails its own schema`);
  }
});

test('every SnapshotRule example in docs/snapshots.md is accepted, and the CRD\'s defaults give the same rule as cairnctl', (t) => {
  t.true(docExamples.length >= 3, `found ${docExamples.length} examples`);
  const names: string[] = [];
  for (const text of docExamples) {
    for (const d of parseAllDocuments(text)) {
      const doc: unknown = d.toJS();
      t.deepEqual(errorsOf(doc, true), [], text);
      const defaulted = structuredClone(doc);
      t.true(validate(defaulted));
      const [ours] = parseRuleManifest(text);
      t.deepEqual(ruleFromCustomResource(defaulted), ours);
      names.push(ours!.name);
    }
  }
  t.true(names.includes('postgres') && names.includes('mysql'), names.join(', '));
});

const rule = (action: Record<string, unknown>): Record<string, unknown> => ({
  apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'r' }, spec: { pre: [action] },
});

test('the schema rejects bad rules where they are wrong', (t) => {
  const cases: [Record<string, unknown>, string][] = [
    [{ kind: 'command', command: ['x'], timeoutSeconds: -3 }, '/spec/pre/0/timeoutSeconds must be >= 1'],
    [{ kind: 'command', command: ['x'], timeoutSeconds: 3601 }, '/spec/pre/0/timeoutSeconds must be <= 3600'],
    [{ kind: 'command', command: ['x'], timeoutSeconds: 1.5 }, '/spec/pre/0/timeoutSeconds must be integer'],
    [{ kind: 'shell', command: ['x'] }, '/spec/pre/0/kind must be equal to one of the allowed values'],
    [{ kind: 'command', command: ['x'], onError: 'Stop' }, '/spec/pre/0/onError must be equal to one of the allowed values'],
    [{ kind: 'exec', command: ['x'], selector: { matchLabels: { a: 'b' } }, runIn: 'some' }, '/spec/pre/0/runIn must be equal to one of the allowed values'],
    [{ command: ['x'] }, '/spec/pre/0 must have required property \'kind\''],
    [{ kind: 'command', command: [] }, '/spec/pre/0/command must NOT have fewer than 1 items'],
    [{ kind: 'command', command: 'psql -c CHECKPOINT' }, '/spec/pre/0/command must be array'],
    [{ kind: 'exec', command: ['x'], selector: { matchLabels: {} } }, '/spec/pre/0/selector/matchLabels must NOT have fewer than 1 properties'],
    [{ kind: 'exec', command: ['x'], container: 'My_Container', selector: { matchLabels: { a: 'b' } } }, '/spec/pre/0/container must match pattern "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"'],
    [{ kind: 'command', command: ['x'], background: 'yes' }, '/spec/pre/0/background must be boolean'],
  ];
  for (const [action, error] of cases) t.deepEqual(errorsOf(rule(action)), [error], JSON.stringify(action));
  t.deepEqual(errorsOf({ apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'r' } }), [' must have required property \'spec\'']);
});

test('with strict field validation, unknown fields are refused as cairnctl refuses them', (t) => {
  t.deepEqual(errorsOf(rule({ kind: 'command', command: ['x'], onErorr: 'Continue' }), true), ['/spec/pre/0 must NOT have additional properties']);
  t.deepEqual(errorsOf({ ...rule({ kind: 'fsfreeze' }), spec: { pre: [{ kind: 'fsfreeze' }], during: [] } }, true), ['/spec must NOT have additional properties']);
  t.deepEqual(errorsOf(rule({ kind: 'command', command: ['x'], onErorr: 'Continue' })), [], 'without it, Kubernetes prunes them');
});

test('the CEL validations refuse what cairnctl refuses between fields, and pass the docs\' examples', (t) => {
  for (const text of docExamples) {
    for (const d of parseAllDocuments(text)) {
      const doc: unknown = d.toJS();
      t.true(validate(doc));
      t.deepEqual(celFailures(schema, doc), [], text);
    }
  }
  const spec = (pre: unknown[], post: unknown[] = []): Record<string, unknown> => ({
    apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'r' }, spec: { pre, post },
  });
  const exec = { kind: 'exec', command: ['x'], selector: { matchLabels: { app: 'db' } } };
  const cases: [Record<string, unknown>, string][] = [
    [spec([{ kind: 'fsfreeze', command: ['x'] }]), 'exec and command actions need a command; fsfreeze takes none'],
    [spec([{ kind: 'command' }]), 'exec and command actions need a command; fsfreeze takes none'],
    [spec([{ kind: 'command', command: ['x'], selector: { matchLabels: { a: 'b' } } }]), 'exec actions need selector.matchLabels; container, selector and runIn are for exec actions only'],
    [spec([{ kind: 'command', command: ['x'], runIn: 'all' }]), 'exec actions need selector.matchLabels; container, selector and runIn are for exec actions only'],
    [spec([{ kind: 'exec', command: ['x'] }]), 'exec actions need selector.matchLabels; container, selector and runIn are for exec actions only'],
    [spec([{ kind: 'fsfreeze', background: true }]), 'fsfreeze cannot be a background action'],
    [spec([{ ...exec, readySeconds: 5 }]), 'readySeconds is for background actions, and must be less than timeoutSeconds'],
    [spec([{ ...exec, background: true, readySeconds: 30 }]), 'readySeconds is for background actions, and must be less than timeoutSeconds'],
    [spec([]), 'a rule needs at least one pre or post action'],
    [spec([{ kind: 'fsfreeze' }], [{ ...exec, background: true }]), 'only pre actions can be background'],
    [spec([{ kind: 'fsfreeze' }, { kind: 'fsfreeze' }]), 'freeze the filesystem once'],
    [spec([exec], [{ kind: 'fsfreeze' }]), 'an fsfreeze in post thaws what a pre fsfreeze froze, and no pre action freezes it'],
  ];
  for (const [doc, message] of cases) {
    const defaulted = structuredClone(doc);
    t.deepEqual(errorsOf(defaulted), [], JSON.stringify(doc));
    t.true(validate(defaulted));
    t.deepEqual(celFailures(schema, defaulted), [message], JSON.stringify(doc));
    t.throws(() => validateSnapshotRule(doc), { instanceOf: StorageError }, `cairnctl accepts what the CRD refuses: ${JSON.stringify(doc)}`);
  }
});
