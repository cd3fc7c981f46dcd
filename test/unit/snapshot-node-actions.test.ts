// The node-side kinds for real: `command` runs processes (its environment, exit codes, a
// timeout killing the whole process group, a background session held until after the
// snapshot) and `fsfreeze` freezes an ext4 filesystem on a loop device (a write waits until
// the thaw; a failed pre action and a shutdown still thaw). Without root or loop devices:
// skipped with the reason, or failed under CI=true.
import test from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code } from '../../src/common/errors.js';
import type { VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { fsFreeze, fsThaw } from '../../src/native/index.js';
import { FreezeJournal } from '../../src/snapshot/freeze-journal.js';
import { HookRunner } from '../../src/snapshot/hook-runner.js';
import { NodeCommandTransport, NodeFsFreezer, type NodeActionsOptions } from '../../src/snapshot/node-actions.js';
import { validateSnapshotRule, type SnapshotRule } from '../../src/snapshot/snapshot-rule.js';
import type { StagedVolumeRecord } from '../../src/store/staged-volume-record.js';
import { loopFsUnavailable, makeLoopFs, type LoopFs } from '../helpers/loop-fs.js';
import { requiring } from '../helpers/prereq.js';

const log = silentLogger();
const ext4Missing = await loopFsUnavailable('ext4');
const fsTest = requiring(ext4Missing, test.serial);

let fs: LoopFs | undefined;
if (ext4Missing === null) {
  test.before(async () => {
    fs = await makeLoopFs('ext4', 64 * 1024 * 1024);
  });
  test.after.always(async () => {
    await fs?.dispose();
  });
}

function staged(stagingPath: string, more: Partial<StagedVolumeRecord> = {}): StagedVolumeRecord {
  return {
    volume: 'vol-a', volumeId: 'v-123' as VolumeId, stagingPath, accessType: 'mount', fsType: 'ext4', mountFlags: [], readonly: false,
    devicePath: '/dev/loop-test', attachMethod: 'nbd', attachState: {}, state: 'staged', updatedAt: new Date().toISOString(), ...more,
  };
}

function runnerFor(record: StagedVolumeRecord | undefined): HookRunner {
  const opts: NodeActionsOptions = { nodeName: 'node-1', staged: (v) => (v === record?.volume ? record : undefined) };
  return new HookRunner({ log, command: new NodeCommandTransport(opts), freezer: new NodeFsFreezer(opts) });
}

function rule(pre: unknown[], post: unknown[] = []): SnapshotRule {
  return validateSnapshotRule({ apiVersion: 'cairn.dev/v1alpha1', kind: 'SnapshotRule', metadata: { name: 'r' }, spec: { pre, post } });
}

const ctx = { volume: 'vol-a', snapshot: 'snap-1' };

/** A thread of this process in uninterruptible sleep on a frozen superblock (a writer waiting for the thaw). */
function threadBlockedOnFreeze(): boolean {
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const wchan = readFileSync(`/proc/self/task/${tid}/wchan`, 'utf8');
      if (stat.charAt(stat.lastIndexOf(')') + 2) === 'D' && /percpu_rwsem|sb_start_write|rwsem_down_read/.test(wchan)) return true;
    } catch {
      // the thread ended while we looked
    }
  }
  return false;
}

async function eventually(check: () => boolean): Promise<boolean> {
  for (let i = 0; i < 1000 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  return check();
}

/** Whether the filesystem is thawed: a freeze of it succeeds (EBUSY while frozen); it is thawed again at once. */
async function isThawed(mountPoint: string): Promise<boolean> {
  const dir = await open(mountPoint, 'r');
  try {
    await fsFreeze(dir.fd);
    await fsThaw(dir.fd);
    return true;
  } catch {
    return false;
  } finally {
    await dir.close();
  }
}

/** A pid's process is gone (or a zombie nobody reaped). */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) === 'Z';
  } catch {
    return !existsSync(`/proc/${pid}`);
  }
}

