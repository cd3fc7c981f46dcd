import test from 'ava';
import { silentLogger } from '../../src/common/log.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import type { ClusterStore } from '../../src/cluster/store/cluster-store.js';
import { clusterControlConformance, CuttableStore } from '../helpers/cluster-control-conformance.js';

const log = silentLogger();

/** The embedded store is one per process: participants share it through handles that do not close it. */
clusterControlConformance(test, {
  cluster: async () => {
    const store = EmbeddedStore.open({ path: ':memory:', cluster: 'c', leaseCheckIntervalMs: 25, log });
    const handle = async (): Promise<ClusterStore> => new CuttableStore(store, { closeInner: false });
    return { handle, close: () => store.close() };
  },
  shortTtlMs: 1000,
});
