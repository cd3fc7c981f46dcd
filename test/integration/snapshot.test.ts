/**
 * Crash-consistent snapshots between real cairnd processes (issue 12): taken at the
 * engine's write barrier under a verified writer, each restored into a new volume and
 * checked block by block against what was acknowledged before the call and issued before
 * it returned; all copies or none when a replica's daemon dies or freezes during one, with
 * I/O resuming; and a real filesystem (ext4, xfs) snapshotted while mounted and written,
 * restored and mounted again with every fsynced file intact.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, openSync, fsyncSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { AttachmentMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { Cluster } from '../helpers/cluster.js';
import { Daemon } from '../helpers/daemon.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { csiClient, ok } from '../helpers/csi-client.js';
import { checkPointInTime } from '../helpers/point-in-time.js';
import { combine, missingCommands, missingRoot, prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const MiB = 1 << 20;
const BLOCK = 4096;

/** `cairnctl -o json snapshot …` output (the API's Snapshot message). */
interface SnapshotMessage {
  id: string;
  name: string;
  sourceVolumeId: string;
  sourceVolumeName: string;
  sizeBytes: number | string;
  state: string;
  readyToUse: boolean;
  copiesWanted: number;
  copies: { nodeId: string; replicaId: string; nodeUp: boolean }[];
  pauseUs: number | string;
}

async function startCluster(t: ExecutionContext, nodes = 3): Promise<Cluster> {
  const c = await Cluster.start({ nodes });
  t.teardown(() => c.destroy({ failed: !t.passed }));
  return c;
}

/** The snapshot copy devices in node i's pool (file pool: one file per device, named by id). */
function copyFiles(c: Cluster, i: number, snapshotId: string): string[] {
  const found: string[] = [];
  const walk = (dir: string, depth: number): void => {
    if (!existsSync(dir) || depth > 4) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name), depth + 1);
      else if (e.name.startsWith(snapshotId)) found.push(join(dir, e.name));
    }
  };
  walk(join(c.node(i).dataDir, 'pool'), 0);
  return found;
}

/** Restores `snap` into `name` (one replica on `node`), exports it there and returns a reader of it. */
async function restoreAndOpen(c: Cluster, snap: string, name: string, node: number): Promise<(offset: number, length: number) => Promise<Buffer>> {
  const r = await c.ctl(0, ['-o', 'json', 'snapshot', 'restore', snap, name, '--replicas', '1', '--prefer-node', c.nodeName(node), '--no-wait']);
  if (r.exitCode !== 0) throw new Error(`snapshot restore ${snap} -> ${name}: ${r.stderr}`);
  await c.exportVolume(node, name);
  const nbd = await c.nbd(node, name);
  return (offset, length) => nbd.read(offset, length);
}

const etcdMissing = await etcdMissingReason();
const fsMissing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'mkfs.xfs', 'xfs_repair'),
);


