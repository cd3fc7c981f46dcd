/**
 * Picks the cluster store from config: etcd when endpoints are given, otherwise the
 * embedded SQLite store at `<data-dir>/cluster.db` (single node, the default).
 */
import { join } from 'node:path';
import type { Logger } from '../../common/log.js';
import type { ClusterStore } from './cluster-store.js';
import { EmbeddedStore } from './embedded-store.js';
import { EtcdStore } from './etcd-store.js';

export interface ClusterStoreConfig {
  /** Cluster name: keys live under /cairn/<cluster>/. */
  cluster: string;
  /** etcd client URLs; empty for the embedded store. */
  etcdEndpoints: readonly string[];
  /** The daemon's data dir, where the embedded store keeps cluster.db. */
  dataDir: string;
  /** Deadline of each etcd call; default 5000 ms. */
  callTimeoutMs?: number;
  etcdTls?: { caPem: Buffer; certPem?: Buffer; keyPem?: Buffer };
  log: Logger;
}

export function openClusterStore(config: ClusterStoreConfig): ClusterStore {
  const log = config.log.child({ component: 'cluster-store' });
  if (config.etcdEndpoints.length > 0) {
    return new EtcdStore({
      endpoints: config.etcdEndpoints,
      cluster: config.cluster,
      ...(config.callTimeoutMs === undefined ? {} : { callTimeoutMs: config.callTimeoutMs }),
      ...(config.etcdTls ? { tls: config.etcdTls } : {}),
      log,
    });
  }
  return EmbeddedStore.open({ path: join(config.dataDir, 'cluster.db'), cluster: config.cluster, log });
}
