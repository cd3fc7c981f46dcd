/**
 * The long soak of replication (not part of `npm test`; `npm run soak:replication`): a
 * verified writer runs against an rf=3 volume while, over and over, one replica's daemon
 * (never the engine's) is killed and restarted, sometimes before the previous rebuild has
 * finished. At the end every acknowledged write must read back and the replicas must
 * agree. CAIRN_SOAK_SECONDS sets the length (default 600).
 */
import anyTest, { type TestFn } from 'ava';
import { Cluster } from '../helpers/cluster.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const missing = await etcdMissingReason();
const seconds = Number(process.env.CAIRN_SOAK_SECONDS ?? 600);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

if (prerequisitesMet('replication soak', missing)) {
  test.serial(`replicas killed and restarted under a verified write load for ${seconds} s`, async (t) => {
    t.timeout((seconds + 300) * 1000);
    const c = await Cluster.start({ nodes: 3, flags: { '--rebuild-rate': '64MiB' } });
    t.teardown(() => c.destroy({ failed: !t.passed }));
    await c.createVolume('soak', '256MiB', 3, 0, ['--prefer-node', 'node-0']);
    await c.exportVolume(0, 'soak');
    const w = await c.writer(0, 'soak');
    w.start();
    const end = Date.now() + seconds * 1000;
    let cycles = 0;
    while (Date.now() < end) {
      const victim = 1 + (cycles % 2);
      await sleep(2000 + Math.floor(Math.random() * 8000));
      await c.crash(victim);
      await sleep(1000 + Math.floor(Math.random() * 5000));
      await c.restart(victim);
      cycles++;
      t.is(w.stats().errors, 0, `no client error after ${cycles} kill cycles`);
    }
    await c.waitHealth('soak', 'healthy', 300_000);
    const stats = await w.stop();
    await w.nbd.flush();
    t.is(stats.errors, 0, stats.errorDetails.join('; '));
    const report = await w.verify();
    t.deepEqual(report.mismatches, []);
    const v = await c.verify('soak');
    t.is(v.exitCode, 0, v.stderr);
    t.log(`${cycles} kill cycles, ${stats.writesAcked} writes acknowledged, ${report.blocksChecked} blocks verified`);
  });
}
