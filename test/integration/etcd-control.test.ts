/**
 * Node registry and leader election on a real etcd: every participant has its own etcd
 * client, as separate cairnd processes would.
 */
import anyTest, { type TestFn } from 'ava';
import { silentLogger } from '../../src/common/log.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { clusterControlConformance } from '../helpers/cluster-control-conformance.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const log = silentLogger();
const missing = await etcdMissingReason();

if (prerequisitesMet('etcd registry and election tests', missing)) {
  let etcd: EtcdProcess | undefined;
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });
  clusterControlConformance(test, {
    cluster: async () => {
      const cluster = uniqueCluster();
      return { handle: async () => new EtcdStore({ endpoints: [etcd!.endpoint], cluster, callTimeoutMs: 2000, log }), close: async () => undefined };
    },
    shortTtlMs: 2000,
  });
}
