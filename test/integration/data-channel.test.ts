/**
 * The replica data channel between real cairnd processes (issue 11): engines send block
 * I/O to remote replicas on it (the metrics of the engine's node count it), an old engine
 * frozen with writes in flight on its data connections cannot land any of them after a
 * takeover, and the data port refuses peers without a certificate of the cluster CA.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { Cluster } from '../helpers/cluster.js';
import { dialData, fuzzFrames, prng } from '../helpers/data-client.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';
import { encodeBlock } from '../helpers/verified-writer.js';

const test = anyTest as TestFn;
const missing = await etcdMissingReason();
const MiB = 1 << 20;
const BLOCK = 4096;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function startCluster(t: ExecutionContext): Promise<Cluster> {
  const c = await Cluster.start({ nodes: 3 });
  t.teardown(() => c.destroy({ failed: !t.passed }));
  return c;
}

/** `name{labels} value` samples of one metric in a Prometheus text body. */
function samples(body: string, name: string): { labels: string; value: number }[] {
  return body.split('\n').filter((l) => l.startsWith(`${name}{`)).map((l) => {
    const [labels, value] = [l.slice(name.length, l.lastIndexOf(' ')), l.slice(l.lastIndexOf(' ') + 1)];
    return { labels, value: Number(value) };
  });
}

