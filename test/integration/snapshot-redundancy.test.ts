/**
 * Snapshot redundancy between real cairnd processes (issue 12, "Redundancy"): an rf=2
 * volume on nodes A and B of a three-node cluster is snapshotted (two copies); A is killed
 * and stays down; the repair leader replaces the volume's replica and brings the snapshot
 * back to two copies by streaming one to C over the data channel (A's copy dropped); then B,
 * the other original copy, is killed too, and the snapshot restored on C holds exactly the
 * bytes the volume held at the snapshot.
 */
import anyTest, { type TestFn } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { Cluster } from '../helpers/cluster.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const MiB = 1 << 20;
const SIZE = 64 * MiB;

/** `cairnctl -o json snapshot inspect` output (the API's Snapshot message). */
interface SnapshotMessage {
  id: string;
  name: string;
  state: string;
  readyToUse: boolean;
  copiesWanted: number;
  copies: { nodeId: string; replicaId: string; nodeUp: boolean }[];
}

/** sha256 of the whole volume, read in 4 MiB requests. */
async function shaOf(read: (offset: number, length: number) => Promise<Buffer>): Promise<string> {
  const h = createHash('sha256');
  for (let at = 0; at < SIZE; at += 4 * MiB) h.update(await read(at, 4 * MiB));
  return h.digest('hex');
}
const copyNodes = (s: SnapshotMessage): string[] => s.copies.map((c) => c.nodeId).sort();

const etcdMissing = await etcdMissingReason();

