/**
 * The controller role's volume service: the volume lifecycle and verification over etcd
 * and the node daemons' replica services (dialled over the peer port, with the peer TLS
 * credentials), with no pool, no replica service, no NBD and no node registration: a
 * controller is no data node, so placement never puts a replica on it. Export, unexport
 * and attach are the node daemons' work: here they answer UNIMPLEMENTED. Snapshots are
 * served: the barrier of a served volume runs on its engine's node (SnapshotVolume).
 */
import { PeerConnector } from '../cluster/replica-connector.js';
import { ClusterSnapshotService } from '../cluster/snapshot-service.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import { keys } from '../cluster/store/keys.js';
import { clusterCapacity, VolumeLifecycle } from '../cluster/volume-lifecycle.js';
import { VolumeVerifier } from '../cluster/volume-verifier.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import { Code, StorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { peerTlsConfig, type DaemonConfig } from './config.js';

/** How long the controller's readiness check waits for the cluster store. */
const STORE_PROBE_TIMEOUT_MS = 2000;

export interface ControllerPlane {
  volumes: VolumeApi;
  /** Snapshots: a barrier runs on the engine's node (SnapshotVolume), else the in-sync replicas are copied directly. */
  snapshots: ClusterSnapshotService;
  /** The replica services of the nodes (direct copies of volumes no engine serves). */
  connector: PeerConnector;
  /** True while the cluster store answers a read. */
  storeReachable(): Promise<boolean>;
  close(): void;
}

export function openControllerPlane(config: Readonly<DaemonConfig>, log: Logger, cluster: ClusterStore): ControllerPlane {
  const nodeId = config.nodeName as NodeId;
  const connector = new PeerConnector({
    nodeId, store: cluster, tls: peerTlsConfig(config) ?? { insecure: true }, transport: config.replicaTransport, log: log.child({ component: 'peers' }),
  });
  // No engines here: a snapshot of a served volume asks its engine's node over the peer port.
  const snapshots = new ClusterSnapshotService({ nodeId, store: cluster, controls: connector, log });
  const lifecycle = new VolumeLifecycle({
    nodeId, clusterName: config.clusterName, store: cluster, controls: connector, election: undefined,
    defaultReplicas: config.defaultReplicas, capacity: () => clusterCapacity(cluster, log), log, snapshots,
  });
  const verifier = new VolumeVerifier({ store: cluster, controls: connector, log });
  const noDataPlane = (what: string): Promise<never> => Promise.reject(new StorageError(Code.UNIMPLEMENTED,
    `this cairnd (${config.nodeName}) runs the controller role and has no data plane: ${what} on a node daemon`));
  const volumes: VolumeApi = {
    create: (name, sizeBytes, options, signal) => lifecycle.create(name, sizeBytes, options, signal),
    delete: (name, force, signal) => lifecycle.delete(name, force, signal),
    expand: (name, sizeBytes, signal) => lifecycle.expand(name, sizeBytes, signal),
    modify: (name, changes, signal) => lifecycle.modify(name, changes, signal),
    export: () => noDataPlane('export volumes'),
    unexport: () => noDataPlane('unexport volumes'),
    get: (name, signal) => lifecycle.get(name, signal),
    list: (signal) => lifecycle.list(signal),
    verify: (name, signal) => verifier.verify(name, signal),
    capacity: () => lifecycle.capacity(),
    clusterStatus: () => lifecycle.clusterStatus(),
    nodes: () => lifecycle.nodes(),
    publish: (name, nodeId, access, signal) => lifecycle.publish(name, nodeId, access, signal),
    unpublish: (name, nodeId, signal) => lifecycle.unpublish(name, nodeId, signal),
    listPage: (after, maxEntries, signal) => lifecycle.listPage(after, maxEntries, signal),
    placeableBytes: (query) => lifecycle.placeableBytes(query),
  };
  return {
    volumes, snapshots, connector,
    storeReachable: () => cluster.get(keys.leader('repair'), { timeoutMs: STORE_PROBE_TIMEOUT_MS }).then(() => true, () => false),
    close: () => connector.close(),
  };
}