test('command: runs with the volume in its environment, no shell; a non-zero exit fails with its code and stderr', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rule-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const runner = runnerFor(staged(dir));
  const r = await runner.runWithRule(rule([
    { kind: 'command', command: ['sh', '-c', 'echo "$CAIRN_VOLUME $CAIRN_VOLUME_ID $CAIRN_SNAPSHOT $CAIRN_STAGING_PATH $CAIRN_DEVICE"'] },
    { kind: 'command', command: ['echo', '$CAIRN_VOLUME', '*'] },
  ], [{ kind: 'command', command: ['sh', '-c', 'echo nope >&2; exit 7'] }]), ctx, async () => 'taken');
  t.is(r.actions[0]!.stdoutTail, `vol-a v-123 snap-1 ${dir} /dev/loop-test\n`);
  t.is(r.actions[1]!.stdoutTail, '$CAIRN_VOLUME *\n');
  t.like(r.actions[2], { phase: 'post', status: 'failed', exitCode: 7, stderrTail: 'nope\n' });
  t.is(r.error?.message, 'post[0] (sh -c echo nope >&2; exit 7) on node-1 failed with exit code 7: nope');
  t.is(r.snapshot.state, 'taken');
});

test('command: a program that is not installed fails FAILED_PRECONDITION and says so', async (t) => {
  const runner = runnerFor(staged('/'));
  const r = await runner.runWithRule(rule([{ kind: 'command', command: ['cairn-no-such-program'] }]), ctx, async () => 'taken');
  t.is(r.error?.code, Code.FAILED_PRECONDITION);
  t.is(r.error?.message, 'cairn-no-such-program is not installed on node node-1 (or not on cairnd\'s PATH): install it, or give its full path in the rule\'s command');
  t.is(r.snapshot.state, 'skipped');
});

test('command: a volume not staged on this node is FAILED_PRECONDITION naming where it must be staged', async (t) => {
  const runner = runnerFor(undefined);
  const r = await runner.runWithRule(rule([{ kind: 'command', command: ['true'] }]), { ...ctx, engineNode: 'node-2' }, async () => 'taken');
  t.is(r.error?.code, Code.FAILED_PRECONDITION);
  t.is(r.error?.message, 'volume "vol-a" is not staged on node node-1 (its engine runs on node node-2): command actions run on the node where the volume is staged for its pod; run the rule there');
});

test('command: a timeout kills the whole process group, grandchildren included', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rule-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const pidFile = join(dir, 'pid');
  const runner = runnerFor(staged(dir));
  const r = await runner.runWithRule(rule([
    // 3 s: time enough for sh to start its grandchild on a busy machine before the kill.
    { kind: 'command', command: ['sh', '-c', `sleep 300 & echo $! > ${pidFile}; wait`], timeoutSeconds: 3 },
  ]), ctx, async () => 'taken');
  t.is(r.error?.code, Code.DEADLINE_EXCEEDED);
  t.like(r.actions[0], { status: 'failed', signal: 'SIGKILL' });
  const grandchild = Number(await readFile(pidFile, 'utf8'));
  t.true(await eventually(() => processGone(grandchild)), `sleep (pid ${grandchild}) survived its group's kill`);
});