if (prerequisitesMet('snapshot redundancy tests', etcdMissing)) {
  test.serial('redundancy: a node holding a copy is lost, repair streams the snapshot to another node, and it restores byte for byte after the other original copy is lost too', async (t) => {
    t.timeout(300_000);
    const c = await Cluster.start({ nodes: 3, flags: { '--repair-wait-ms': '3000' } });
    t.teardown(() => c.destroy({ failed: !t.passed }));

    const placed = await c.createVolume('src', '64MiB', 2, 0, ['--prefer-node', 'node-0']);
    const [a, b] = [0, 1, 2].filter((i) => Cluster.replicaOn(placed, i));
    const cNode = [0, 1, 2].find((i) => !Cluster.replicaOn(placed, i))!;
    t.is(a, 0, 'the preferred node holds a replica');
    t.truthy(b !== undefined && cNode !== undefined);

    // Data in a few places with holes between them (8 MiB in all), then read the whole volume back.
    await c.exportVolume(a!, 'src');
    const nbd = await c.nbd(a!, 'src');
    for (const at of [0, 9 * MiB, 30 * MiB, 62 * MiB]) await nbd.write(at, randomBytes(2 * MiB));
    await nbd.flush();
    const expected = await shaOf((o, l) => nbd.read(o, l));

    const taken = await c.ctlJson<SnapshotMessage>(a!, ['snapshot', 'create', 'redundant', '--volume', 'src']);
    t.true(taken.readyToUse);
    t.is(taken.copiesWanted, 2);
    t.deepEqual(copyNodes(taken), [c.nodeName(a!), c.nodeName(b!)].sort(), 'a copy on each replica\'s node');
    // Writes after the snapshot must not reach it.
    await nbd.write(0, randomBytes(MiB));
    await nbd.flush();
    await nbd.close();
    t.is((await c.ctl(a!, ['volume', 'unexport', 'src'])).exitCode, 0);

    await c.crash(a!);
    const repaired = await c.waitFor(() => c.ctlJson<SnapshotMessage>(cNode, ['snapshot', 'inspect', 'redundant']),
      (s) => copyNodes(s).join() === [c.nodeName(b!), c.nodeName(cNode)].sort().join() && s.copies.every((x) => x.nodeUp),
      `snapshot copies on node-${b} and node-${cNode} (node-${a}'s dropped)`, 120_000);
    t.is(repaired.copiesWanted, 2);
    t.true(repaired.readyToUse);
    const volume = await c.waitFor(() => c.volume('src', cNode), (v) => !Cluster.replicaOn(v, a!) && Cluster.replicaOn(v, cNode) !== undefined,
      `the replica on node-${a} replaced by one on node-${cNode}`, 60_000);
    t.is(volume.replicas.length, 2);

    // The copy was streamed: only the allocated ranges crossed (8 MiB written, not 64), and checked.
    const pulled = c.events(cNode).find((e) => e.msg === 'snapshot copy pulled' && e.snapshot === repaired.id);
    t.truthy(pulled, `node-${cNode} logged the pull`);
    t.true(Number(pulled!.copiedBytes) >= 8 * MiB - MiB && Number(pulled!.copiedBytes) < 16 * MiB, `copied ${String(pulled!.copiedBytes)} bytes`);
    t.log(`pull on node-${cNode}: ${String(pulled!.copiedBytes)} bytes in ${String(pulled!.ms)} ms`);

    // The other original copy is lost too: the streamed one alone restores the snapshot.
    await c.crash(b!);
    await c.waitNodeUp(b!, false, 30_000, cNode);
    const r = await c.ctl(cNode, ['-o', 'json', 'snapshot', 'restore', 'redundant', 'restored', '--replicas', '1', '--prefer-node', c.nodeName(cNode), '--no-wait']);
    t.is(r.exitCode, 0, r.stderr);
    await c.exportVolume(cNode, 'restored');
    const back = await c.nbd(cNode, 'restored');
    t.is(await shaOf((o, l) => back.read(o, l)), expected, 'the restored volume holds the bytes of the snapshot');
    await back.close();
  });

  test.serial('restore across nodes: a snapshot of a volume on nodes A and B restored into a volume on node C only (cairnctl --on-node): the fill crosses the data channel, the seed on a copy node goes, the bytes are the snapshot\'s', async (t) => {
    t.timeout(300_000);
    // The default repair wait (5 min): with a short one, a loaded machine may not start the
    // fill of node C's replica before the repair loop replaces it, as faulted too long, on
    // another node.
    const c = await Cluster.start({ nodes: 3 });
    t.teardown(() => c.destroy({ failed: !t.passed }));
    const placed = await c.createVolume('ab', '64MiB', 2, 0, ['--prefer-node', 'node-0']);
    const a = [0, 1, 2].find((i) => Cluster.replicaOn(placed, i))!;
    const cNode = [0, 1, 2].find((i) => !Cluster.replicaOn(placed, i))!;
    await c.exportVolume(a, 'ab');
    const nbd = await c.nbd(a, 'ab');
    for (const at of [0, 17 * MiB, 40 * MiB, 61 * MiB]) await nbd.write(at, randomBytes(3 * MiB));
    await nbd.flush();
    const expected = await shaOf((o, l) => nbd.read(o, l));
    const taken = await c.ctlJson<SnapshotMessage>(a, ['snapshot', 'create', 'ab-snap', '--volume', 'ab']);
    t.false(copyNodes(taken).includes(c.nodeName(cNode)), 'node C holds no copy');
    await nbd.write(17 * MiB, randomBytes(MiB)); // after the snapshot: not in the restore
    await nbd.close();

    // Waits (the progress goes to stderr) until the replica on C is in sync.
    const r = await c.ctl(a, ['-o', 'json', 'snapshot', 'restore', 'ab-snap', 'on-c', '--replicas', '1', '--on-node', c.nodeName(cNode)]);
    t.is(r.exitCode, 0, r.stderr);
    const onC = await c.waitFor(() => c.volume('on-c'), (v) => v.replicas.length === 1 && Cluster.replicaOn(v, cNode) !== undefined,
      'the restored volume on node C only (the seed replica on a copy node removed)', 120_000);
    t.is(onC.replicas.length, 1);
    await c.exportVolume(cNode, 'on-c');
    const back = await c.nbd(cNode, 'on-c');
    t.is(await shaOf((o, l) => back.read(o, l)), expected, 'node C\'s replica holds the bytes of the snapshot');
    await back.close();

    // A required node that does not exist: RESOURCE_EXHAUSTED naming it, nothing made.
    const bad = await c.ctl(a, ['snapshot', 'restore', 'ab-snap', 'nowhere', '--replicas', '1', '--on-node', 'no-such-node', '--no-wait']);
    t.not(bad.exitCode, 0);
    t.regex(bad.stderr, /no-such-node/);
    t.false((await c.ctlJson<{ name: string }[]>(a, ['volume', 'list'])).some((v) => v.name === 'nowhere'));
  });
}
