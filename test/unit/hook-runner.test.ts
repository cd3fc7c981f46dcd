// The hook runner's guarantees with fake actions (test/helpers/fake-actions.ts): the order of
// pre, snapshot, release and post; post and thaw always run; timeouts kill; background
// sessions are held until after the snapshot; Continue goes on; the deadline; shutdown.
// The real command and fsfreeze kinds are exercised in node-actions.test.ts.
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { ExecTransport, type ExecClient, type ExecSession } from '../../src/snapshot/exec-transport.js';
import { HookRunner } from '../../src/snapshot/hook-runner.js';
import { validateSnapshotRule, type SnapshotRule } from '../../src/snapshot/snapshot-rule.js';
import { FakeFreezer, FakeTransport } from '../helpers/fake-actions.js';

const log = silentLogger();
const ctx = { volume: 'vol-a', namespace: 'db' };

function rule(pre: unknown[], post: unknown[] = []): SnapshotRule {
  return validateSnapshotRule({ apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'r' }, spec: { pre, post } });
}
const cmd = (command: string[], more: Record<string, unknown> = {}): Record<string, unknown> => ({ kind: 'command', command, ...more });

function setup(): { events: string[]; transport: FakeTransport; freezer: FakeFreezer; runner: HookRunner; snap: (value?: string) => () => Promise<string> } {
  const events: string[] = [];
  const transport = new FakeTransport(events);
  const freezer = new FakeFreezer(events);
  const runner = new HookRunner({ log, command: transport, freezer });
  const snap = (value = 'snap-1') => async (): Promise<string> => {
    events.push('snapshot start');
    await Promise.resolve();
    events.push('snapshot end');
    return value;
  };
  return { events, transport, freezer, runner, snap };
}

test('pre actions finish, then the snapshot, then the thaw, then post actions', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['ok', 'a']), { kind: 'fsfreeze' }], [cmd(['ok', 'b'])]), ctx, snap());
  t.deepEqual(events, [
    'start ok a@node-1', 'end ok a@node-1 0', 'freeze', 'snapshot start', 'snapshot end', 'thaw', 'start ok b@node-1', 'end ok b@node-1 0',
  ]);
  t.true(r.ok);
  t.deepEqual(r.snapshot.state === 'taken' && r.snapshot.value, 'snap-1');
  t.deepEqual(r.actions.map((o) => [o.action, o.phase, o.step, o.status, o.target]), [
    ['pre[0]', 'pre', 'run', 'succeeded', 'node-1'], ['pre[1]', 'pre', 'freeze', 'succeeded', '/staging/vol-a'],
    ['pre[1]', 'post', 'thaw', 'succeeded', '/staging/vol-a'], ['post[0]', 'post', 'run', 'succeeded', 'node-1'],
  ]);
});

test('a failed pre action with Fail: no snapshot, later pre actions skipped, thaw and post still run', async (t) => {
  const { events, runner, snap, freezer } = setup();
  const r = await runner.runWithRule(rule([{ kind: 'fsfreeze' }, cmd(['fail']), cmd(['ok', 'never'])], [cmd(['ok', 'post'])]), ctx, snap());
  t.false(events.includes('snapshot start'));
  t.false(events.includes('start ok never@node-1'));
  t.deepEqual(events.slice(-3), ['thaw', 'start ok post@node-1', 'end ok post@node-1 0']);
  t.false(freezer.frozen);
  t.false(r.ok);
  t.is(r.snapshot.state, 'skipped');
  t.is(r.error?.code, Code.FAILED_PRECONDITION);
  t.is(r.error?.message, 'pre[1] (fail) on node-1 failed with exit code 3: boom');
  const failed = r.actions.find((o) => o.action === 'pre[1]')!;
  t.like(failed, { status: 'failed', exitCode: 3, stderrTail: 'boom\n', error: { code: 'FAILED_PRECONDITION', message: r.error!.message } });
  t.is(r.actions.find((o) => o.action === 'pre[2]')?.status, 'skipped');
});

