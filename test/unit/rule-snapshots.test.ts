// Snapshots under a rule (src/snapshot/rule-snapshots.ts) over an in-memory cluster store,
// a snapshot service that writes real snapshot documents, and fake action kinds
// (test/helpers/fake-actions.ts): what runs, what is refused before anything runs, what the
// caller gets and what the document keeps. The real kinds run in
// test/integration/snapshot-rule.test.ts.
import test, { type ExecutionContext } from 'ava';
import { createSnapshotDoc, getSnapshotDoc } from '../../src/cluster/snapshot-doc.js';
import type { CreateSnapshotInput, SnapshotService, SnapshotView } from '../../src/cluster/snapshot-types.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import type { VolumeView } from '../../src/cluster/volume-views.js';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { HookRunner } from '../../src/snapshot/hook-runner.js';
import { RuleSnapshots, type RuleSnapshotsOptions } from '../../src/snapshot/rule-snapshots.js';
import { SnapshotRuleStore } from '../../src/snapshot/rule-store.js';
import type { ActionTransport, RuleContext } from '../../src/snapshot/action-transport.js';
import { validateSnapshotRule, type RuleAction } from '../../src/snapshot/snapshot-rule.js';
import type { StagedVolumeRecord } from '../../src/store/staged-volume-record.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { FakeFreezer, FakeTransport } from '../helpers/fake-actions.js';

const log = silentLogger();

/** A snapshot service that writes a ready document per create (and fails when told to). */
class DocSnapshots implements Pick<SnapshotService, 'create' | 'get' | 'delete'> {
  created: string[] = [];
  failWith: StorageError | undefined;
  constructor(private readonly store: EmbeddedStore, private readonly events: string[]) {}

  async create(input: CreateSnapshotInput): Promise<SnapshotView> {
    const existing = await getSnapshotDoc(this.store, input.name);
    if (existing) return { ...existing.doc, copies: [] };
    this.events.push('snapshot');
    if (this.failWith) throw this.failWith;
    const doc = {
      id: `snap-${input.name}` as SnapshotId, name: input.name, sourceVolumeId: 'vol-1' as VolumeId, sourceVolumeName: 'db', sizeBytes: 1 << 20,
      createdAt: new Date().toISOString(), state: 'ready' as const, readyToUse: true, copiesWanted: 1,
      copies: [{ nodeId: 'node-a' as NodeId, replicaId: 'rep-1' as ReplicaId }], pauseUs: 10,
    };
    await createSnapshotDoc(this.store, doc);
    this.created.push(input.name);
    return { ...doc, copies: doc.copies.map((c) => ({ ...c, nodeUp: true })) };
  }

  async get(name: string): Promise<SnapshotView> {
    const found = await getSnapshotDoc(this.store, name);
    if (!found) throw new StorageError(Code.NOT_FOUND, `snapshot "${name}" not found`);
    return { ...found.doc, copies: [] };
  }

  delete(): Promise<void> {
    return Promise.resolve();
  }
}

const staged: StagedVolumeRecord = {
  volume: 'db', volumeId: 'vol-1', state: 'staged', stagingPath: '/staging/db', devicePath: '/dev/nbd0', attachMethod: 'kernel',
  accessType: 'mount', fsType: 'ext4', readonly: false, updatedAt: new Date().toISOString(),
} as unknown as StagedVolumeRecord;

interface Setup { events: string[]; snapshots: DocSnapshots; store: EmbeddedStore; make: (o?: Partial<RuleSnapshotsOptions>) => RuleSnapshots }

