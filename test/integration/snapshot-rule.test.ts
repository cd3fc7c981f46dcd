/**
 * Snapshots under a rule against a real cairnd (role `all`, embedded store, file pool) with
 * a volume staged through its CSI Node service as ext4: the `command` and `fsfreeze` kinds
 * run for real.
 * - a pre command failing with onError Fail: no snapshot, FAILED_PRECONDITION naming the
 *   action, the post command ran, the filesystem is thawed (a synced write completes);
 * - a pre command past its timeout: killed, no snapshot, post ran, thawed;
 * - a background command: held through the snapshot, ended before the post actions;
 * - a post command failing: the snapshot is kept and its record (create's reply, inspect
 *   table and JSON) shows each step, the failure and its exit code;
 * - an unknown rule is NOT_FOUND, a volume not staged on this node FAILED_PRECONDITION, both
 *   before anything runs (the rule's marker file is not written);
 * - CSI CreateSnapshot with the class parameter cairn.dev/snapshot-rule runs the rule.
 */
import test from 'ava';
import { execa } from 'execa';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotMessage } from '../../src/cli/api-client.js';
import { csiClient, codeName, ok, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { combine, missingCommands, missingRoot, prerequisitesMet } from '../helpers/prereq.js';

const fsMissing = combine(
  missingRoot('loop devices, FUSE, mounts and FIFREEZE'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'losetup', 'mkfs.ext4', 'fsfreeze'),
);

const cap = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

/** A rule manifest: `pre` and `post` are YAML flow lists of actions. */
const ruleYaml = (name: string, pre: string, post: string): string =>
  `apiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata:\n  name: ${name}\nspec:\n  pre: ${pre}\n  post: ${post}\n---\n`;

if (prerequisitesMet('snapshot rules on a staged ext4', fsMissing)) {
  let d: Daemon;
  let csi: CsiTestClient;
  let work: string;
  let mnt: string;

  test.before(async () => {
    d = await Daemon.start({ extraArgs: ['--pool-backend', 'file', '--node-name', 'node-a'] });
    csi = await csiClient(join(d.dataDir, 'csi.sock'));
    work = mkdtempSync('/tmp/cairn-rule-');
    mnt = mkdtempSync('/tmp/cairn-rule-mnt-');
    const marks = (n: string): string => JSON.stringify(join(work, n));
    const file = join(work, 'rules.yaml');
    writeFileSync(file, [
      ruleYaml('fail-pre',
        `[{kind: fsfreeze}, {name: must-fail, kind: command, command: [sh, -c, "echo cannot flush >&2; exit 7"], onError: Fail}, {name: never, kind: command, command: [touch, ${marks('never')}]}]`,
        `[{name: mark, kind: command, command: [touch, ${marks('post-ran')}]}]`),
      ruleYaml('post-fails',
        `[{name: flush, kind: command, command: [sh, -c, "echo flushed; sync"]}, {kind: fsfreeze}]`,
        `[{name: notify, kind: command, command: [sh, -c, "echo no route to host >&2; exit 3"]}]`),
      ruleYaml('times-out',
        '[{kind: fsfreeze}, {name: stuck, kind: command, command: [sleep, "600.731"], timeoutSeconds: 1}]',
        `[{name: mark, kind: command, command: [touch, ${marks('timeout-post-ran')}]}]`),
      ruleYaml('holds',
        `[{name: lock, kind: command, command: [sh, -c, "echo READY; exec sleep 600.913"], background: true}, {kind: fsfreeze}]`,
        `[{name: after, kind: command, command: [sh, -c, "pgrep -f 'sleep 600[.]913' >/dev/null && exit 9 || touch ${join(work, 'lock-gone')}"]}]`),
      ruleYaml('marks', `[{name: mark, kind: command, command: [sh, -c, "touch ${join(work, 'marks-')}$CAIRN_SNAPSHOT"]}, {kind: fsfreeze}]`, '[]'),
    ].join(''));
    const applied = await d.ctl(['rule', 'apply', '-f', file]);
    if (applied.exitCode !== 0) throw new Error(`rule apply: ${applied.stderr}`);
    for (const v of ['hk', 'idle']) {
      const r = await d.ctl(['volume', 'create', v, '--size', '64MiB']);
      if (r.exitCode !== 0) throw new Error(`volume create ${v}: ${r.stderr}`);
    }
    ok(await csi.node.NodeStageVolume!({ volumeId: 'hk', stagingTargetPath: mnt, volumeCapability: cap }));
  });

  test.after.always(async () => {
    // Whatever failed, never leave the staged filesystem frozen (an unstage would hang on it).
    if (mnt) await execa('fsfreeze', ['-u', mnt], { reject: false });
    await csi?.node.NodeUnstageVolume!({ volumeId: 'hk', stagingTargetPath: mnt }).catch(() => undefined);
    csi?.close();
    await d?.destroy();
    if (work) rmSync(work, { recursive: true, force: true });
    if (mnt) rmSync(mnt, { recursive: true, force: true });
  });

  test.serial('a pre command failing with onError Fail: no snapshot, FAILED_PRECONDITION naming it, the post command ran, the filesystem is thawed', async (t) => {
    const r = await d.ctl(['snapshot', 'create', 'hk-1', '--volume', 'hk', '--rule', 'fail-pre']);
    t.log(r.stderr);
    t.is(r.exitCode, 1);
    t.regex(r.stderr, /FAILED_PRECONDITION/);
    t.regex(r.stderr, /must-fail/);
    t.regex(r.stderr, /exit(ed)? (code )?7/);
    t.false((await d.ctlJson<SnapshotMessage[]>(['snapshot', 'list', '--volume', 'hk'])).some((s) => s.name === 'hk-1'), 'no snapshot was taken');
    t.true(existsSync(join(work, 'post-ran')), 'the post action ran');
    t.false(existsSync(join(work, 'never')), 'the pre actions after the failed one did not run');
    // Thawed: a write and its sync complete (on a frozen ext4 both would wait for the thaw).
    const w = await execa('sh', ['-c', `echo after > ${join(mnt, 'after.txt')} && sync -f ${join(mnt, 'after.txt')}`], { reject: false, timeout: 120_000 });
    t.is(w.exitCode, 0, `write after the rule: ${w.stderr}${w.timedOut ? ' (still blocked: frozen)' : ''}`);
  });

  test.serial('a pre command that passes its timeout is killed (its process is gone): no snapshot, DEADLINE_EXCEEDED named, post ran, thawed', async (t) => {
    const r = await d.ctl(['snapshot', 'create', 'hk-t', '--volume', 'hk', '--rule', 'times-out']);
    t.is(r.exitCode, 1);
    t.regex(r.stderr, /stopped at stuck \(DEADLINE_EXCEEDED\).*\(FAILED_PRECONDITION\)$/s);
    t.is((await execa('pgrep', ['-f', 'sleep 600.731'], { reject: false })).exitCode, 1, 'the timed-out command was killed');
    t.true(existsSync(join(work, 'timeout-post-ran')));
    t.false((await d.ctlJson<SnapshotMessage[]>(['snapshot', 'list', '--volume', 'hk'])).some((s) => s.name === 'hk-t'));
    const w = await execa('sh', ['-c', `echo after > ${join(mnt, 'after-timeout.txt')} && sync -f ${join(mnt, 'after-timeout.txt')}`], { reject: false, timeout: 120_000 });
    t.is(w.exitCode, 0, `write after the rule: ${w.stderr}${w.timedOut ? ' (still blocked: frozen)' : ''}`);
  });

  test.serial('a background command is held through the snapshot and ended before the post actions start', async (t) => {
    const s = await d.ctlJson<SnapshotMessage>(['snapshot', 'create', 'hk-h', '--volume', 'hk', '--rule', 'holds']);
    t.like(s.rule, { name: 'holds', ok: true });
    t.deepEqual(s.rule!.actions.map((a) => `${a.action} ${a.step} ${a.status}`), ['pre[1] freeze succeeded', 'pre[1] thaw succeeded', 'lock hold succeeded', 'after run succeeded']);
    t.true(existsSync(join(work, 'lock-gone')), 'the post action found the background command ended');
  });

  test.serial('a post command failing: the snapshot is kept, and create, inspect and inspect -o json show every step with the failure', async (t) => {
    const r = await d.ctl(['-o', 'json', 'snapshot', 'create', 'hk-2', '--volume', 'hk', '--rule', 'post-fails']);
    t.is(r.exitCode, 0, r.stderr);
    const created = JSON.parse(r.stdout) as SnapshotMessage;
    t.true(created.readyToUse);
    const inspected = await d.ctlJson<SnapshotMessage>(['snapshot', 'inspect', 'hk-2']);
    for (const s of [created, inspected]) {
      t.truthy(s.rule);
      t.like(s.rule, { name: 'post-fails', ok: false });
      const steps = s.rule!.actions.map((a) => `${a.phase} ${a.action} ${a.step} ${a.status}`);
      t.deepEqual(steps, ['pre flush run succeeded', 'pre pre[1] freeze succeeded', 'post pre[1] thaw succeeded', 'post notify run failed']);
      const notify = s.rule!.actions.find((a) => a.action === 'notify')!;
      t.like(notify, { kind: 'command', target: 'node-a', exited: true, exitCode: 3 });
      t.regex(notify.outputTail, /no route to host/);
      t.regex(notify.errorMessage, /.+/);
      t.like(s.rule!.actions.find((a) => a.action === 'flush'), { exited: true, exitCode: 0 });
    }
    const table = await d.ctl(['snapshot', 'inspect', 'hk-2']);
    t.log(table.stdout);
    t.regex(table.stdout, /rule post-fails FAILED/);
    t.regex(table.stdout, /notify\s+post\s+command\s+run\s+node-a\s+failed\s+3/);
    t.true((await d.ctlJson<SnapshotMessage[]>(['snapshot', 'list', '--volume', 'hk'])).some((s) => s.name === 'hk-2'));
  });

  test.serial('an unknown rule is NOT_FOUND and a volume not staged here FAILED_PRECONDITION, before anything runs', async (t) => {
    const unknown = await d.ctl(['snapshot', 'create', 'hk-3', '--volume', 'hk', '--rule', 'no-such-rule']);
    t.is(unknown.exitCode, 1);
    t.regex(unknown.stderr, /NOT_FOUND/);
    t.regex(unknown.stderr, /no-such-rule/);
    const idle = await d.ctl(['snapshot', 'create', 'idle-1', '--volume', 'idle', '--rule', 'marks']);
    t.is(idle.exitCode, 1);
    t.regex(idle.stderr, /FAILED_PRECONDITION/);
    t.regex(idle.stderr, /not staged on node node-a/);
    t.log(idle.stderr);
    t.false(existsSync(join(work, 'marks-idle-1')), 'the rule did not start');
    const names = (await d.ctlJson<SnapshotMessage[]>(['snapshot', 'list'])).map((s) => s.name);
    t.false(names.includes('hk-3') || names.includes('idle-1'), `nothing taken: ${names.join(', ')}`);
  });

  test.serial('CSI CreateSnapshot with cairn.dev/snapshot-rule runs the rule; the snapshot records it; a rule that does not exist is NOT_FOUND', async (t) => {
    const reply = ok(await csi.controller.CreateSnapshot!({ name: 'snapshot-csi-1', sourceVolumeId: 'hk', parameters: { 'cairn.dev/snapshot-rule': 'marks' } })) as {
      snapshot: { snapshotId: string; readyToUse: boolean };
    };
    t.like(reply.snapshot, { snapshotId: 'snapshot-csi-1', readyToUse: true });
    t.true(existsSync(join(work, 'marks-snapshot-csi-1')), 'the rule\'s command ran with CAIRN_SNAPSHOT set');
    const s = await d.ctlJson<SnapshotMessage>(['snapshot', 'inspect', 'snapshot-csi-1']);
    t.like(s.rule, { name: 'marks', ok: true });
    t.deepEqual(s.rule!.actions.map((a) => `${a.action} ${a.step} ${a.status}`), ['mark run succeeded', 'pre[1] freeze succeeded', 'pre[1] thaw succeeded']);
    t.is(codeName(await csi.controller.CreateSnapshot!({ name: 'snapshot-csi-2', sourceVolumeId: 'hk', parameters: { 'cairn.dev/snapshot-rule': 'gone' } })), 'NOT_FOUND');
  });
}