test('a failed pre action with Continue is recorded and the snapshot is taken', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['fail'], { onError: 'Continue' }), cmd(['ok'])]), ctx, snap());
  t.true(events.includes('snapshot end'));
  t.true(r.ok);
  t.deepEqual(r.actions.map((o) => o.status), ['failed', 'succeeded']);
});

test('a failed snapshot still runs the thaw and the post actions, and is the run\'s error', async (t) => {
  const { events, runner } = setup();
  const r = await runner.runWithRule(rule([{ kind: 'fsfreeze' }], [cmd(['ok', 'post'])]), ctx, async () => {
    events.push('snapshot start');
    throw new StorageError(Code.UNAVAILABLE, 'replica gone');
  });
  t.deepEqual(events, ['freeze', 'snapshot start', 'thaw', 'start ok post@node-1', 'end ok post@node-1 0']);
  t.false(r.ok);
  t.is(r.snapshot.state, 'failed');
  t.is(r.error?.message, 'replica gone');
});

test('a failing post action does not stop the others; with Fail it fails the run, with Continue it does not', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['ok'])], [cmd(['fail']), cmd(['ok', 'after'])]), ctx, snap());
  t.true(events.includes('end ok after@node-1 0'));
  t.false(r.ok);
  t.is(r.snapshot.state, 'taken');
  t.is(r.error?.code, Code.FAILED_PRECONDITION);
  const r2 = await runner.runWithRule(rule([cmd(['ok'])], [cmd(['fail'], { onError: 'Continue' })]), ctx, snap());
  t.true(r2.ok);
  t.is(r2.actions[1]!.status, 'failed');
});

test('a pre action past its timeout is killed and fails: no snapshot, post runs', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['hang'], { timeoutSeconds: 1 })], [cmd(['ok', 'post'])]), ctx, snap());
  t.deepEqual(events, ['start hang@node-1', 'end hang@node-1 SIGKILL', 'start ok post@node-1', 'end ok post@node-1 0']);
  t.is(r.error?.code, Code.DEADLINE_EXCEEDED);
  t.is(r.error?.message, 'pre[0] (hang) on node-1 did not finish within its timeout of 1 s: killed');
  t.like(r.actions[0], { status: 'failed', signal: 'SIGKILL', exitCode: null });
});

test('a session whose kill does not take is given up on, and post still runs', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['unkillable'], { timeoutSeconds: 1 })], [cmd(['ok', 'post'])]), ctx, snap());
  t.deepEqual(events, ['start unkillable@node-1', 'start ok post@node-1', 'end ok post@node-1 0']);
  t.is(r.error?.code, Code.DEADLINE_EXCEEDED);
  t.like(r.actions[0], { status: 'failed', signal: 'SIGKILL' });
});

test('a background action is ready at its READY line, held through the snapshot, and stopped before post', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['bg'], { name: 'lock', background: true }), cmd(['ok', 'next'])], [cmd(['ok', 'post'])]), ctx, snap());
  t.deepEqual(events, [
    'start lock@node-1', 'start ok next@node-1', 'end ok next@node-1 0', 'snapshot start', 'snapshot end',
    'stop lock@node-1', 'end lock@node-1 SIGTERM', 'start ok post@node-1', 'end ok post@node-1 0',
  ]);
  t.true(r.ok);
  const hold = r.actions.find((o) => o.action === 'lock')!;
  t.like(hold, { step: 'hold', status: 'succeeded', signal: 'SIGTERM', stdoutTail: 'starting\nREADY\n' });
  t.is(typeof hold.readyMs, 'number');
});

test('a background action without a READY line is ready after readySeconds', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['bg-quiet'], { background: true, readySeconds: 1, timeoutSeconds: 5 })]), ctx, snap());
  t.deepEqual(events, ['start bg-quiet@node-1', 'snapshot start', 'snapshot end', 'stop bg-quiet@node-1', 'end bg-quiet@node-1 SIGTERM']);
  t.true(r.ok);
});