if (prerequisitesMet('data channel tests', missing)) {
  test.serial('an old engine frozen with writes in flight: after the takeover and SIGCONT none of its writes reach a replica', async (t) => {
    t.timeout(240_000);
    const c = await startCluster(t);
    await c.createVolume('frozen', '64MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'frozen');
    const blocks = (16 * MiB) / BLOCK;
    const w = await c.writer(0, 'frozen', { blockCount: blocks });
    t.is((await w.writeAll()).errors, 0, 'pattern A through node 0');

    // The engine on node 0 sent its writes to the other two replicas on the data channel.
    const metrics = await (await fetch(`http://127.0.0.1:${c.node(0).httpPort}/metrics`)).text();
    const sent = samples(metrics, 'cairn_replica_data_sent_bytes_total');
    t.is(sent.length, 2, `data channel counters of the two remote replicas:\n${metrics}`);
    for (const s of sent) t.true(s.value >= 16 * MiB, `bytes sent on the data channel ${s.labels}: ${s.value}`);
    t.true(samples(metrics, 'cairn_replica_data_latency_seconds_count').every((s) => s.value > 0));

    // 32 lanes of writes of a foreign pattern through the old engine, kept going until the freeze.
    const old = await c.nbd(0, 'frozen', { ioTimeoutMs: 0 });
    let pumping = true;
    let acked = 0;
    let failed = 0;
    const unsettled = new Set<number>();
    const outcomes: Promise<unknown>[] = [];
    let seq = 0;
    const lane = async (start: number): Promise<void> => {
      for (let b = start; pumping; b = (b + 32) % blocks) {
        const id = seq++;
        unsettled.add(id);
        const p = old.write(b * BLOCK, encodeBlock(0xbadn, b, 1, BLOCK)).then(() => acked++, (err: unknown) => {
          failed++;
          return err;
        }).finally(() => unsettled.delete(id));
        outcomes.push(p);
        if ((await p) instanceof Error) return;
      }
    };
    const lanes = Array.from({ length: 32 }, (_, i) => lane(i * 7));
    while (acked < 2000) await sleep(5);
    c.pause(0);
    // The lanes keep going through the freeze: a lane whose reply was already on its way
    // sends its next write to the frozen process, so every lane ends with one write
    // unanswered. Those the engine had read before it stopped are on its data connections.
    const ackedAtFreeze = acked;
    while (unsettled.size < 32 && failed === 0) await sleep(5);
    pumping = false;
    t.is(failed, 0, 'no write through node 0 failed before the freeze');
    t.is(unsettled.size, 32, 'every lane has a write in flight through the frozen engine');
    t.log(`old engine froze after ${ackedAtFreeze} writes were acknowledged (${acked - ackedAtFreeze} more answers were already on their way)`);

    await c.exportVolume(1, 'frozen', { takeover: true, force: true });
    w.switchTo(await c.nbd(1, 'frozen'));
    t.is((await w.writeAll()).errors, 0, 'pattern B through node 1');

    c.resume(0);
    // New writes through the thawed engine, beside the ones it had in flight.
    for (let b = 0; b < 64; b++) outcomes.push(old.write(b * BLOCK, encodeBlock(0xbadn, b, 2, BLOCK)).then(() => 'acknowledged', (err: unknown) => err));
    const settled = await Promise.race([Promise.all(outcomes).then(() => 'all settled'), sleep(60_000).then(() => 'still pending after 60 s')]);
    t.log(`old engine after the thaw: ${settled}`);
    await Promise.all(lanes.map((l) => Promise.race([l, sleep(1000)])));

    // Read back through the new engine: every block holds pattern B, none the old engine's.
    const report = await w.verify();
    t.deepEqual(report.mismatches, [], 'blocks that do not hold what node 1 acknowledged');
    t.is(report.blocksAtAcked, report.blocksChecked, 'every block holds pattern B');
    // And the replicas the new engine keeps in sync agree with each other byte for byte.
    const v = await c.verify('frozen', 1);
    t.is(v.exitCode, 0, `volume verify: ${v.stderr}`);
    t.deepEqual(v.result?.mismatches, []);
    await c.waitHealth('frozen', 'healthy', 120_000, 1);
    t.deepEqual((await w.verify()).mismatches, [], 'after node 0\'s replica was rebuilt');
    const all = await c.verify('frozen', 1);
    t.is(all.exitCode, 0);
    t.is(all.result?.replicas.length, 3);
    await old.destroy();
  });

  test.serial('the data port refuses a peer without a client certificate and one from another CA; the volume keeps serving', async (t) => {
    t.timeout(120_000);
    const c = await startCluster(t);
    await c.createVolume('guarded', '16MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'guarded');
    const w = await c.writer(0, 'guarded', { blockCount: 1024 });
    const hello = { replicaId: 'rep-x', volumeId: 'vol-x', epoch: 99 };
    const attempt = async (tls: { caFile: string; certFile?: string; keyFile?: string }): Promise<string> => {
      try {
        const client = await dialData(c.dataPort(1), tls);
        const reply = await client.handshake(hello);
        return `hello answered with code ${reply.code}`;
      } catch (err) {
        return `refused: ${(err as Error).message}`;
      }
    };
    const rogue = await c.pki!.rogue('node-9');
    const [none, foreign] = await Promise.all([attempt({ caFile: c.pki!.caFile }), attempt(rogue), w.writeAll()]);
    t.regex(none, /^refused/);
    t.regex(foreign, /^refused/);
    t.is(w.stats().errors, 0, 'the volume kept serving');
    t.deepEqual((await w.verify()).mismatches, []);
    await c.waitForEvent(1, (e) => e.msg === 'replica data connection refused');
  });

  test.serial('fuzz: an authenticated peer sends random and mutated frames to a live replica while another volume\'s verified writer runs on the same daemon', async (t) => {
    t.timeout(180_000);
    const c = await startCluster(t);
    await c.createVolume('target', '32MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.createVolume('safe', '32MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'target');
    await c.exportVolume(0, 'safe');
    const target = await c.volume('target', 0);
    const replica = Cluster.replicaOn(target, 1)!;
    const w = await c.writer(0, 'safe', { blockCount: 2048 });
    const peer = await c.pki!.node('node-9');
    const rand = prng(0xc0ffee);
    const mark = c.node(1).logMark();
    const fuzz = async (): Promise<void> => {
      for (let i = 0; i < 40; i++) {
        const client = await dialData(c.dataPort(1), peer);
        // Bound at the engine's own epoch (a newer one would fence it: that is a takeover, not bad input).
        const reply = await client.handshake({ replicaId: replica.id, volumeId: target.id, epoch: target.epoch });
        t.is(reply.code, 0, reply.message);
        client.raw(fuzzFrames(rand));
        client.raw(Buffer.alloc(64, 0xee));
        await client.end(); // a frame cut short, if the garbage did not end it first

      }
    };
    const [stats] = await Promise.all([w.runFor({ writes: 20_000 }), fuzz()]);
    t.is(stats.errors, 0, `the verified writer on the other volume: ${stats.errorDetails.join('; ')}`);
    t.deepEqual((await w.verify()).mismatches, []);
    const closed = c.events(1, mark).filter((e) => e.msg === 'replica data connection closed' && e.replica === replica.id);
    t.true(closed.length >= 40, `closed fuzzing connections logged: ${closed.length}`);
    t.true(closed.some((e) => e.reason === 'malformed-frame' && typeof e.field === 'string'), 'a malformed frame is closed naming the field');
    // The fuzzed volume's own engine still serves: its replicas stayed in sync and it takes writes.
    const nbd = await c.nbd(0, 'target');
    await nbd.write(0, Buffer.alloc(4096, 7));
    t.true((await nbd.read(0, 4096)).equals(Buffer.alloc(4096, 7)));
    await nbd.destroy();
    t.is((await c.volume('target', 0)).health, 'healthy');
  });

  test.serial('a replica daemon frozen under load (its data connection open, silent): faulted within the replica timeout, no client error, rebuilt after SIGCONT', async (t) => {
    t.timeout(240_000);
    const c = await startCluster(t);
    await c.createVolume('stall', '64MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'stall');
    const w = await c.writer(0, 'stall', { blockCount: (8 * MiB) / BLOCK });
    w.start();
    await w.waitForAcks(300);
    c.pause(2);
    const frozenAt = Date.now();
    const degraded = await c.waitFor(() => c.volume('stall', 0), (v) => Cluster.replicaOn(v, 2)?.state === 'faulted',
      'the frozen node\'s replica faulted', 60_000);
    t.log(`faulted ${Date.now() - frozenAt} ms after SIGSTOP (replica timeout 2000 ms): ${Cluster.replicaOn(degraded, 2)?.reason}`);
    await w.waitForAcks(300, 30_000); // writes go on without the frozen replica
    c.resume(2);
    await c.waitHealth('stall', 'healthy', 120_000, 0);
    const stats = await w.stop();
    t.is(stats.errors, 0, `client errors: ${stats.errorDetails.join('; ')}`);
    t.deepEqual((await w.verify()).mismatches, []);
    const v = await c.verify('stall', 0);
    t.is(v.exitCode, 0, v.stderr);
    t.is(v.result?.replicas.length, 3);
  });
}
