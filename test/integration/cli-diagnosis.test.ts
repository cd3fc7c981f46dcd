/**
 * What cairnctl tells the operator when something is down: a real cairnd on a real etcd.
 * With etcd killed, cairnd is up and says that the cluster store is unavailable (a
 * structured reason, not message text); with cairnd stopped, cairnctl says that the daemon
 * cannot be reached. The two must never be confused.
 */
import test from 'ava';
import { Cluster } from '../helpers/cluster.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const COMMANDS: string[][] = [['status'], ['volume', 'list'], ['volume', 'inspect', 'db']];

if (prerequisitesMet('cairnctl diagnosis with etcd down', await etcdMissingReason())) {
  test.serial('etcd down: cairnctl says the cluster store is unavailable; cairnd down: it says the daemon is unreachable', async (t) => {
    const cluster = await Cluster.start({ nodes: 1, tls: 'insecure' });
    let failed = true;
    t.teardown(() => cluster.destroy({ failed }));
    const created = await cluster.ctl(0, ['volume', 'create', 'db', '--size', '64MiB', '--replicas', '1']);
    t.is(created.exitCode, 0, created.stderr);

    await cluster.stopEtcd();
    for (const args of COMMANDS) {
      const r = await cluster.ctl(0, args);
      const what = `cairnctl ${args.join(' ')} with etcd down`;
      t.is(r.exitCode, 1, what);
      t.regex(r.stderr, /the cluster store \(etcd\) is unavailable/, what);
      t.regex(r.stderr, /hint: cairnd is running but cannot reach etcd/, what);
      t.notRegex(r.stderr, /cannot reach cairnd/, what);
    }

    await cluster.node(0).stop();
    for (const args of COMMANDS) {
      const r = await cluster.ctl(0, args);
      const what = `cairnctl ${args.join(' ')} with cairnd stopped`;
      t.is(r.exitCode, 1, what);
      t.regex(r.stderr, /cannot reach cairnd at \S+/, what);
      t.notRegex(r.stderr, /etcd/, what);
    }
    failed = false;
  });
}