test('command: a background session is held through the snapshot and ended before post', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rule-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const pidFile = join(dir, 'pid');
  const runner = runnerFor(staged(dir));
  let aliveDuringSnapshot = false;
  let pid = 0;
  const r = await runner.runWithRule(rule(
    [{ kind: 'command', name: 'hold', command: ['sh', '-c', `echo $$ > ${pidFile}; echo READY; exec sleep 300`], background: true }],
    [{ kind: 'command', command: ['sh', '-c', `test ! -d /proc/$(cat ${pidFile}) || grep -q '^[^ ]* ([^)]*) Z' /proc/$(cat ${pidFile})/stat`] }],
  ), ctx, async () => {
    pid = Number(await readFile(pidFile, 'utf8'));
    aliveDuringSnapshot = !processGone(pid);
    return 'taken';
  });
  t.true(aliveDuringSnapshot, 'the background session had ended before the snapshot');
  t.true(r.ok, r.error?.message);
  t.like(r.actions.find((o) => o.action === 'hold'), { step: 'hold', status: 'succeeded', signal: 'SIGTERM', stdoutTail: 'READY\n' });
  // The post action found it gone: it was ended before post started.
  t.like(r.actions.find((o) => o.phase === 'post'), { status: 'succeeded', exitCode: 0 });
});

test('command: pre actions have finished when the snapshot starts, and post actions start after it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rule-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const runner = runnerFor(staged(dir));
  let preSeenBySnapshot = '';
  const r = await runner.runWithRule(rule(
    [{ kind: 'command', command: ['sh', '-c', `echo pre-done > ${dir}/pre`] }],
    [{ kind: 'command', command: ['cat', join(dir, 'snap')] }],
  ), ctx, async () => {
    preSeenBySnapshot = await readFile(join(dir, 'pre'), 'utf8');
    await writeFile(join(dir, 'snap'), 'snapshot-done');
    return 'taken';
  });
  t.is(preSeenBySnapshot, 'pre-done\n');
  t.like(r.actions[1], { phase: 'post', status: 'succeeded', stdoutTail: 'snapshot-done' });
  t.true(r.ok);
});

fsTest('fsfreeze: a failed snapshot still thaws, and every post action runs though the first fails', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rule-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const runner = runnerFor(staged(fs!.mountPoint));
  const r = await runner.runWithRule(rule(
    [{ kind: 'command', command: ['false'], onError: 'Continue' }, { kind: 'fsfreeze' }],
    [{ kind: 'command', command: ['sh', '-c', 'exit 4'] }, { kind: 'command', command: ['sh', '-c', `touch ${dir}/second-post-ran`] }],
  ), ctx, async () => {
    throw new Error('the barrier failed');
  });
  t.true(await isThawed(fs!.mountPoint));
  t.true(existsSync(join(dir, 'second-post-ran')));
  t.is(r.snapshot.state, 'failed');
  t.is(r.error?.message, 'the snapshot failed: the barrier failed');
  t.deepEqual(r.actions.map((o) => [o.action, o.step, o.status, o.exitCode]), [
    ['pre[0]', 'run', 'failed', 1], ['pre[1]', 'freeze', 'succeeded', null], ['pre[1]', 'thaw', 'succeeded', null],
    ['post[0]', 'run', 'failed', 4], ['post[1]', 'run', 'succeeded', 0],
  ]);
});

fsTest('fsfreeze: a write to the volume waits during the snapshot and completes after the thaw', async (t) => {
  const mnt = fs!.mountPoint;
  await writeFile(join(mnt, 'before'), 'a');
  const runner = runnerFor(staged(mnt));
  let writer: Promise<void> | undefined;
  let written = false;
  let blocked = false;
  const r = await runner.runWithRule(rule([{ kind: 'command', command: ['sync'] }, { kind: 'fsfreeze' }]), ctx, async () => {
    writer = writeFile(join(mnt, 'during'), 'written during the snapshot').then(() => { written = true; });
    blocked = await eventually(threadBlockedOnFreeze);
    return { writtenAtSnapshot: written };
  });
  t.true(blocked, 'no writer waited on the frozen filesystem');
  t.true(r.ok, r.error?.message);
  t.deepEqual(r.snapshot.state === 'taken' && r.snapshot.value, { writtenAtSnapshot: false });
  await writer;
  t.is(await readFile(join(mnt, 'during'), 'utf8'), 'written during the snapshot');
  t.deepEqual(r.actions.map((o) => [o.action, o.step, o.status, o.target]), [
    ['pre[0]', 'run', 'succeeded', 'node-1'], ['pre[1]', 'freeze', 'succeeded', mnt], ['pre[1]', 'thaw', 'succeeded', mnt],
  ]);
});

