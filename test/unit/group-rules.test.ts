// Group snapshots under a rule (src/snapshot/group-rules.ts) with fake action kinds
// (test/helpers/fake-actions.ts) and a fake group coordinator that records its phases as events
// in the same list: the rule runs once per member around the one cut, a pre failure on one
// member stops the group before any pause, a coordinator failure keeps its code, post actions
// and thaws always run for every member, and the group document keeps each member's outcomes.
// The real kinds and coordinator run in test/integration/group-rule.test.ts.
import test, { type ExecutionContext } from 'ava';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import type { VolumeView } from '../../src/cluster/volume-views.js';
import { Code, StorageError } from '../../src/common/errors.js';
import { KeyedLock } from '../../src/common/keyed-lock.js';
import type { SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { CreateGroupInput, GroupCoordinator } from '../../src/snapshot/group-coordinator.js';
import { createGroupDoc, getGroupDoc, type GroupSnapshotDoc } from '../../src/snapshot/group-doc.js';
import { GroupRuleSnapshots } from '../../src/snapshot/group-rules.js';
import { HookRunner } from '../../src/snapshot/hook-runner.js';
import { SnapshotRuleStore } from '../../src/snapshot/rule-store.js';
import { validateSnapshotRule } from '../../src/snapshot/snapshot-rule.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { FakeFreezer, FakeTransport } from '../helpers/fake-actions.js';

const log = silentLogger();
const VOLUMES = ['a', 'b'];

/**
 * The coordinator's phases as events: 'pre step' (then it waits for the pre hook), 'pause'
 * (then the paused hook), 'cut', 'resume' (then the resumed hook), and a ready group document
 * written at the end; calls for one name run one after another, and one that finds the
 * document returns it without a phase (as the real coordinator does). The pause
 * and the cut are I/O (a turn of the event loop), as they are for real: whatever the hooks let
 * run meanwhile runs and shows in the events. A pre hook that fails fails the group as the real
 * coordinator's pre step does (its own error, the hook's message); `failCut` fails the cut.
 */
class FakeGroups {
  failCut: StorageError | undefined;
  private readonly locks = new KeyedLock();

  constructor(private readonly store: EmbeddedStore, private readonly events: string[], private readonly onPreStep: () => void) {}

  create(input: CreateGroupInput): Promise<GroupSnapshotDoc> {
    return this.locks.run(input.name, () => this.take(input));
  }

  private async take({ name, volumes, hooks }: CreateGroupInput): Promise<GroupSnapshotDoc> {
    const existing = await getGroupDoc(this.store, name);
    if (existing) return existing.doc;
    const group: GroupSnapshotDoc = {
      id: `grp-${name}`, name, state: 'creating', readyToUse: false, createdAt: new Date().toISOString(),
      members: volumes.map((v) => ({ volumeId: `vol-${v}` as VolumeId, volumeName: v, snapshotId: `snap-${v}` as SnapshotId, snapshotName: `${name}-${v}`, pauseUs: 5, drainMs: 0 })),
      phases: { preMs: 0, pauseMs: 0, cutMs: 0, resumeMs: 0, finishMs: 0, totalMs: 0 },
    };
    this.events.push('pre step');
    this.onPreStep();
    try {
      await hooks?.pre?.(group);
    } catch (err) {
      throw new StorageError(err instanceof StorageError ? err.code : Code.INTERNAL, `group snapshot "${name}": the pre step failed: ${(err as Error).message}`, { cause: err });
    }
    this.events.push('pause');
    await new Promise(setImmediate);
    await hooks?.paused?.(group);
    this.events.push('cut');
    await new Promise(setImmediate);
    if (this.failCut) throw this.failCut;
    this.events.push('resume');
    hooks?.resumed?.(group);
    const ready: GroupSnapshotDoc = { ...group, state: 'ready', readyToUse: true };
    await createGroupDoc(this.store, ready);
    return ready;
  }

  delete(name: string): Promise<void> {
    this.events.push(`delete ${name}`);
    return Promise.resolve();
  }
}

interface Setup { events: string[]; store: EmbeddedStore; groups: FakeGroups; group: GroupRuleSnapshots }

async function setup(t: ExecutionContext): Promise<Setup> {
  const store = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log });
  t.teardown(() => store.close());
  const events: string[] = [];
  const rules = new SnapshotRuleStore(store);
  const rule = (name: string, pre: unknown[], post: unknown[]) => validateSnapshotRule({ apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name }, spec: { pre, post } });
  const after = [{ name: 'after', kind: 'command', command: ['ok'] }];
  // Every member's flush waits until the coordinator has started its pre step: it cannot end early by luck.
  await rules.apply(rule('flush', [{ name: 'flush', kind: 'command', command: ['gate', 'pre'] }, { kind: 'fsfreeze' }], after));
  await rules.apply(rule('check-b', [{ kind: 'fsfreeze' }, { name: 'check', kind: 'command', command: ['fail-on', 'b'], onError: 'Fail' }], after));
  // Each member's command actions run on its engine's node (node-a, node-b): the events tell the members apart.
  const transport = new FakeTransport(events, (ctx) => [ctx.engineNode!]);
  const runner = new HookRunner({ log, command: transport, freezer: new FakeFreezer(events, true) });
  const groups = new FakeGroups(store, events, () => transport.gates.open('pre'));
  const group = new GroupRuleSnapshots({
    nodeName: 'controller', store, rules, log, runner, groups: groups as unknown as GroupCoordinator,
    volumes: { get: (name: string) => Promise.resolve({ id: `vol-${name}`, name, engineNode: `node-${name}` } as unknown as VolumeView) },
  });
  return { events, store, groups, group };
}