async function setup(t: ExecutionContext): Promise<Setup> {
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log });
  t.teardown(() => store.close());
  const events: string[] = [];
  const rules = new SnapshotRuleStore(store);
  const rule = (name: string, pre: unknown[], post: unknown[] = []) => validateSnapshotRule({ apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name }, spec: { pre, post } });
  await rules.apply(rule('ok', [{ kind: 'command', command: ['ok', 'flush'] }, { kind: 'fsfreeze' }]));
  await rules.apply(rule('pre-fails', [{ kind: 'fsfreeze' }, { name: 'flush', kind: 'command', command: ['fail'] }], [{ kind: 'command', command: ['ok', 'after'] }]));
  await rules.apply(rule('post-fails', [{ kind: 'command', command: ['ok', 'flush'] }], [{ name: 'notify', kind: 'command', command: ['fail'] }]));
  const snapshots = new DocSnapshots(store, events);
  const runner = new HookRunner({ log, command: new FakeTransport(events), freezer: new FakeFreezer(events) });
  const volume = { id: 'vol-1', name: 'db', engineNode: 'node-b' } as unknown as VolumeView;
  const make = (o: Partial<RuleSnapshotsOptions> = {}): RuleSnapshots => new RuleSnapshots({
    nodeName: 'node-a', store, snapshots: snapshots as unknown as SnapshotService, rules, log, runner, staged: (v) => (v === 'db' ? staged : undefined),
    volumes: { get: (name: string) => (name === 'db' ? Promise.resolve(volume) : Promise.reject(new StorageError(Code.NOT_FOUND, `volume "${name}" not found`))) },
    ...o,
  });
  return { events, snapshots, store, make };
}

async function codeOf(p: Promise<unknown>): Promise<[string, string]> {
  try {
    await p;
    return ['OK', ''];
  } catch (err) {
    return [err instanceof StorageError ? Code[err.code] : 'NOT A STORAGE ERROR', (err as Error).message];
  }
}

test('the rule runs around the snapshot, and the document keeps its outcome', async (t) => {
  const { events, store, make } = await setup(t);
  const view = await make().create({ name: 's1', volume: 'db', rule: 'ok' });
  t.deepEqual(events, ['start ok flush@node-1', 'end ok flush@node-1 0', 'freeze', 'snapshot', 'thaw']);
  t.like(view.rule, { name: 'ok', ok: true });
  const stored = (await getSnapshotDoc(store, 's1'))!.doc;
  t.deepEqual(stored.rule?.actions.map((a) => `${a.action} ${a.step} ${a.status}`), ['pre[0] run succeeded', 'pre[1] freeze succeeded', 'pre[1] thaw succeeded']);
  t.is(stored.rule?.actions[0]?.exitCode, 0);
});

test('the same name again returns the snapshot without running the rule', async (t) => {
  const { events, make } = await setup(t);
  const rs = make();
  await rs.create({ name: 's1', volume: 'db', rule: 'ok' });
  events.length = 0;
  const again = await rs.create({ name: 's1', volume: 'db', rule: 'ok' });
  t.deepEqual(events, []);
  t.like(again.rule, { name: 'ok', ok: true });
});

test('a failed pre action: FAILED_PRECONDITION naming it, no snapshot, the post action ran', async (t) => {
  const { events, snapshots, make } = await setup(t);
  const [code, message] = await codeOf(make().create({ name: 's1', volume: 'db', rule: 'pre-fails' }));
  t.is(code, 'FAILED_PRECONDITION');
  t.regex(message, /snapshot "s1" not taken: rule "pre-fails" stopped at flush/);
  t.regex(message, /post actions and thaws ran: 2 succeeded, 0 failed/);
  t.deepEqual(snapshots.created, []);
  t.deepEqual(events.slice(-3), ['thaw', 'start ok after@node-1', 'end ok after@node-1 0']);
});

test('a failed post action: the snapshot is kept and its record says not ok, with the exit code', async (t) => {
  const { store, make } = await setup(t);
  const view = await make().create({ name: 's1', volume: 'db', rule: 'post-fails' });
  t.like(view.rule, { name: 'post-fails', ok: false });
  const notify = (await getSnapshotDoc(store, 's1'))!.doc.rule!.actions.find((a) => a.action === 'notify');
  t.like(notify, { status: 'failed', exitCode: 3, outputTail: 'boom\n' });
});