test('a background action that exits before the snapshot lost its hold: Fail means no snapshot', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['bg'], { name: 'lock', background: true }), cmd(['end-bg'])], [cmd(['ok', 'post'])]), ctx, snap());
  t.false(events.includes('snapshot start'));
  t.true(events.includes('end ok post@node-1 0'));
  t.is(r.error?.code, Code.ABORTED);
  t.is(r.error?.message, 'lock on node-1 exited before the snapshot: what it held (e.g. a lock) was released early');
  t.like(r.actions.find((o) => o.action === 'lock'), { status: 'failed', exitCode: 0, error: { code: 'ABORTED' } });
});

test('a background action that never becomes ready times out and is killed', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([cmd(['bg-quiet'], { background: true, timeoutSeconds: 1 })]), ctx, snap());
  t.deepEqual(events, ['start bg-quiet@node-1', 'end bg-quiet@node-1 SIGKILL']);
  t.is(r.error?.message, 'pre[0] (bg-quiet) on node-1 did not become ready within its timeout of 1 s: killed');
});

test('an explicit post fsfreeze thaws at its place among the post actions', async (t) => {
  const { events, runner, snap } = setup();
  await runner.runWithRule(rule([{ kind: 'fsfreeze' }], [cmd(['ok', 'first']), { kind: 'fsfreeze' }, cmd(['ok', 'last'])]), ctx, snap());
  t.deepEqual(events, ['freeze', 'snapshot start', 'snapshot end', 'start ok first@node-1', 'end ok first@node-1 0', 'thaw', 'start ok last@node-1', 'end ok last@node-1 0']);
});

test('the run\'s deadline kills the pre action in progress; post still runs', async (t) => {
  const { events, runner, snap } = setup();
  const r = await runner.runWithRule(rule([{ kind: 'fsfreeze' }, cmd(['hang'])], [cmd(['ok', 'post'])]), ctx, snap(), { deadlineMs: 200 });
  t.deepEqual(events, ['freeze', 'start hang@node-1', 'end hang@node-1 SIGKILL', 'thaw', 'start ok post@node-1', 'end ok post@node-1 0']);
  t.is(r.error?.code, Code.DEADLINE_EXCEEDED);
  t.is(r.error?.message, 'pre[1] (hang) on node-1 was killed: the rule\'s pre actions and snapshot did not finish within its deadline of 200 ms');
});

test('a snapshot that outlives the deadline and its grace: post runs anyway, the late snapshot is handed back', async (t) => {
  const { events, runner } = setup();
  let finishSnapshot!: (v: string) => void;
  let seenSignal: AbortSignal | undefined;
  const late = new Promise<string>((resolve) => {
    void runner.runWithRule(rule([{ kind: 'fsfreeze' }], [cmd(['ok', 'post'])]), ctx, (signal) => {
      seenSignal = signal;
      events.push('snapshot start');
      return new Promise<string>((r) => { finishSnapshot = r; });
    }, { deadlineMs: 100, abortGraceMs: 100, onLateSnapshot: resolve }).then((r) => {
      events.push(`run ended ${r.snapshot.state} ${r.error ? Code[r.error.code] : ''}`);
      finishSnapshot('late-snap');
    });
  });
  t.is(await late, 'late-snap');
  t.true(seenSignal?.aborted);
  t.deepEqual(events, ['freeze', 'snapshot start', 'thaw', 'start ok post@node-1', 'end ok post@node-1 0', 'run ended failed DEADLINE_EXCEEDED']);
});

test('a freeze that completes after its timeout is thawed at once', async (t) => {
  const { events, runner, snap, freezer } = setup();
  let release!: () => void;
  freezer.gate = new Promise((r) => { release = r; });
  const r = await runner.runWithRule(rule([{ kind: 'fsfreeze', timeoutSeconds: 1 }]), ctx, snap());
  t.is(r.error?.code, Code.DEADLINE_EXCEEDED);
  t.false(events.includes('snapshot start'));
  release();
  await freezer.thawed;
  t.deepEqual(events, ['freeze', 'thaw']);
  t.false(freezer.frozen);
});