if (prerequisitesMet('snapshot tests', etcdMissing)) {
  test.serial('crash consistency under load: snapshots every second of an rf=3 volume across three daemons hold, in every block, what was acknowledged before the call and nothing issued after it returned', async (t) => {
    t.timeout(300_000);
    const c = await startCluster(t);
    await c.createVolume('db', '64MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'db');
    const w = await c.writer(0, 'db', { blockCount: (16 * MiB) / BLOCK, queueDepth: 32, flushEveryWrites: 128 });
    w.start();
    await w.waitForAcks(500);
    const taken: { snap: SnapshotMessage; lower: Map<number, number>; upper: number }[] = [];
    for (let i = 0; i < 5; i++) {
      const startedAt = Date.now();
      const lower = w.ackedGenerations();
      const snap = await c.ctlJson<SnapshotMessage>(0, ['snapshot', 'create', `db-${i}`, '--volume', 'db']);
      const upper = w.generationsIssued;
      taken.push({ snap, lower, upper });
      // The writer keeps going between snapshots: at least a second and 300 more writes.
      await w.waitForAcks(300);
      const left = 1000 - (Date.now() - startedAt);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    }
    const stats = await w.stop();
    t.is(stats.errors, 0, `writer errors: ${stats.errorDetails.join('; ')}`);
    t.deepEqual((await w.verify()).mismatches, [], 'the source volume holds what was acknowledged');

    const pauses = taken.map((x) => Number(x.snap.pauseUs) / 1000);
    t.log(`barrier pauses (ms): ${pauses.map((p) => p.toFixed(1)).join(', ')}`);
    for (const [i, { snap, lower, upper }] of taken.entries()) {
      t.true(snap.readyToUse, `snapshot ${snap.name} ready`);
      t.is(snap.copies.length, 3, `snapshot ${snap.name} has a copy on every replica's node`);
      t.is(snap.sourceVolumeName, 'db');
      const read = await restoreAndOpen(c, snap.name, `db-r${i}`, i % 3);
      const report = await checkPointInTime(read, w, lower, upper);
      t.is(report.blocksChecked, w.blockCount);
      t.deepEqual(report.problems, [], `restored ${snap.name} (acknowledged before: ${lower.size} blocks, last issued before return: ${upper})`);
    }

    // All three copies of one snapshot are the same bytes: restore it with three replicas,
    // each a child of another node's copy, and compare them region by region.
    const r = await c.ctl(0, ['-o', 'json', 'snapshot', 'restore', 'db-2', 'db-all', '--replicas', '3', '--no-wait']);
    t.is(r.exitCode, 0, r.stderr);
    await c.waitHealth('db-all', 'healthy', 120_000);
    const v = await c.verify('db-all');
    t.is(v.exitCode, 0, `volume verify of the three copies: ${v.stderr}`);
    t.deepEqual(v.result?.mismatches, []);
  });

  test.serial('a replica daemon frozen during a snapshot: the snapshot fails whole within its deadline, no copy is left on any node, and writes resume', async (t) => {
    t.timeout(240_000);
    const c = await startCluster(t);
    await c.createVolume('frz', '32MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'frz');
    const w = await c.writer(0, 'frz', { blockCount: (8 * MiB) / BLOCK });
    w.start();
    await w.waitForAcks(300);
    c.pause(2);
    const startedAt = Date.now();
    const r = await c.ctl(0, ['-o', 'json', 'snapshot', 'create', 'frz-snap', '--volume', 'frz']);
    const tookMs = Date.now() - startedAt;
    c.resume(2);
    t.log(`snapshot with node-2 frozen: exit ${r.exitCode} after ${tookMs} ms: ${r.stderr.trim() || 'created'}`);
    if (r.exitCode === 0) {
      // The engine faulted the frozen replica before the barrier: a snapshot of the in-sync ones.
      const snap = JSON.parse(r.stdout) as SnapshotMessage;
      t.true(snap.readyToUse);
      t.false(snap.copies.some((x) => x.nodeId === 'node-2'), 'no copy claimed on the frozen node');
    } else {
      const list = await c.ctlJson<SnapshotMessage[]>(0, ['snapshot', 'list']);
      t.deepEqual(list.map((s) => s.name), [], 'a failed snapshot is not listed');
      await c.waitFor(() => strayCopies(c), (left) => left.length === 0, 'no snapshot copy on any node', 60_000);
    }
    await w.waitForAcks(300, 60_000); // writes resumed
    const stats = await w.stop();
    t.is(stats.errors, 0, `writer errors: ${stats.errorDetails.join('; ')}`);
    t.deepEqual((await w.verify()).mismatches, []);
  });

  test.serial('kill -9 of a replica daemon during snapshots, and etcd stopped during one: each snapshot is whole or absent, writes never fail', async (t) => {
    t.timeout(300_000);
    const c = await startCluster(t);
    await c.createVolume('kil', '32MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'kil');
    const w = await c.writer(0, 'kil', { blockCount: (8 * MiB) / BLOCK });
    w.start();
    await w.waitForAcks(300);

    // kill -9 of node 2 while a snapshot is on its way.
    const killed = c.ctl(0, ['-o', 'json', 'snapshot', 'create', 'kil-a', '--volume', 'kil']);
    await c.crash(2);
    const a = await killed;
    t.log(`snapshot with node-2 killed: exit ${a.exitCode}: ${a.stderr.trim() || 'created'}`);
    await w.waitForAcks(300, 60_000);
    await checkWholeOrAbsent(t, c, 'kil-a', a.exitCode);

    // etcd stopped while a snapshot is on its way.
    const during = c.ctl(0, ['-o', 'json', 'snapshot', 'create', 'kil-b', '--volume', 'kil']);
    await c.stopEtcd();
    const b = await during;
    t.log(`snapshot with etcd stopped: exit ${b.exitCode}: ${b.stderr.trim() || 'created'}`);
    await w.waitForAcks(300, 60_000); // no fault needs recording: writes go on without etcd
    await c.startEtcd();
    await checkWholeOrAbsent(t, c, 'kil-b', b.exitCode);

    const stats = await w.stop();
    t.is(stats.errors, 0, `writer errors: ${stats.errorDetails.join('; ')}`);
    t.deepEqual((await w.verify()).mismatches, []);
    await c.restart(2);
  });
}

/** Every snapshot copy file in node i's pool. */
function listCopies(c: Cluster, i: number): string[] {
  return copyFiles(c, i, 'snap-');
}

/** Copy files on the running nodes that belong to no listed snapshot. */
async function strayCopies(c: Cluster): Promise<string[]> {
  const listed = (await c.ctlJson<SnapshotMessage[]>(c.liveNode(), ['snapshot', 'list'])).map((s) => s.id);
  return [0, 1, 2].filter((i) => c.node(i).running).flatMap((i) => listCopies(c, i)).filter((f) => !listed.some((id) => f.includes(id)));
}

/**
 * After a snapshot call that may have failed: eventually the snapshot is either listed,
 * ready, with a copy file on each running node it names, or not listed and no copy of a
 * snapshot that is not listed exists anywhere.
 */
async function checkWholeOrAbsent(t: ExecutionContext, c: Cluster, name: string, exitCode: number): Promise<void> {
  const settled = await c.waitFor(async () => {
    const list = await c.ctlJson<SnapshotMessage[]>(c.liveNode(), ['snapshot', 'list']);
    return list.find((s) => s.name === name);
  }, (s) => s === undefined || s.state === 'ready', `snapshot ${name} ready or gone`, 240_000);
  if (settled) {
    t.true(settled.readyToUse);
    t.true(settled.copies.length >= 1);
    for (const copy of settled.copies) {
      const i = Number(copy.nodeId.replace('node-', ''));
      if (c.node(i).running) t.true(copyFiles(c, i, settled.id).length > 0, `${name}'s copy on ${copy.nodeId} exists`);
    }
  } else {
    t.not(exitCode, 0, `${name} was reported created but is gone`);
  }
  await c.waitFor(() => strayCopies(c), (left) => left.length === 0, 'no copy of a failed snapshot left', 240_000);
}

/* --------------------------------------------------------------- a real filesystem */

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

for (const fs of ['ext4', 'xfs'] as const) {
  if (!prerequisitesMet(`snapshot of a mounted ${fs}`, fsMissing)) continue;
  test.serial(`${fs} staged through CSI and being written: snapshot, restore, stage the restored volume on the same node next to its source: every file fsynced before the snapshot is there, none after, the filesystem checks clean`, async (t) => {
    t.timeout(240_000);
    const d = await Daemon.start({ extraArgs: ['--pool-backend', 'file'] });
    const csi = await csiClient(join(d.dataDir, 'csi.sock'));
    const mnt = mkdtempSync('/tmp/cairn-snapfs-');
    const mnt2 = mkdtempSync('/tmp/cairn-snapfs-r-');
    const cap = { mount: { fsType: fs, mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
    t.teardown(async () => {
      await csi.node.NodeUnstageVolume!({ volumeId: 'dst', stagingTargetPath: mnt2 }).catch(() => undefined);
      await csi.node.NodeUnstageVolume!({ volumeId: 'src', stagingTargetPath: mnt }).catch(() => undefined);
      await d.ctl(['volume', 'detach', 'dst']).catch(() => undefined);
      csi.close();
      await d.destroy();
      rmSync(mnt, { recursive: true, force: true });
      rmSync(mnt2, { recursive: true, force: true });
    });
    t.is((await d.ctl(['volume', 'create', 'src', '--size', '320MiB'])).exitCode, 0); // xfs needs 300 MB at least
    ok(await csi.node.NodeStageVolume!({ volumeId: 'src', stagingTargetPath: mnt, volumeCapability: cap }));
    const files = new Map<string, string>();
    const writeSynced = (name: string, bytes: number): void => {
      const data = randomBytes(bytes);
      const fd = openSync(join(mnt, name), 'w');
      writeFileSync(fd, data);
      fsyncSync(fd);
      closeSync(fd);
      files.set(name, sha(data));
    };
    for (let i = 0; i < 40; i++) writeSynced(`f${i}.bin`, 4096 + i * 9973);
    // A writer keeps rewriting a 32 MiB file (unsynced, round and round) while the snapshot is taken.
    let writing = true;
    const appender = (async () => {
      const fd = openSync(join(mnt, 'busy.log'), 'w');
      const chunk = randomBytes(64 * 1024);
      let n = 0;
      while (writing) {
        writeSync(fd, chunk, 0, chunk.length, (n % 512) * chunk.length);
        if (++n % 16 === 0) await new Promise((r) => setTimeout(r, 1));
      }
      closeSync(fd);
    })();
    await new Promise((r) => setTimeout(r, 200));
    const snap = await d.ctlJson<SnapshotMessage>(['snapshot', 'create', 'src-snap', '--volume', 'src']);
    writing = false;
    await appender;
    t.true(snap.readyToUse);
    writeSynced('after.bin', 8192); // written after the snapshot: must not be in the restore
    files.delete('after.bin');

    const restored = await d.ctlJson<VolumeMessage>(['snapshot', 'restore', 'src-snap', 'dst', '--no-wait']);
    t.is(restored.name, 'dst');
    // Staged next to its still-mounted source: for xfs both have one UUID, which the stager allows.
    // The restore is crash-consistent: mounting replays the journal, as after a power cut.
    ok(await csi.node.NodeStageVolume!({ volumeId: 'dst', stagingTargetPath: mnt2, volumeCapability: cap }));
    for (const [name, digest] of files) t.is(sha(readFileSync(join(mnt2, name))), digest, `${name} in the restored ${fs}`);
    t.false(existsSync(join(mnt2, 'after.bin')), 'a file written after the snapshot is not in it');
    ok(await csi.node.NodeUnstageVolume!({ volumeId: 'dst', stagingTargetPath: mnt2 }));
    const b = await d.ctlJson<AttachmentMessage>(['volume', 'attach', 'dst']);
    const checked = await (fs === 'ext4' ? execa('e2fsck', ['-fn', b.devicePath], { reject: false }) : execa('xfs_repair', ['-n', b.devicePath], { reject: false }));
    t.is(checked.exitCode, 0, `${fs} check of the restored volume:\n${checked.stdout}\n${checked.stderr}`);
    await d.ctl(['volume', 'detach', 'dst']);
  });
}
