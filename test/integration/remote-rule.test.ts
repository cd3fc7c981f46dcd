/**
 * A rule's node-scoped actions taken from a cairnd that does not stage the volume (issue 13):
 * two daemons on etcd; volume `app` staged as ext4 (nbdfuse + loop) through node-1's CSI
 * Node service; `cairnctl snapshot create --rule` asked of node-0.
 * - the `command` runs on node-1 (with node-1's staging path in its environment) and
 *   `fsfreeze` freezes node-1's mount; the snapshot, restored, holds the file written before;
 *   the filesystem is thawed afterwards (a synced write completes);
 * - node-0 killed with SIGKILL while node-1's filesystem is frozen for it: node-1 thaws at
 *   the freeze's lease end (a synced write started while frozen completes).
 */
import test from 'ava';
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotMessage } from '../../src/cli/api-client.js';
import { Cluster, waitFor } from '../helpers/cluster.js';
import { csiClient, ok, type CsiTestClient } from '../helpers/csi-client.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { stagedExt4OnEtcdMissing, syncedWrite } from '../helpers/staged-ext4.js';

const cap = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

const missing = await stagedExt4OnEtcdMissing();


if (prerequisitesMet('rules acting on another node\'s staged ext4', missing)) {
  test.serial('a rule taken on node-0 runs its command and fsfreeze on node-1 where the volume is staged; node-1 thaws by itself when node-0 dies while it is frozen', async (t) => {
    const cluster = await Cluster.start({ nodes: 2 });
    let failed = true;
    const work = mkdtempSync('/tmp/cairn-remote-rule-');
    const mnt = mkdtempSync('/tmp/cairn-remote-mnt-');
    const mnt2 = mkdtempSync('/tmp/cairn-remote-mnt2-');
    const csi: CsiTestClient = await csiClient(join(cluster.node(1).dataDir, 'csi.sock'));
    t.teardown(async () => {
      // Whatever failed, never leave the staged filesystem frozen (an unstage would hang on it).
      await execa('fsfreeze', ['-u', mnt], { reject: false });
      await csi.node.NodeUnstageVolume!({ volumeId: 'app-r', stagingTargetPath: mnt2 }).catch(() => undefined);
      await csi.node.NodeUnstageVolume!({ volumeId: 'app', stagingTargetPath: mnt }).catch(() => undefined);
      csi.close();
      await cluster.destroy({ failed });
      for (const d of [work, mnt, mnt2]) rmSync(d, { recursive: true, force: true });
    });
    await cluster.createVolume('app', '64MiB', 2);
    ok(await csi.node.NodeStageVolume!({ volumeId: 'app', stagingTargetPath: mnt, volumeCapability: cap }));
    writeFileSync(join(mnt, 'before.txt'), 'written before the snapshot\n');

    const rules = join(work, 'rules.yaml');
    writeFileSync(rules, [
      'apiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata:\n  name: remote\nspec:\n',
      `  pre: [{name: mark, kind: command, command: [sh, -c, "echo $CAIRN_STAGING_PATH > ${join(work, 'ran-on')}"]}, {kind: fsfreeze}]\n  post: []\n---\n`,
      'apiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata:\n  name: hang\nspec:\n',
      `  pre: [{kind: fsfreeze}, {name: wait, kind: command, command: [sh, -c, "touch ${join(work, 'frozen')}; exec sleep 600.613"], timeoutSeconds: 600}]\n  post: []\n`,
    ].join(''));
    const applied = await cluster.ctl(0, ['rule', 'apply', '-f', rules]);
    t.is(applied.exitCode, 0, applied.stderr);

    const r = await cluster.ctl(0, ['-o', 'json', 'snapshot', 'create', 'app-1', '--volume', 'app', '--rule', 'remote']);
    t.is(r.exitCode, 0, r.stderr);
    const snap = JSON.parse(r.stdout) as SnapshotMessage;
    t.like(snap.rule, { name: 'remote', ok: true });
    t.deepEqual(snap.rule!.actions.map((a) => `${a.action} ${a.step} ${a.status} ${a.target}`),
      ['mark run succeeded node-1', `pre[1] freeze succeeded node-1:${mnt}`, `pre[1] thaw succeeded node-1:${mnt}`]);
    t.is(readFileSync(join(work, 'ran-on'), 'utf8').trim(), mnt, 'the command ran on node-1, with its staging path');
    const after = await syncedWrite(mnt, 'after.txt');
    t.is(after.exitCode, 0, `write after the rule: ${after.why}`);

    // The restored copy holds the file written (not synced) before the snapshot: the freeze flushed it.
    const restored = await cluster.ctl(1, ['snapshot', 'restore', 'app-1', 'app-r', '--replicas', '2']);
    t.is(restored.exitCode, 0, restored.stderr);
    ok(await csi.node.NodeStageVolume!({ volumeId: 'app-r', stagingTargetPath: mnt2, volumeCapability: cap }));
    t.is(readFileSync(join(mnt2, 'before.txt'), 'utf8'), 'written before the snapshot\n');
    ok(await csi.node.NodeUnstageVolume!({ volumeId: 'app-r', stagingTargetPath: mnt2 }));

    // node-0 dies (kill -9) while node-1's filesystem is frozen for its rule.
    const mark = cluster.node(1).logMark();
    const hanging = cluster.ctl(0, ['snapshot', 'create', 'app-2', '--volume', 'app', '--rule', 'hang']);
    await waitFor(() => existsSync(join(work, 'frozen')), Boolean, 'the hanging rule to freeze node-1\'s filesystem and start its command', 60_000, 50);
    await cluster.crash(0);
    await hanging;
    // Started while frozen: it completes once node-1 thaws at the lease's end.
    const thawed = await syncedWrite(mnt, 'after-crash.txt');
    t.is(thawed.exitCode, 0, `write after the coordinator died: ${thawed.why}`);
    await cluster.waitForEvent(1, { msg: 'freeze lease ended without a thaw: thawing the filesystem' }, { since: mark, timeoutMs: 5000 });
    t.is((await execa('pgrep', ['-f', 'sleep 600.613'], { reject: false })).exitCode, 1, 'the command node-0 started is gone');
    failed = false;
  });
}