test('shutdown mid-rule thaws at once, kills the pre action, and lets post run', async (t) => {
  const { events, runner, snap, freezer } = setup();
  const run = runner.runWithRule(rule([{ kind: 'fsfreeze' }, cmd(['gate', 'never'])], [cmd(['ok', 'post'])]), ctx, snap());
  while (!events.includes('start gate never@node-1')) await new Promise((r) => setImmediate(r));
  await runner.shutdown();
  const r = await run;
  t.false(freezer.frozen);
  t.is(events.filter((e) => e === 'thaw').length, 1);
  t.true(events.indexOf('thaw') < events.indexOf('start ok post@node-1'));
  t.is(r.error?.code, Code.UNAVAILABLE);
  t.is(r.error?.message, 'pre[1] (gate never) on node-1 was killed: cairnd is shutting down');
  t.is(r.snapshot.state, 'skipped');
  const after = await runner.runWithRule(rule([cmd(['ok'])]), ctx, snap());
  t.is(after.error?.code, Code.UNAVAILABLE);
  t.deepEqual(after.actions, [], 'nothing runs once cairnd is shutting down');
});

test('exec without a Kubernetes client fails FAILED_PRECONDITION, handled per onError', async (t) => {
  const { runner, snap } = setup();
  const exec = { kind: 'exec', command: ['true'], selector: { matchLabels: { app: 'db' } } };
  const r = await runner.runWithRule(rule([exec]), ctx, snap());
  t.is(r.error?.code, Code.FAILED_PRECONDITION);
  t.is(r.error?.message, 'exec actions need the Kubernetes API: cairnd runs outside Kubernetes');
  const r2 = await runner.runWithRule(rule([{ ...exec, onError: 'Continue' }]), ctx, snap());
  t.true(r2.ok);
});

/** A pods/exec client whose pods run fake commands (the FakeTransport's words). */
function fakeExecClient(pods: Record<string, string>, events: string[]): ExecClient {
  return {
    listPods: async (_namespace, labels) => Object.entries(pods).filter(([, app]) => labels.app === app).map(([pod]) => pod),
    openExec: (namespace, pod, container, command): ExecSession => {
      events.push(`exec ${namespace}/${pod}/${container || '-'} ${command.join(' ')}`);
      const failing = command[0] === 'fail';
      async function* output(): AsyncGenerator<{ stream: 'stdout' | 'stderr'; data: Buffer }> {
        yield { stream: failing ? 'stderr' : 'stdout', data: Buffer.from(`${pod}\n`) };
      }
      return { output: output(), done: Promise.resolve({ exitCode: failing ? 1 : 0 }), close: async () => undefined };
    },
  };
}

test('exec through a pods/exec client: runIn one takes the first pod by name, all takes every pod', async (t) => {
  const events: string[] = [];
  const runner = new HookRunner({ log, exec: new ExecTransport(fakeExecClient({ 'db-1': 'db', 'db-0': 'db', web: 'web' }, events)) });
  const exec = { kind: 'exec', container: 'mysql', command: ['flush'], selector: { matchLabels: { app: 'db' } } };
  const one = await runner.runWithRule(rule([exec]), ctx, async () => 's');
  t.deepEqual(events, ['exec db/db-0/mysql flush']);
  t.like(one.actions[0], { target: 'db-0', stdoutTail: 'db-0\n', status: 'succeeded', exitCode: 0 });
  events.length = 0;
  const all = await runner.runWithRule(rule([{ ...exec, runIn: 'all', command: ['fail'] }]), ctx, async () => 's');
  t.deepEqual(events.sort(), ['exec db/db-0/mysql fail', 'exec db/db-1/mysql fail']);
  t.deepEqual(all.actions.map((o) => [o.target, o.exitCode, o.stderrTail]), [['db-0', 1, 'db-0\n'], ['db-1', 1, 'db-1\n']]);
  t.is(all.snapshot.state, 'skipped');
  const none = await runner.runWithRule(rule([{ ...exec, selector: { matchLabels: { app: 'cache' } } }]), ctx, async () => 's');
  t.is(none.error?.message, 'no pod in namespace db matches app=cache: check the rule\'s selector.matchLabels and that the application runs');
  const noNs = await runner.runWithRule(rule([exec]), { volume: 'vol-a' }, async () => 's');
  t.is(noNs.error?.code, Code.FAILED_PRECONDITION);
});
