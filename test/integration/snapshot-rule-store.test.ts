/**
 * Snapshot rules in the cluster store, the same cases over the embedded store and a real
 * etcd: created, configured, unchanged (nothing written), listed, deleted (NOT_FOUND when
 * absent), concurrent applies settled by CAS, an unreadable document reported.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { Code } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import type { ClusterStore } from '../../src/cluster/store/cluster-store.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { parseRuleManifest } from '../../src/snapshot/rule-manifest.js';
import { ruleKey, SnapshotRuleStore } from '../../src/snapshot/rule-store.js';
import { expectCode, uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const log = silentLogger();
const missing = await etcdMissingReason();

const rule = (name: string, timeoutSeconds = 30): ReturnType<typeof parseRuleManifest>[number] => parseRuleManifest(`
apiVersion: cairn.dev/v1alpha1
kind: SnapshotRule
metadata: { name: ${name}, labels: { b: "2", a: "1" } }
spec:
  pre: [{ kind: command, command: [sync], timeoutSeconds: ${timeoutSeconds} }, { kind: fsfreeze }]
`)[0]!;

function cases(kind: string, open: () => Promise<ClusterStore>): void {
  const withStore = async (t: ExecutionContext): Promise<{ store: ClusterStore; rules: SnapshotRuleStore }> => {
    const store = await open();
    t.teardown(() => store.close());
    let clock = Date.parse('2026-01-01T00:00:00Z');
    return { store, rules: new SnapshotRuleStore(store, () => new Date((clock += 1000))) };
  };

  test(`${kind}: apply creates, then is unchanged, then configures; generations and times follow`, async (t) => {
    const { store, rules } = await withStore(t);
    const a = await rules.apply(rule('pg'));
    t.is(a.outcome, 'created');
    t.like(a.stored, { generation: 1, createdAt: '2026-01-01T00:00:01.000Z', updatedAt: '2026-01-01T00:00:01.000Z' });
    const revision = (await store.get(ruleKey('pg')))!.modRevision;
    // The same rule with its labels in another order is the same rule: nothing is written.
    const same = { ...rule('pg'), labels: { a: '1', b: '2' } };
    t.is((await rules.apply(same)).outcome, 'unchanged');
    t.is((await store.get(ruleKey('pg')))!.modRevision, revision);
    const c = await rules.apply(rule('pg', 45));
    t.is(c.outcome, 'configured');
    t.like(c.stored, { generation: 2, createdAt: '2026-01-01T00:00:01.000Z' });
    t.not(c.stored.updatedAt, c.stored.createdAt);
    const got = await rules.get('pg');
    t.is(got.rule.pre[0]!.timeoutSeconds, 45);
    t.is(got.generation, 2);
  });

  test(`${kind}: list sorts by name; get and delete of an absent rule are NOT_FOUND`, async (t) => {
    const { rules } = await withStore(t);
    await rules.apply(rule('zeta'));
    await rules.apply(rule('alpha'));
    t.deepEqual((await rules.list()).rules.map((r) => r.rule.name), ['alpha', 'zeta']);
    await rules.delete('zeta');
    t.deepEqual((await rules.list()).rules.map((r) => r.rule.name), ['alpha']);
    const e = await expectCode(t, rules.delete('zeta'), Code.NOT_FOUND);
    t.regex(e.message, /snapshot rule "zeta" not found: .*cairnctl rule apply -f FILE/);
    await expectCode(t, rules.get('zeta'), Code.NOT_FOUND);
    t.is(await rules.find('zeta'), undefined);
  });

  test(`${kind}: concurrent applies of different versions all land, one after another`, async (t) => {
    const { rules } = await withStore(t);
    const results = await Promise.all([10, 20, 30, 40].map((s) => rules.apply(rule('race', s))));
    t.is(results.filter((r) => r.outcome === 'created').length, 1);
    t.deepEqual(results.map((r) => r.stored.generation).sort(), [1, 2, 3, 4]);
    const final = await rules.get('race');
    t.is(final.generation, 4);
    const last = results.find((r) => r.stored.generation === 4)!;
    t.is(final.rule.pre[0]!.timeoutSeconds, last.stored.rule.pre[0]!.timeoutSeconds);
  });

  test(`${kind}: an unreadable document is listed apart, and apply replaces it`, async (t) => {
    const { store, rules } = await withStore(t);
    await store.txn({ guards: [], ops: [{ type: 'put', key: ruleKey('broken'), value: { rule: { kind: 'nope' }, generation: 1, createdAt: 'x', updatedAt: 'x' } }] });
    const listed = await rules.list();
    t.deepEqual(listed.rules, []);
    t.is(listed.unreadable.length, 1);
    t.is(listed.unreadable[0]!.code, Code.DATA_LOSS);
    t.is(listed.unreadable[0]!.details.key, ruleKey('broken'));
    await expectCode(t, rules.get('broken'), Code.DATA_LOSS);
    t.is((await rules.apply(rule('broken'))).outcome, 'configured');
    t.is((await rules.get('broken')).rule.name, 'broken');
  });
}

cases('embedded', async () => EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log }));

let etcd: EtcdProcess | undefined;
if (prerequisitesMet('snapshot rule store on etcd', missing)) {
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });
  cases('etcd', async () => new EtcdStore({ endpoints: [etcd!.endpoint], cluster: uniqueCluster(), callTimeoutMs: 3000, log }));
}
