/**
 * Synchronous replication across real cairnd processes (issue 4): replicas agree under
 * load, a replica killed under load costs the client nothing and comes back by copying
 * only what it missed, an interrupted rebuild resumes, a failed-over volume fences its old
 * engine, an engine node's death loses no acknowledged write, an etcd outage does not stop
 * I/O, and a replica whose disk fills up leaves the volume degraded but serving.
 *
 * Every scenario runs its own cluster (one etcd, N cairnd on loopback, mutual TLS between
 * peers) and a checksummed writer (test/helpers/verified-writer.ts) over NBD. Outcomes
 * only: bytes read back, exit codes, states; durations are logged, never asserted.
 *
 * What these tests assume of the daemon (for the lead to align; each is marked where used):
 * (A1) `cairnctl -o json volume inspect` prints the API Volume message: health
 *      'healthy' | 'degraded' | 'faulted'; replicas[].nodeName 'node-<i>', state 'in-sync' |
 *      'rebuilding' | 'faulted', reason (text, '' while in sync), rebuild
 *      { doneBytes, totalBytes, bytesPerSecond } | null, dirtyBytes (> 0 once a faulted
 *      replica missed writes); engineNode; export only on the node running the engine.
 * (A2) `volume create --replicas 3` on a 3-node cluster places one replica per node.
 * (A3) A replica that stops answering is faulted within --replica-timeout-ms and the
 *      engine goes on acknowledging writes with the others: the NBD client sees a stall,
 *      never an error.
 * (A4) When a faulted replica's node comes back (same node name, same peer address, same
 *      data dir) the engine of the volume rebuilds it by itself, copying only the regions
 *      it missed (its dirty-region map), and marks it in sync: health goes back to
 *      healthy with no command.
 * (A5) The engine logs (info, on the engine's node) msg 'replica rebuild copying' with
 *      totalBytes = bytes of the regions this run must copy, and msg 'replica rebuild
 *      finished' with copiedBytes and totalBytes (src/engine/rebuild.ts).
 * (A6) A rebuild cut off by the target's death leaves the replica faulted, and resumes from
 *      its checkpoint when the node is back: the next run's 'copying' totalBytes is smaller
 *      than the first run's. (totalBytes is per run, so "resumed" is asserted between runs,
 *      not as copiedBytes < totalBytes within one.)
 * (A7) `volume export --takeover --force` on another node works while the old engine's
 *      node is frozen (SIGSTOP): it bumps the epoch, faults the replica it cannot reach,
 *      and serves. The old engine, once thawed, fails (NBD error, or drops the connection)
 *      any write it gets, within 30 s; nothing it accepts reaches an in-sync replica. The
 *      new engine later rebuilds the thawed node's replica (A4), in full.
 * (A8) `volume export --takeover` (no --force) succeeds once `node list` shows the old
 *      engine's node down.
 * (A9) After a takeover that follows an engine crash, the in-sync replicas agree (the new
 *      engine reconciles regions that may have had writes in flight when the old engine
 *      died, e.g. by copying them from one in-sync replica before serving). If the lead
 *      decides otherwise, drop the first `volume verify` of scenario e. The crashed node,
 *      restarted, does not take its engine back: its replica is rebuilt by node 1's engine.
 * (A10) With every replica in sync, the data path does not need etcd: 30 s without etcd
 *      cost the client nothing, and the cluster answers again once etcd is back.
 * (A11) A replica that fails a write with ENOSPC is faulted with a reason that says so
 *      (matches /ENOSPC|space/i); the client sees no error.
 * (A12) `volume verify` exits 0 when the in-sync replicas agree, 1 when not, and prints the
 *      VerifyResult with -o json. It is run here with the writers stopped.
 * (A13) Placement needs a node's reported free bytes to cover the volume size; the disk-full
 *      scenario therefore fills node 2's filesystem after the volume is created.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { mkdirSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import type { VolumeMessage } from '../../src/cli/api-client.js';
import { Cluster, type ClusterOptions } from '../helpers/cluster.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet, requiring } from '../helpers/prereq.js';
import { loopFsUnavailable, makeLoopFs } from '../helpers/loop-fs.js';
import { run } from '../helpers/run.js';
import { encodeBlock, NbdIoError, type VerifyReport, type WriterStats } from '../helpers/verified-writer.js';

const test = anyTest as TestFn;
const missing = await etcdMissingReason();
const noLoop = await loopFsUnavailable('ext4');
const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function startCluster(t: ExecutionContext, opts: ClusterOptions): Promise<Cluster> {
  const c = await Cluster.start(opts);
  t.teardown(() => c.destroy({ failed: !t.passed }));
  return c;
}

/** Creates `name` through node 0 and exports it there (the engine runs on node 0). */
async function createExported(c: Cluster, name: string, size: string, replicas: number): Promise<VolumeMessage> {
  await c.createVolume(name, size, replicas, 0, ['--prefer-node', 'node-0']);
  await c.exportVolume(0, name);
  return c.volume(name, 0);
}

