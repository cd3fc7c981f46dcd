/**
 * Group snapshots under a rule (issue 13): two daemons on etcd, volume g-a staged as ext4 on
 * node-0 and g-b on node-1 (nbdfuse + loop), `cairnctl snapshot group create --rule` asked of
 * node-0.
 * - a rule whose pre command writes a marker file into each member's filesystem, then
 *   fsfreeze: the restored members hold their markers, the post command ran for each, both
 *   filesystems are thawed (synced writes complete), and inspect shows each member's outcomes;
 * - a pre command failing with onError Fail on one member: no group and no member snapshot,
 *   the post actions ran for both members, both filesystems thawed.
 */
import test from 'ava';
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GroupSnapshotMessage, SnapshotMessage } from '../../src/cli/api-client.js';
import { Cluster } from '../helpers/cluster.js';
import { csiClient, ok, type CsiTestClient } from '../helpers/csi-client.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { stagedExt4OnEtcdMissing, syncedWrite } from '../helpers/staged-ext4.js';

const cap = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

const missing = await stagedExt4OnEtcdMissing();

const rule = (name: string, pre: string, post: string): string =>
  `apiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata:\n  name: ${name}\nspec:\n  pre: ${pre}\n  post: ${post}\n---\n`;

async function thawed(t: { is: (a: unknown, b: unknown, m?: string) => void }, dir: string, name: string): Promise<void> {
  const w = await syncedWrite(dir, name);
  t.is(w.exitCode, 0, `write to ${dir}: ${w.why}`);
}

if (prerequisitesMet('group snapshots under a rule on staged ext4', missing)) {
  let cluster: Cluster;
  let csi: CsiTestClient[];
  let work: string;
  const mnt: Record<string, string> = {};
  const staged: [number, string, string][] = [];

  const stage = async (node: number, volume: string): Promise<string> => {
    const dir = mkdtempSync(`/tmp/cairn-grp-${volume}-`);
    ok(await csi[node]!.node.NodeStageVolume!({ volumeId: volume, stagingTargetPath: dir, volumeCapability: cap }));
    staged.push([node, volume, dir]);
    return dir;
  };

  test.before(async () => {
    cluster = await Cluster.start({ nodes: 2 });
    csi = [await csiClient(join(cluster.node(0).dataDir, 'csi.sock')), await csiClient(join(cluster.node(1).dataDir, 'csi.sock'))];
    work = mkdtempSync('/tmp/cairn-grp-rule-');
    await cluster.createVolume('g-a', '64MiB', 2);
    await cluster.createVolume('g-b', '64MiB', 2);
    mnt['g-a'] = await stage(0, 'g-a');
    mnt['g-b'] = await stage(1, 'g-b');
    const file = join(work, 'rules.yaml');
    writeFileSync(file, [
      rule('marks', '[{name: mark, kind: command, command: [sh, -c, "echo $CAIRN_VOLUME > $CAIRN_STAGING_PATH/marker"]}, {kind: fsfreeze}]',
        `[{name: after, kind: command, command: [sh, -c, "touch ${work}/post-$CAIRN_VOLUME"]}]`),
      rule('fails-on-b', `[{kind: fsfreeze}, {name: check, kind: command, command: [sh, -c, "[ $CAIRN_VOLUME != g-b ] || { echo no lock >&2; exit 4; }"], onError: Fail}]`,
        `[{name: after, kind: command, command: [sh, -c, "touch ${work}/failed-post-$CAIRN_VOLUME"]}]`),
    ].join(''));
    const applied = await cluster.ctl(0, ['rule', 'apply', '-f', file]);
    if (applied.exitCode !== 0) throw new Error(`rule apply: ${applied.stderr}`);
  });

  test.after.always(async () => {
    for (const [node, volume, dir] of staged.reverse()) {
      await execa('fsfreeze', ['-u', dir], { reject: false });
      await csi?.[node]?.node.NodeUnstageVolume!({ volumeId: volume, stagingTargetPath: dir }).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
    for (const c of csi ?? []) c.close();
    await cluster?.destroy();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test.serial('a rule around a group: markers written by the pre command are in the restored members, post ran, both filesystems thawed, inspect shows the outcomes', async (t) => {
    const r = await cluster.ctl(0, ['-o', 'json', 'snapshot', 'group', 'create', 'grp1', '--volumes', 'g-a,g-b', '--rule', 'marks']);
    t.is(r.exitCode, 0, r.stderr);
    const g = JSON.parse(r.stdout) as GroupSnapshotMessage;
    t.true(g.readyToUse);
    for (const m of g.members) {
      t.like(m.rule, { name: 'marks', ok: true });
      const node = m.volumeName === 'g-a' ? 'node-0' : 'node-1';
      t.deepEqual(m.rule!.actions.map((a) => `${a.action} ${a.step} ${a.status} ${a.target}`),
        [`mark run succeeded ${node}`, `pre[1] freeze succeeded ${m.volumeName === 'g-a' ? '' : 'node-1:'}${mnt[m.volumeName]}`,
          `pre[1] thaw succeeded ${m.volumeName === 'g-a' ? '' : 'node-1:'}${mnt[m.volumeName]}`, `after run succeeded ${node}`]);
      t.true(existsSync(join(work, `post-${m.volumeName}`)), `post ran for ${m.volumeName}`);
    }
    await thawed(t, mnt['g-a']!, 'after-a.txt');
    await thawed(t, mnt['g-b']!, 'after-b.txt');
    const inspect = await cluster.ctl(1, ['snapshot', 'group', 'inspect', 'grp1']);
    t.regex(inspect.stdout, /g-a: rule marks ok/);
    t.regex(inspect.stdout, /g-b: rule marks ok/);
    for (const v of ['g-a', 'g-b']) {
      const restored = await cluster.ctl(1, ['snapshot', 'restore', `grp1-${v}`, `${v}-r`, '--replicas', '2']);
      t.is(restored.exitCode, 0, restored.stderr);
      const dir = await stage(1, `${v}-r`);
      t.is(readFileSync(join(dir, 'marker'), 'utf8').trim(), v, `the restored ${v} holds its marker`);
    }
  });

  test.serial('a pre action failing with Fail on one member: no group and no member snapshot, post ran for both, both thawed', async (t) => {
    const r = await cluster.ctl(0, ['snapshot', 'group', 'create', 'grp2', '--volumes', 'g-a,g-b', '--rule', 'fails-on-b']);
    t.is(r.exitCode, 1);
    t.regex(r.stderr, /FAILED_PRECONDITION/);
    t.regex(r.stderr, /stopped at check for volume "g-b"/);
    const groups = await cluster.ctlJson<GroupSnapshotMessage[]>(0, ['snapshot', 'group', 'list']);
    t.false(groups.some((g) => g.name === 'grp2'), 'no group');
    const snaps = await cluster.ctlJson<SnapshotMessage[]>(0, ['snapshot', 'list']);
    t.false(snaps.some((s) => s.name.startsWith('grp2-')), `no member snapshot: ${snaps.map((s) => s.name).join(', ')}`);
    t.true(existsSync(join(work, 'failed-post-g-a')), 'post ran for g-a');
    t.true(existsSync(join(work, 'failed-post-g-b')), 'post ran for g-b');
    await thawed(t, mnt['g-a']!, 'after-fail-a.txt');
    await thawed(t, mnt['g-b']!, 'after-fail-b.txt');
  });
}
