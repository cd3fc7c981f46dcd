/**
 * `cairnctl rule` against a real cairnd (embedded cluster store): apply several rules from
 * one file (created / configured / unchanged), list, inspect, delete; an invalid file is
 * refused whole, with every problem named, and changes nothing.
 */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AppliedRuleMessage, SnapshotRuleMessage } from '../../src/cli/api-client.js';
import { Daemon } from '../helpers/daemon.js';

const RULES = `
apiVersion: cairn.dev/v1alpha1
kind: SnapshotRule
metadata:
  name: postgres
spec:
  pre:
    - kind: command
      command: [psql, -c, CHECKPOINT]
    - kind: fsfreeze
---
apiVersion: cairn.dev/v1alpha1
kind: SnapshotRule
metadata:
  name: mysql
  namespace: shop
spec:
  pre:
    - name: read-lock
      kind: exec
      container: mysql
      selector:
        matchLabels: { app: mysql }
      command: [mysql, -N, -B, -n, -e, "FLUSH TABLES WITH READ LOCK; SELECT 'READY'; DO SLEEP(600)"]
      background: true
    - kind: fsfreeze
`;

test('cairnctl rule apply, list, inspect and delete', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  const dir = mkdtempSync(join(tmpdir(), 'cairn-rules-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, RULES);

  const first = await d.ctl(['rule', 'apply', '-f', file]);
  t.is(first.exitCode, 0, first.stderr);
  t.is(first.stdout, 'snapshotrule/postgres created\nsnapshotrule/mysql created');
  const again = await d.ctl(['rule', 'apply', '-f', file]);
  t.is(again.stdout, 'snapshotrule/postgres unchanged\nsnapshotrule/mysql unchanged');
  writeFileSync(file, RULES.replace('command: [psql, -c, CHECKPOINT]', 'command: [psql, -c, CHECKPOINT]\n      timeoutSeconds: 90'));
  const changed = await d.ctlJson<AppliedRuleMessage[]>(['rule', 'apply', '-f', file]);
  t.deepEqual(changed.map((r) => [r.name, r.outcome, r.rule.generation]), [['postgres', 'configured', 2], ['mysql', 'unchanged', 1]]);
  t.is(changed[0]!.rule.pre[0]!.timeoutSeconds, 90);

  const table = await d.ctl(['rule', 'list']);
  t.regex(table.stdout, /^NAME\s+NAMESPACE\s+PRE\s+POST\s+GENERATION\s+UPDATED$/m);
  t.regex(table.stdout, /^mysql\s+shop\s+mysql, fsfreeze\s+-\s+1\s+/m);
  t.regex(table.stdout, /^postgres\s+-\s+psql, fsfreeze\s+-\s+2\s+/m);
  const listed = await d.ctlJson<{ rules: SnapshotRuleMessage[] }>(['rule', 'list']);
  t.deepEqual(listed.rules.map((r) => r.name), ['mysql', 'postgres']);

  const mysql = await d.ctlJson<SnapshotRuleMessage>(['rule', 'inspect', 'mysql']);
  t.like(mysql.pre[0], { name: 'read-lock', kind: 'exec', container: 'mysql', matchLabels: { app: 'mysql' }, background: true, timeoutSeconds: 30, onError: 'Fail', runIn: 'one' });
  const human = await d.ctl(['rule', 'inspect', 'mysql']);
  t.regex(human.stdout, /read-lock\s+exec in app=mysql\/mysql \(one\): mysql -N -B -n -e FLUSH TABLES WITH READ LOCK; SELECT 'READY'; DO SLEEP\(600\)\s+30s\s+Fail\s+background, ready at READY/);
  t.regex(human.stdout, /the fsfreeze is thawed right after the snapshot/);

  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, `${RULES.replace('name: postgres', 'name: other')}---\napiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata: {name: broken}\nspec:\n  pre: [{kind: command, command: [x], timeoutSeconds: -3}]\n`);
  const refused = await d.ctl(['rule', 'apply', '-f', bad]);
  t.is(refused.exitCode, 1);
  t.is(refused.stderr.trim(), `cairnctl: ${bad}: document 3 (rule "broken"): spec.pre[0].timeoutSeconds: must be a whole number of seconds between 1 and 3600, got -3 (INVALID_ARGUMENT)`);
  t.deepEqual((await d.ctlJson<{ rules: SnapshotRuleMessage[] }>(['rule', 'list'])).rules.map((r) => r.name), ['mysql', 'postgres'], 'nothing of the refused file was applied');

  const deleted = await d.ctl(['rule', 'delete', 'mysql']);
  t.is(deleted.stdout, 'snapshotrule/mysql deleted');
  const gone = await d.ctl(['rule', 'delete', 'mysql']);
  t.is(gone.exitCode, 1);
  t.is(gone.stderr.trim(), 'cairnctl: snapshot rule "mysql" not found: see cairnctl rule list, or create it with cairnctl rule apply -f FILE (NOT_FOUND)');
  const missing = await d.ctl(['rule', 'apply', '-f', join(dir, 'nope.yaml')]);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /cannot read .*nope\.yaml: ENOENT .*\(NOT_FOUND\)/);
});
