// The SnapshotRule model and manifests: defaults, exact path-qualified errors, unknown
// fields refused, several documents per file.
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { parseRuleManifest } from '../../src/snapshot/rule-manifest.js';
import { ruleToDocument, validateSnapshotRule } from '../../src/snapshot/snapshot-rule.js';

const POSTGRES = `
apiVersion: cairn.dev/v1alpha1
kind: SnapshotRule
metadata:
  name: postgres
  namespace: db
spec:
  pre:
    - kind: command
      command: [psql, -c, CHECKPOINT]
      timeoutSeconds: 60
    - kind: fsfreeze
  post: []
`;

const MYSQL = `
apiVersion: cairn.dev/v1alpha1
kind: SnapshotRule
metadata: { name: mysql }
spec:
  pre:
    - name: read-lock
      kind: exec
      container: mysql
      selector: { matchLabels: { app: mysql } }
      command: [sh, -c, 'mysql -N -B -n -e "FLUSH TABLES WITH READ LOCK; SELECT \\"READY\\"; DO SLEEP(3600)"']
      background: true
      readySeconds: 20
    - kind: fsfreeze
      onError: Continue
`;

function problems(fn: () => unknown): string[] {
  const err = (() => {
    try {
      fn();
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  if (!(err instanceof StorageError)) throw new Error(`expected a StorageError, got ${String(err)}`);
  if (err.code !== Code.INVALID_ARGUMENT) throw new Error(`expected INVALID_ARGUMENT, got ${Code[err.code]}`);
  return (err.details.problems as string[] | undefined) ?? [err.message];
}

const base = (pre: unknown[], post: unknown[] = []): Record<string, unknown> => ({
  apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'r' }, spec: { pre, post },
});

test('a manifest with two rules: defaults are filled in, order kept', (t) => {
  const [pg, my] = parseRuleManifest(`${POSTGRES}---${MYSQL}---\n`, 'rules.yaml');
  t.is(pg!.name, 'postgres');
  t.is(pg!.namespace, 'db');
  t.deepEqual(pg!.pre[0], { kind: 'command', command: ['psql', '-c', 'CHECKPOINT'], timeoutSeconds: 60, onError: 'Fail', runIn: 'one', background: false });
  t.deepEqual(pg!.pre[1], { kind: 'fsfreeze', command: [], timeoutSeconds: 30, onError: 'Fail', runIn: 'one', background: false });
  t.is(my!.name, 'mysql');
  t.like(my!.pre[0], { name: 'read-lock', kind: 'exec', container: 'mysql', matchLabels: { app: 'mysql' }, background: true, readySeconds: 20, timeoutSeconds: 30, runIn: 'one' });
  t.is(my!.pre[1]!.onError, 'Continue');
});

test('the document form round-trips through validation', (t) => {
  const [rule] = parseRuleManifest(MYSQL);
  t.deepEqual(validateSnapshotRule(ruleToDocument(rule!)), rule);
});

test('a negative timeout names its path and value exactly', (t) => {
  t.deepEqual(problems(() => validateSnapshotRule(base([{ kind: 'fsfreeze' }, { kind: 'command', command: ['true'], timeoutSeconds: -3 }]))),
    ['spec.pre[1].timeoutSeconds: must be a whole number of seconds between 1 and 3600, got -3']);
});

test('every problem is reported at once, unknown fields included', (t) => {
  const doc = {
    apiVersion: 'cairn.dev/v1', kind: 'SnapshotRule', metadata: { name: 'Bad_Name', owner: 'x' }, extra: 1,
    spec: {
      pre: [
        { kind: 'command', command: 'psql -c CHECKPOINT', onErorr: 'Continue' },
        { kind: 'exec', command: ['true'], runIn: 'some', timeoutSeconds: 3601 },
        { kind: 'fsfreeze', command: ['fsfreeze', '-f', '/'] },
      ],
      post: [{ kind: 'command', command: ['true'], background: true }],
    },
  };
  t.deepEqual(problems(() => validateSnapshotRule(doc)), [
    'extra: unknown field (known: apiVersion, kind, metadata, spec)',
    'apiVersion: must be cairn.dev/v1alpha1, got "cairn.dev/v1"',
    'metadata.owner: unknown field (known: name, namespace, labels, annotations)',
    'metadata.name: must be a DNS-1123 subdomain (lower-case letters, digits, \'-\' and \'.\', starting and ending with a letter or digit, at most 253), got "Bad_Name"',
    'spec.pre[0].onErorr: unknown field (known: name, kind, container, command, selector, timeoutSeconds, onError, runIn, background, readySeconds)',
    'spec.pre[0].command: must be a non-empty list of strings (the program, then its arguments), got "psql -c CHECKPOINT"',
    'spec.pre[1].timeoutSeconds: must be a whole number of seconds between 1 and 3600, got 3601',
    'spec.pre[1].selector: is required for exec actions: say which pods with selector.matchLabels',
    'spec.pre[1].runIn: must be one of one, all, got "some"',
    'spec.pre[2].command: is not a field of fsfreeze actions (fsfreeze runs no command)',
    'spec.post[0].background: only pre actions can be background: a post action has no snapshot to hold its session open for',
  ]);
});

test('kind-specific fields, readySeconds and freeze placement are checked', (t) => {
  t.deepEqual(problems(() => validateSnapshotRule(base([
    { kind: 'command', command: ['x'], container: 'c', runIn: 'all', selector: { matchLabels: { a: 'b' } } },
    { kind: 'command', command: ['x'], readySeconds: 5 },
    { kind: 'command', command: ['x'], background: true, readySeconds: 30 },
    { kind: 'exec', command: ['x'], selector: { matchLabels: {} } },
    { kind: 'exec', command: ['x'], selector: { matchLabels: { 'app/x/y': 'ok', tier: 'bad value' } } },
  ], [{ kind: 'fsfreeze' }]))), [
    'spec.pre[0].container: is not a field of command actions',
    'spec.pre[0].selector: is not a field of command actions',
    'spec.pre[0].runIn: is not a field of command actions',
    'spec.pre[1].readySeconds: is only for background actions (background: true)',
    'spec.pre[2].readySeconds: must be less than timeoutSeconds (30): the action must be ready before it times out',
    'spec.pre[3].selector.matchLabels: must name at least one label (an empty selector would pick every pod)',
    'spec.pre[4].selector.matchLabels.app/x/y: is not a valid label key (an optional DNS subdomain and "/", then 1-63 letters, digits, "-", "_" or ".")',
    'spec.pre[4].selector.matchLabels.tier: is not a valid label value (at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit), got "bad value"',
    'spec.post[0]: an fsfreeze in post thaws the filesystem a pre fsfreeze froze, and no pre action freezes it',
  ]);
  t.deepEqual(problems(() => validateSnapshotRule(base([{ kind: 'fsfreeze' }, { kind: 'fsfreeze' }]))),
    ['spec.pre[1]: the filesystem is already frozen by spec.pre[0]: freeze it once']);
  t.deepEqual(problems(() => validateSnapshotRule(base([]))), ['spec: has no pre and no post actions: a rule must do something']);
});

test('manifest errors name the file, the document and the rule', (t) => {
  const bad = `${POSTGRES}---\napiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata: {name: mysql}\nspec:\n  pre:\n    - kind: command\n      command: [x]\n      timeoutSeconds: 0\n`;
  const err = t.throws(() => parseRuleManifest(bad, 'rules.yaml'), { instanceOf: StorageError });
  t.is(err?.code, Code.INVALID_ARGUMENT);
  t.is(err?.message, 'rules.yaml: document 2 (rule "mysql"): spec.pre[0].timeoutSeconds: must be a whole number of seconds between 1 and 3600, got 0');
});

test('manifests: YAML errors, duplicate names, and no rule at all are refused', (t) => {
  t.regex(t.throws(() => parseRuleManifest('a: [1, 2\n', 'f.yaml'))!.message, /^f\.yaml: document 1: YAML error: /);
  t.is(t.throws(() => parseRuleManifest(`${POSTGRES}---${POSTGRES}`, 'f.yaml'))!.message,
    'f.yaml: document 2 (rule "postgres"): rule "postgres" is also document 1: give each rule its own name');
  t.is(t.throws(() => parseRuleManifest('---\n# nothing\n', 'f.yaml'))!.message, 'f.yaml: holds no SnapshotRule document');
  t.is(t.throws(() => parseRuleManifest('a: 1\na: 2\n', 'f.yaml'))!.message.split(':').slice(0, 3).join(':'), 'f.yaml: document 1: YAML error');
  t.is(t.throws(() => parseRuleManifest('- 1\n', 'f.yaml'))!.message,
    'f.yaml: document 1: (document): must be an object (apiVersion, kind, metadata, spec), got [1]');
});

test('JSON is accepted as YAML', (t) => {
  const [rule] = parseRuleManifest(JSON.stringify(base([{ kind: 'command', command: ['sync'] }])));
  t.is(rule!.name, 'r');
  t.deepEqual(rule!.pre[0]!.command, ['sync']);
});