fsTest('fsfreeze: a failed pre action after the freeze means no snapshot, and the filesystem is thawed', async (t) => {
  const runner = runnerFor(staged(fs!.mountPoint));
  let called = false;
  const r = await runner.runWithRule(rule([{ kind: 'fsfreeze' }, { kind: 'command', command: ['false'] }]), ctx, async () => { called = true; });
  t.false(called);
  t.is(r.error?.code, Code.FAILED_PRECONDITION);
  t.true(await isThawed(fs!.mountPoint));
});

fsTest('fsfreeze: shutdown mid-rule thaws the filesystem', async (t) => {
  const runner = runnerFor(staged(fs!.mountPoint));
  let frozen!: () => void;
  const inSnapshot = new Promise<void>((r) => { frozen = r; });
  const run = runner.runWithRule(rule([{ kind: 'fsfreeze' }]), ctx, (signal) => new Promise((_, reject) => {
    frozen();
    signal.addEventListener('abort', () => reject(signal.reason as Error));
  }));
  await inSnapshot;
  t.false(await isThawed(fs!.mountPoint));
  await runner.shutdown();
  t.true(await isThawed(fs!.mountPoint));
  const r = await run;
  t.is(r.snapshot.state, 'failed');
  t.is(r.actions.filter((o) => o.step === 'thaw').length, 1);
});

fsTest('fsfreeze refuses a block volume and a staging path with nothing mounted', async (t) => {
  const block = await runnerFor(staged(fs!.mountPoint, { accessType: 'block', fsType: '' })).runWithRule(rule([{ kind: 'fsfreeze' }]), ctx, async () => 'x');
  t.is(block.error?.code, Code.FAILED_PRECONDITION);
  t.regex(block.error!.message, /staged as a raw block device: it has no filesystem for fsfreeze to freeze/);
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rule-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bare = await runnerFor(staged(dir)).runWithRule(rule([{ kind: 'fsfreeze' }]), ctx, async () => 'x');
  t.is(bare.error?.message, `nothing is mounted at volume "vol-a"'s staging path ${dir} on node node-1: refusing to freeze the filesystem that holds it`);
});

fsTest('fsfreeze: a freeze recorded by a cairnd that was killed before its thaw is thawed by the next one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-frozen-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const opts = { nodeName: 'node-1', staged: (v: string) => (v === 'vol-a' ? staged(fs!.mountPoint) : undefined) };
  // A normal run leaves no record behind.
  const runner = new HookRunner({ log, freezer: new NodeFsFreezer({ ...opts, journal: new FreezeJournal(dir, log) }) });
  t.true((await runner.runWithRule(rule([{ kind: 'fsfreeze' }]), ctx, async () => 'x')).ok);
  t.deepEqual(await readdir(dir), []);
  // The first cairnd freezes, then "dies": its thaw never runs.
  const first = new NodeFsFreezer({ ...opts, journal: new FreezeJournal(dir, log) });
  const frozen = await first.freeze(ctx);
  t.deepEqual(await readdir(dir), ['vol-a.json']);
  t.false(await isThawed(fs!.mountPoint));
  const next = new NodeFsFreezer({ ...opts, journal: new FreezeJournal(dir, log) });
  t.is(await next.thawLeftovers(), 1);
  t.true(await isThawed(fs!.mountPoint));
  t.deepEqual(await readdir(dir), []);
  // A record of a filesystem that is no longer frozen is dropped without a thaw.
  await new FreezeJournal(dir, log).record('vol-a', fs!.mountPoint);
  t.is(await next.thawLeftovers(), 0);
  t.deepEqual(await readdir(dir), []);
  await t.throwsAsync(frozen.thaw(), { message: /EINVAL/ });
});
