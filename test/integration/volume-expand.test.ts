/**
 * Online volume expansion on a real cluster: two cairnd on real etcd (mutual TLS), an rf=2
 * volume exported on node 0 with a verified writer running. `cairnctl volume expand`
 * through node 1 (not the engine's node: the engine learns through its watch) grows both
 * replicas and then the volume; the connected writer sees no error, a new NBD connection
 * sees the new size and writes all of the new area, every acknowledged block reads back,
 * and `cairnctl volume verify` finds both replicas equal over the whole new size. With a
 * node down, the expansion is refused (UNAVAILABLE, naming the node) and changes nothing;
 * once it is back, it succeeds.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import type { VolumeMessage } from '../../src/cli/api-client.js';
import { Cluster } from '../helpers/cluster.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { NbdBlockClient, VerifiedWriter, type VerifyReport, type WriterStats } from '../helpers/verified-writer.js';

const test = anyTest as TestFn;
const missing = await etcdMissingReason();
const MiB = 1 << 20;

function assertNoClientErrors(t: ExecutionContext, stats: WriterStats, who: string): void {
  t.is(stats.errors, 0, `NBD client errors of ${who}: ${stats.errorDetails.join('; ')}`);
}

function assertClean(t: ExecutionContext, report: VerifyReport, who: string): void {
  t.deepEqual(report.mismatches, [], `blocks of ${who} that do not hold what was acknowledged`);
  t.true(report.blocksChecked > 0);
}

/** A new NBD connection to node i's export, once it shows at least `sizeBytes` (the engine there learns through its watch). */
async function connectedAtSize(t: ExecutionContext, c: Cluster, uri: string, sizeBytes: number): Promise<NbdBlockClient> {
  const client = await c.waitFor(async () => {
    const n = await NbdBlockClient.connectUri(uri);
    if (n.sizeBytes < sizeBytes) await n.close();
    return n;
  }, (n) => n.sizeBytes >= sizeBytes, `an NBD connection seeing ${sizeBytes} bytes`);
  t.teardown(() => client.close());
  return client;
}

async function assertReplicasAgree(t: ExecutionContext, c: Cluster, name: string): Promise<void> {
  const v = await c.verify(name);
  t.is(v.exitCode, 0, `volume verify ${name}: ${v.stderr}`);
  t.deepEqual(v.result?.mismatches, []);
  t.is(v.result?.replicas.length, 2, 'both replicas compared');
}

if (prerequisitesMet('online expansion tests', missing)) {
  test.serial('rf=2 on two nodes: a volume grows under a verified writer, new connections see and fill the new area, replicas agree', async (t) => {
    t.timeout(240_000);
    const c = await Cluster.start({ nodes: 2 });
    t.teardown(() => c.destroy({ failed: !t.passed }));
    await c.createVolume('grow', '32MiB', 2, 0, ['--prefer-node', 'node-0']);
    const exp = await c.exportVolume(0, 'grow');

    const old = await c.writer(0, 'grow');
    t.is(old.nbd.sizeBytes, 32 * MiB);
    old.start();
    await old.waitForAcks(200);

    const grown = await c.ctlJson<VolumeMessage>(1, ['volume', 'expand', 'grow', '64MiB']);
    t.is(grown.sizeBytes, 64 * MiB);
    const fresh = await connectedAtSize(t, c, exp.uri, 64 * MiB);
    t.is(fresh.sizeBytes, 64 * MiB);
    const tail = new VerifiedWriter(fresh, { blockBytes: 64 * 1024, firstBlock: 512, blockCount: 512 });
    assertNoClientErrors(t, await tail.writeAll(), 'the writer of the new area');
    await fresh.flush();
    await old.waitForAcks(old.stats().writesAcked + 100); // the old connection kept going meanwhile
    assertNoClientErrors(t, await old.stop(), 'the writer connected before the growth');
    await old.nbd.flush();

    assertClean(t, await old.verify(), 'the writer connected before the growth');
    assertClean(t, await tail.verify(), 'the writer of the new area');
    await assertReplicasAgree(t, c, 'grow');
    const v = await c.volume('grow', 0);
    t.is(v.health, 'healthy');
    t.is(v.sizeBytes, 64 * MiB);

    // A node holding a replica is down: refused, naming it, and nothing changes.
    await c.crash(1);
    await c.waitNodeUp(1, false, 30_000, 0);
    const refused = await c.ctl(0, ['volume', 'expand', 'grow', '96MiB']);
    t.is(refused.exitCode, 1);
    t.regex(refused.stderr, /node-1.*\(UNAVAILABLE\)/s);
    t.is((await c.volume('grow', 0)).sizeBytes, 64 * MiB);

    await c.restart(1);
    await c.waitNodeUp(1, true, 30_000, 0);
    await c.waitHealth('grow', 'healthy', 60_000, 0);
    t.is((await c.ctlJson<VolumeMessage>(0, ['volume', 'expand', 'grow', '96MiB'])).sizeBytes, 96 * MiB);
    const last = await connectedAtSize(t, c, exp.uri, 96 * MiB);
    await last.write(96 * MiB - 4096, Buffer.alloc(4096, 0x5a), true);
    t.deepEqual(await last.read(96 * MiB - 4096, 4096), Buffer.alloc(4096, 0x5a));
    // The engine's stream to node 1 died with it and is found broken only by this write: that
    // replica is faulted and rebuilt (its map covers the write at the new end), then compared.
    await c.waitHealth('grow', 'healthy', 120_000, 0);
    await assertReplicasAgree(t, c, 'grow');
  });
}