function assertNoClientErrors(t: ExecutionContext, stats: WriterStats, when: string): void {
  t.is(stats.errors, 0, `NBD client errors ${when}: ${stats.errorDetails.join('; ')}`);
}

function assertClean(t: ExecutionContext, report: VerifyReport, when: string): void {
  t.deepEqual(report.mismatches, [], `blocks that do not hold what was acknowledged ${when}`);
  t.is(report.mismatchCount, 0);
  t.true(report.blocksChecked > 0, 'some blocks were checked');
}

async function assertReplicasAgree(t: ExecutionContext, c: Cluster, name: string, inSync: number, via?: number): Promise<void> {
  const v = await c.verify(name, via);
  t.is(v.exitCode, 0, `volume verify ${name}: ${v.stderr}`); // (A12)
  t.deepEqual(v.result?.mismatches, []);
  t.is(v.result?.replicas.length, inSync, 'in-sync replicas compared');
}

const nodesOf = (v: VolumeMessage): string[] => v.replicas.map((r) => r.nodeName).sort();
const stateOn = (v: VolumeMessage, i: number): string | undefined => Cluster.replicaOn(v, i)?.state;

if (prerequisitesMet('replication tests', missing)) {
  test.serial('a. replicas agree after 5 s of verified writes through NBD (rf=3)', async (t) => {
    t.timeout(120_000);
    const c = await startCluster(t, { nodes: 3 });
    const v = await createExported(c, 'agree', '64MiB', 3);
    t.deepEqual(nodesOf(v), ['node-0', 'node-1', 'node-2']); // (A2)
    t.is(v.health, 'healthy');
    t.true(v.replicas.every((r) => r.state === 'in-sync'));

    const w = await c.writer(0, 'agree');
    const stats = await w.runFor({ durationMs: 5000 });
    await w.nbd.flush();
    assertNoClientErrors(t, stats, 'while all replicas were healthy');
    t.log(`${stats.writesAcked} writes, ${stats.flushesAcked} flushes, ${stats.blocksTouched} blocks`);
    assertClean(t, await w.verify(), 'read back through node 0');
    await assertReplicasAgree(t, c, 'agree', 3);
    t.is((await c.volume('agree')).health, 'healthy');
  });

  test.serial('b. a replica killed under load: no client error, degraded, then rebuilt from its dirty regions only', async (t) => {
    t.timeout(240_000);
    const c = await startCluster(t, { nodes: 3 });
    const v = await createExported(c, 'kill', '128MiB', 3);
    // The writer keeps to the first 8 MiB, so the replica misses at most 8 regions.
    const w = await c.writer(0, 'kill', { blockCount: (8 * MiB) / 4096 });
    w.start();
    await w.waitForAcks(300);

    await c.crash(2);
    const ackedAtCrash = w.stats().writesAcked;
    const crashedAt = Date.now();
    const degraded = await c.waitFor(() => c.volume('kill', 0), (x) => x.health === 'degraded' && stateOn(x, 2) === 'faulted',
      'volume degraded with the node-2 replica faulted', 30_000); // (A3)
    t.log(`node-2 replica faulted ${Date.now() - crashedAt} ms after the kill: ${Cluster.replicaOn(degraded, 2)?.reason}`);
    await sleep(Math.max(0, 3000 - (Date.now() - crashedAt)));
    await w.waitForAcks(300, 30_000);
    t.true(w.stats().writesAcked > ackedAtCrash, 'writes went on after the kill');
    assertNoClientErrors(t, w.stats(), 'after a replica was killed');
    t.true(Cluster.replicaOn(degraded, 2)!.dirtyBytes > 0, 'the engine counts what node 2 missed');

    const mark = c.node(0).logMark();
    await c.restart(2);
    await c.waitHealth('kill', 'healthy', 120_000, 0); // (A4), writes still running
    const stats = await w.stop();
    await w.nbd.flush();
    assertNoClientErrors(t, stats, 'over the whole kill and rebuild');

    const finished = c.events(0, mark).filter((e) => e.msg === 'replica rebuild finished'); // (A5)
    t.is(finished.length, 1, 'one rebuild ran');
    const copied = Number(finished[0]?.copiedBytes);
    t.log(`rebuild copied ${copied} of ${v.sizeBytes} bytes`);
    t.true(copied > 0 && copied < v.sizeBytes / 4, `copiedBytes ${copied} is far below the volume's ${v.sizeBytes}`);

    assertClean(t, await w.verify(), 'after the rebuild');
    await assertReplicasAgree(t, c, 'kill', 3);
  });

  test.serial('c. a rebuild cut off by the target\'s death resumes where it stopped', async (t) => {
    t.timeout(300_000);
    // The rate is the engine's setting; 16 MiB/s makes the 256 MiB rebuild last ~16 s.
    const c = await startCluster(t, { nodes: 2, flags: { '--rebuild-rate': '16MiB' } });
    const v = await createExported(c, 'resume', '256MiB', 2);
    t.deepEqual(nodesOf(v), ['node-0', 'node-1']);
    // 1 MiB blocks: one writeAll fills every byte and dirties every region.
    const w = await c.writer(0, 'resume', { blockBytes: MiB, queueDepth: 4, flushEveryWrites: 16 });
    assertNoClientErrors(t, await w.writeAll(), 'filling the volume');

    await c.crash(1);
    assertNoClientErrors(t, await w.writeAll(), 'rewriting every region with node 1 down');
    await c.waitFor(() => c.volume('resume', 0), (x) => stateOn(x, 1) === 'faulted', 'node-1 replica faulted');

    const mark = c.node(0).logMark();
    await c.restart(1);
    const midway = await c.waitFor(() => c.volume('resume', 0), (x) => {
      const r = Cluster.replicaOn(x, 1)?.rebuild;
      return Boolean(r && r.doneBytes > 0 && r.doneBytes < r.totalBytes);
    }, 'the rebuild of node 1 under way', 60_000);
    await c.crash(1);
    t.log(`node 1 killed at ${JSON.stringify(Cluster.replicaOn(midway, 1)?.rebuild)}`);
    await c.waitFor(() => c.volume('resume', 0), (x) => stateOn(x, 1) === 'faulted', 'node-1 replica faulted again');
    await c.restart(1);
    await c.waitHealth('resume', 'healthy', 180_000, 0);

    const events = c.events(0, mark);
    const copying = events.filter((e) => e.msg === 'replica rebuild copying');
    const finished = events.filter((e) => e.msg === 'replica rebuild finished');
    t.true(copying.length >= 2, `rebuild runs started: ${copying.length}`);
    t.is(finished.length, 1, 'only the resumed run finished');
    const firstTotal = Number(copying[0]?.totalBytes);
    const lastTotal = Number(copying[copying.length - 1]?.totalBytes);
    t.is(firstTotal, v.sizeBytes, 'the first run had every region to copy');
    t.true(lastTotal < firstTotal, `the resumed run had less to copy (${lastTotal} < ${firstTotal})`); // (A6)
    const copied = Number(finished[0]?.copiedBytes);
    t.true(copied < v.sizeBytes, `the resumed run copied ${copied} bytes, less than the volume's ${v.sizeBytes}`);

    assertClean(t, await w.verify(), 'after the resumed rebuild');
    await assertReplicasAgree(t, c, 'resume', 2);
  });

  test.serial('d. fencing: after a forced takeover the frozen old engine cannot write, and the new one serves every block', async (t) => {
    t.timeout(180_000);
    const c = await startCluster(t, { nodes: 3 });
    const before = await createExported(c, 'fence', '64MiB', 3);
    const w = await c.writer(0, 'fence', { blockCount: (16 * MiB) / 4096 });
    assertNoClientErrors(t, await w.writeAll(), 'writing pattern A through node 0');
    const oldEngine = await c.nbd(0, 'fence', { ioTimeoutMs: 0 }); // kept for the write after the thaw

    c.pause(0);
    await c.exportVolume(1, 'fence', { takeover: true, force: true }); // (A7)
    w.switchTo(await c.nbd(1, 'fence'));
    assertNoClientErrors(t, await w.writeAll(), 'writing pattern B through node 1');
    const after = await c.volume('fence', 1);
    t.is(after.engineNode, 'node-1');
    t.true(after.epoch > before.epoch, `the epoch went up (${before.epoch} -> ${after.epoch})`);

    c.resume(0);
    const outcome = await Promise.race([
      oldEngine.write(0, encodeBlock(0xbadn, 0, 1, 4096)).then(() => 'acknowledged', (err: unknown) => err),
      sleep(30_000).then(() => 'no answer in 30 s'),
    ]);
    t.true(outcome instanceof NbdIoError, `a write through the fenced engine on node 0 must fail; it was ${String(outcome)}`);
    t.log(`write through the old engine: ${String(outcome)}`);

    const report = await w.verify(); // through node 1
    assertClean(t, report, 'read through node 1 after the thaw');
    t.is(report.blocksAtAcked, report.blocksChecked, 'every block holds pattern B');

    // The thawed node's replica comes back through a rebuild by the new engine.
    await c.waitHealth('fence', 'healthy', 120_000, 1);
    assertClean(t, await w.verify(), 'after node 0\'s replica was rebuilt');
    await assertReplicasAgree(t, c, 'fence', 3, 1);
  });

  test.serial('e. the engine node dies: after the takeover on another node every acknowledged write is there', async (t) => {
    t.timeout(180_000);
    const c = await startCluster(t, { nodes: 3 });
    await createExported(c, 'failover', '64MiB', 3);
    const w = await c.writer(0, 'failover', { blockCount: (16 * MiB) / 4096 });
    w.start();
    await w.waitForAcks(1000);
    await c.crash(0);
    const cut = await w.stop();
    t.log(`${cut.writesAcked} writes acknowledged; ${cut.errors} cut off by the crash (outcome unknown)`);

    await c.waitNodeUp(0, false, 30_000, 1);
    await c.exportVolume(1, 'failover', { takeover: true }); // (A8)
    w.switchTo(await c.nbd(1, 'failover'));
    assertClean(t, await w.verify(), 'read through node 1 after the failover');

    const more = await w.runFor({ durationMs: 2000 });
    t.is(more.errors, cut.errors, 'no client error on the new engine');
    assertClean(t, await w.verify(), 'after writing on through node 1');
    await assertReplicasAgree(t, c, 'failover', 2, 1); // (A9)

    // The old engine node returns: it does not take the volume back, its replica is rebuilt.
    await c.restart(0);
    const healthy = await c.waitHealth('failover', 'healthy', 120_000, 1);
    t.is(healthy.engineNode, 'node-1');
    assertClean(t, await w.verify(), 'after node 0 came back');
    await assertReplicasAgree(t, c, 'failover', 3, 1);
  });

  test.serial('f. etcd away for 30 s: writes go on without an error, and the cluster answers again once it is back', async (t) => {
    t.timeout(180_000);
    const c = await startCluster(t, { nodes: 3 });
    await createExported(c, 'no-etcd', '64MiB', 3);
    const w = await c.writer(0, 'no-etcd');
    w.start();
    await w.waitForAcks(300);

    await c.stopEtcd();
    const ackedAtStop = w.stats().writesAcked;
    await sleep(30_000);
    const during = w.stats();
    assertNoClientErrors(t, during, 'while etcd was away'); // (A10)
    t.true(during.writesAcked > ackedAtStop, `writes were acknowledged while etcd was away (${during.writesAcked - ackedAtStop})`);
    await c.startEtcd();

    const status = await c.waitFor(() => c.status(0), (s) => s.nodes.up === 3, 'cluster status with 3 nodes up', 60_000);
    t.is(status.volumes.total, 1);
    const stats = await w.stop();
    await w.nbd.flush();
    assertNoClientErrors(t, stats, 'over the whole outage');
    assertClean(t, await w.verify(), 'after the etcd outage');
    t.is((await c.volume('no-etcd', 0)).health, 'healthy');
    await assertReplicasAgree(t, c, 'no-etcd', 3);
  });

  requiring(noLoop, test.serial)('g. a replica\'s disk fills up: the client sees no error, that replica is faulted for lack of space', async (t) => {
    t.timeout(180_000);
    const fs = await makeLoopFs('ext4', 128 * MiB);
    t.teardown(() => fs.dispose()); // runs after the cluster's teardown (teardowns run last-in first-out)
    const pool2 = join(fs.mountPoint, 'pool');
    mkdirSync(pool2);
    const c = await startCluster(t, { nodes: 3, poolDir: (i) => (i === 2 ? pool2 : undefined) });
    await createExported(c, 'full', '64MiB', 3); // (A13): node 2 has room for it when placed...
    const { bavail, bsize } = statfsSync(fs.mountPoint);
    const leaveBytes = 8 * MiB;
    await run('fallocate', ['-l', String(bavail * bsize - leaveBytes), join(fs.mountPoint, 'filler')]); // ...but not any more

    const w = await c.writer(0, 'full', { blockBytes: 64 * 1024 });
    const stats = await w.writeAll(); // 64 MiB of data, 8 MiB of room on node 2
    assertNoClientErrors(t, stats, 'while node 2 ran out of space'); // (A11)
    const v = await c.waitFor(() => c.volume('full', 0), (x) => x.health === 'degraded' && stateOn(x, 2) === 'faulted', 'node-2 replica faulted');
    const reason = Cluster.replicaOn(v, 2)?.reason ?? '';
    t.regex(reason, /ENOSPC|space/i, 'the reason says the disk is full');
    t.log(`node-2 replica faulted: ${reason}`);
    assertClean(t, await w.verify(), 'with node 2 faulted');
    await assertReplicasAgree(t, c, 'full', 2);
  });

  test.serial('h. repair: a replica whose node stays down is replaced on another node and rebuilt, exported or not', async (t) => {
    t.timeout(240_000);
    const c = await startCluster(t, { nodes: 4, flags: { '--repair-wait-ms': '3000' } });
    // One volume served by node 0, one nobody exports (a rebuild-only engine must do its rebuild).
    await c.createVolume('served', '64MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.createVolume('idle', '64MiB', 3, 0, ['--prefer-node', 'node-0']);
    const placed = await c.volume('idle', 0);
    const served = await c.volume('served', 0);
    const victim = [1, 2, 3].find((i) => Cluster.replicaOn(placed, i) && Cluster.replicaOn(served, i))!;
    t.truthy(victim, 'both volumes have a replica on one node other than node 0');
    // Data in both volumes, written through node 0 (idle is exported only for that).
    await c.exportVolume(0, 'idle');
    const wi = await c.writer(0, 'idle', { blockCount: 4096 });
    await wi.writeAll();
    await wi.nbd.flush();
    await wi.nbd.close();
    t.is((await c.ctl(0, ['volume', 'unexport', 'idle'])).exitCode, 0);
    await c.exportVolume(0, 'served');
    const w = await c.writer(0, 'served', { blockCount: 4096 });
    w.start();
    await w.waitForAcks(200);

    await c.crash(victim);
    const spare = [1, 2, 3].find((i) => i !== victim && !Cluster.replicaOn(placed, i))!;
    for (const name of ['served', 'idle']) {
      const v = await c.waitFor(() => c.volume(name, 0), (x) => x.health === 'healthy' && !Cluster.replicaOn(x, victim) && Cluster.replicaOn(x, spare)?.state === 'in-sync',
        `${name}: the replica on node-${victim} replaced by one on node-${spare}, rebuilt and in sync`, 120_000);
      t.is(v.replicas.length, 3, `${name} keeps 3 replicas`);
      t.log(`${name}: replaced ${Cluster.replicaOn(name === 'idle' ? placed : served, victim)?.id ?? '?'} on node-${victim} with ${Cluster.replicaOn(v, spare)!.id} on node-${spare}`);
    }
    const stats = await w.stop();
    await w.nbd.flush();
    assertNoClientErrors(t, stats, 'while a replica was replaced');
    assertClean(t, await w.verify(), 'after the repair');
    await assertReplicasAgree(t, c, 'served', 3);
    await assertReplicasAgree(t, c, 'idle', 3);
    await c.waitFor(() => c.volume('idle', 0), (x) => x.engineNode === '', 'the rebuild-only engine of idle stopped once it was in sync');
    // The victim comes back: the replicas replaced while it was away are orphans, and go.
    await c.restart(victim, { args: ['--orphan-grace-ms', '2000'] });
    const gone = await c.waitFor(() => c.events(victim).filter((e) => e.msg === 'orphan replica deleted').map((e) => String(e.replica)).sort(),
      (ids) => ids.length >= 2, `node-${victim} deletes the two replicas it lost while away`, 60_000);
    t.deepEqual(gone, [Cluster.replicaOn(placed, victim)!.id, Cluster.replicaOn(served, victim)!.id].sort());
    await c.exportVolume(0, 'idle');
    wi.switchTo(await c.nbd(0, 'idle'));
    assertClean(t, await wi.verify(), 'idle, after its rebuild without an export');
  });

  // Bad peer input is covered by test/integration/replica-abuse.test.ts.
}