/** What every member's release and post phase leaves in the events. */
const released = VOLUMES.flatMap((v) => [`thaw ${v}`, `start after@node-${v}`, `end after@node-${v} 0`]);

/** The events of `wanted` that did not happen. */
const missing = (events: string[], wanted: string[]): string[] => wanted.filter((e) => !events.includes(e));

async function errorOf(p: Promise<unknown>): Promise<StorageError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  if (!(err instanceof StorageError)) throw new Error(`expected a StorageError, got ${String(err)}`);
  return err;
}

test('every member\'s pre actions end before the pause; no thaw or post action starts before the resume; every member\'s post runs', async (t) => {
  const { events, group } = await setup(t);
  await group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' });
  t.is(events.filter((e) => e === 'pause').length, 1);
  const beforePause = events.slice(0, events.indexOf('pause'));
  t.deepEqual(missing(beforePause, VOLUMES.flatMap((v) => [`end flush@node-${v} 0`, `freeze ${v}`])), [], 'every member\'s pre actions ended before the pause');
  const beforeResume = events.slice(0, events.indexOf('resume'));
  t.true(events.includes('resume'));
  t.deepEqual(beforeResume.filter((e) => e.startsWith('thaw') || e.includes('after@')), [], 'no member released before every member was cut and resumed');
  t.deepEqual(missing(events, released), [], 'every member thawed and ran its post action');
});

test('a pre action failing with Fail on one member: no pause, FAILED_PRECONDITION naming the action and the member, every member thawed and its post run', async (t) => {
  const { events, store, group } = await setup(t);
  const err = await errorOf(group.create({ name: 'g1', volumes: VOLUMES, rule: 'check-b' }));
  t.is(Code[err.code], 'FAILED_PRECONDITION');
  t.regex(err.message, /^group snapshot "g1" not taken: rule "check-b" stopped at check for volume "b": /);
  t.like(err.details, { groupSnapshot: 'g1', rule: 'check-b', volume: 'b' });
  t.false(events.includes('pause'), 'the group was never paused');
  t.deepEqual(missing(events, released), [], 'a (frozen, waiting for the cut) and b were both thawed and ran their post action');
  t.is(await getGroupDoc(store, 'g1'), undefined);
});

test('the coordinator failing after the pause: its code and message, every member thawed and its post run', async (t) => {
  const { events, groups, group } = await setup(t);
  groups.failCut = new StorageError(Code.UNAVAILABLE, 'group snapshot: the cut failed for volume "b" (node-b is down); every engine resumed and no member snapshot is kept');
  const err = await errorOf(group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' }));
  t.is(Code[err.code], 'UNAVAILABLE');
  t.true(err.message.startsWith(groups.failCut.message), err.message);
  t.regex(err.message, /\(rule "flush": post actions and thaws ran: 2 succeeded, 0 failed; post actions and thaws ran: 2 succeeded, 0 failed\)$/);
  t.true(events.includes('pause'));
  t.deepEqual(missing(events, released), [], 'every member thawed and ran its post action');
});

test('a group taken under a rule: its document records each member\'s outcomes, each action with its status, target and duration', async (t) => {
  const { store, group } = await setup(t);
  const returned = await group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' });
  const stored = (await getGroupDoc(store, 'g1'))!.doc;
  t.deepEqual(returned, stored);
  const expected = (v: string): string[] => [
    `flush run succeeded node-${v}`, `pre[1] freeze succeeded /staging/${v}`, `pre[1] thaw succeeded /staging/${v}`, `after run succeeded node-${v}`,
  ];
  for (const m of stored.members) {
    t.like(m.rule, { name: 'flush', ok: true }, m.volumeName);
    t.deepEqual(m.rule?.actions.map((a) => `${a.action} ${a.step} ${a.status} ${a.target}`), expected(m.volumeName));
    t.true(m.rule!.actions.every((a) => Number.isFinite(a.durationMs) && a.durationMs >= 0), 'every action has its duration');
  }
  t.deepEqual(stored.members.map((m) => m.volumeName), VOLUMES);
});

test('the same name again: the rule does not run again and the existing group is returned', async (t) => {
  const { events, group } = await setup(t);
  const first = await group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' });
  events.length = 0;
  const again = await group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' });
  t.deepEqual(events, [], 'no action and no coordinator phase ran');
  t.deepEqual(again, first);
});

test('the same name twice at once (a retried call): the rule runs once for each member, both calls get the group, and it is kept', async (t) => {
  const { events, store, group } = await setup(t);
  const [first, second] = await Promise.all([0, 1].map(() => group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' })));
  t.deepEqual(second, first);
  t.deepEqual(VOLUMES.map((v) => events.filter((e) => e === `freeze ${v}`).length), [1, 1], 'each member frozen once');
  t.like((await getGroupDoc(store, 'g1'))?.doc, { id: first!.id, state: 'ready' });
  t.false(events.includes('delete g1'));
});

test('a group of that name taken meanwhile without the rule: returned as it is, not deleted, every member released', async (t) => {
  const { events, store, groups, group } = await setup(t);
  const [plain, ruled] = await Promise.all([
    groups.create({ name: 'g1', volumes: VOLUMES }),
    group.create({ name: 'g1', volumes: VOLUMES, rule: 'flush' }),
  ]);
  t.deepEqual(ruled, plain);
  t.like((await getGroupDoc(store, 'g1'))?.doc, { id: plain.id, state: 'ready' });
  t.false(events.includes('delete g1'));
  t.deepEqual(missing(events, released), [], 'every member thawed and ran its post action');
});