test('a snapshot that fails under the rule keeps its code', async (t) => {
  const { snapshots, make } = await setup(t);
  snapshots.failWith = new StorageError(Code.UNAVAILABLE, 'the engine\'s node is down');
  const [code, message] = await codeOf(make().create({ name: 's1', volume: 'db', rule: 'ok' }));
  t.is(code, 'UNAVAILABLE');
  t.regex(message, /node is down/);
});

test('refused before anything runs: an unknown rule or volume, a volume staged nowhere (here or elsewhere), a cairnd without a runner', async (t) => {
  const { events, make } = await setup(t);
  t.is((await codeOf(make().create({ name: 's1', volume: 'db', rule: 'nope' })))[0], 'NOT_FOUND');
  t.is((await codeOf(make().create({ name: 's1', volume: 'gone', rule: 'ok' })))[0], 'NOT_FOUND');
  const stagedNowhere = { id: 'vol-1', name: 'db' } as unknown as VolumeView;
  const nowhere = (o: Partial<RuleSnapshotsOptions>): RuleSnapshots => make({ ...o, volumes: { get: () => Promise.resolve(stagedNowhere) } });
  const [here, why] = await codeOf(nowhere({ staged: () => undefined }).create({ name: 's1', volume: 'db', rule: 'ok' }));
  t.is(here, 'FAILED_PRECONDITION');
  t.regex(why, /not staged on node node-a/);
  const [controller, message] = await codeOf(nowhere({ staged: undefined }).create({ name: 's1', volume: 'db', rule: 'ok' }));
  t.is(controller, 'FAILED_PRECONDITION');
  t.regex(message, /not staged on any node/);
  t.is((await codeOf(make({ runner: undefined }).create({ name: 's1', volume: 'db', rule: 'ok' })))[0], 'FAILED_PRECONDITION');
  t.deepEqual(events, []);
});

test('a volume staged on another node (its engine node): the rule runs, its node actions go there', async (t) => {
  const { events, make } = await setup(t);
  const view = await make({ staged: () => undefined }).create({ name: 's1', volume: 'db', rule: 'ok' });
  t.deepEqual(events, ['start ok flush@node-1', 'end ok flush@node-1 0', 'freeze', 'snapshot', 'thaw']);
  t.like(view.rule, { name: 'ok', ok: true });
});

test('a controller-role cairnd in Kubernetes (no staging) runs a rule of exec actions in the claim\'s namespace; a runner without the command kind fails that action', async (t) => {
  const { events, store, make } = await setup(t);
  const rules = new SnapshotRuleStore(store);
  await rules.apply(validateSnapshotRule({
    apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'in-pod' },
    spec: { pre: [{ name: 'flush', kind: 'exec', selector: { matchLabels: { app: 'db' } }, command: ['ok', 'flush'] }] },
  }));
  const namespaces: (string | undefined)[] = [];
  const fake = new FakeTransport(events, ['db-0']);
  const exec: ActionTransport = {
    targets: (a: RuleAction, ctx: RuleContext) => {
      namespaces.push(ctx.namespace);
      return fake.targets(a, ctx);
    },
    start: (...args) => fake.start(...args),
  };
  const controller = make({ runner: new HookRunner({ log, exec }), staged: undefined });
  const view = await controller.create({ name: 's1', volume: 'db', rule: 'in-pod', namespace: 'shop' });
  t.deepEqual(events, ['start flush@db-0', 'end flush@db-0 0', 'snapshot']);
  t.deepEqual(namespaces, ['shop'], 'pods are selected in the claim\'s namespace');
  t.like(view.rule, { name: 'in-pod', ok: true });
  t.is(view.rule?.actions[0]?.target, 'db-0');
  events.length = 0;
  const [code, message] = await codeOf(controller.create({ name: 's2', volume: 'db', rule: 'ok' }));
  t.is(code, 'FAILED_PRECONDITION');
  t.regex(message, /stopped at pre\[0\]: command actions/);
  t.deepEqual(events, []);
});
