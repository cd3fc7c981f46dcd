/**
 * The data plane of a node daemon (roles `node` and `all`), in start order: the node's own
 * storage (node store, pool), then, over the cluster store, the replica manager and its
 * peer service, the engine host and volume service, NBD exports, node registration, the
 * repair leader election and loop, the replica and snapshot copy collectors, the kernel attacher and the CSI
 * stager (whose staged volumes are served again after the volumes' own recovery). `close`
 * runs it backwards: engines flush every replica before the pool and the stores close;
 * staged volumes keep their kernel devices across the stop (see `close`).
 */
import { join } from 'node:path';
import { ClusterVolumeService } from '../cluster/cluster-volume-service.js';
import { LeaderElection } from '../cluster/leader-election.js';
import { importLegacyVolumes } from '../cluster/legacy-import.js';
import { NodeRegistry, type NodeCapacity, type NodeRegistration } from '../cluster/node-registry.js';
import { RepairLoop } from '../cluster/repair-loop.js';
import { ReplicaCollector } from '../cluster/replica-gc.js';
import { PeerConnector, localControl } from '../cluster/replica-connector.js';
import type { EngineHost } from '../cluster/engine-host.js';
import { SnapshotCopyCollector } from '../cluster/snapshot-gc.js';
import { SnapshotPullService } from '../cluster/snapshot-pull.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { NodeId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { engineService, type EngineLookup } from '../engine/engine-service.js';
import { ExportManager } from '../engine/export-manager.js';
import { KernelAttacher } from '../engine/kernel-attach.js';
import { Stager, type VolumeExporter } from '../engine/stager.js';
import type { PoolBackend } from '../pool/backend.js';
import { ReplicaManager } from '../replica/replica-manager.js';
import { startReplicaDataServer, type ReplicaDataServer } from '../replica/data-server.js';
import { startReplicaServer, type VolumeSnapshotHook } from '../replica/replica-server.js';
import { noPullHere, type SnapshotPullHook } from '../replica/snapshot-pull.js';
import type { PeerTlsConfig } from '../rpc/tls.js';
import { FreezeJournal } from '../snapshot/freeze-journal.js';
import { HookRunner } from '../snapshot/hook-runner.js';
import { NodeCommandTransport, NodeFsFreezer } from '../snapshot/node-actions.js';
import { NodeActionHost, nodeActionHandlers } from '../snapshot/node-action-service.js';
import { RoutedActions, type RoutedActionsOptions } from '../snapshot/remote-actions.js';
import { ExecTransport } from '../snapshot/exec-transport.js';
import { KubeApi } from '../snapshot/kube-api.js';
import { KubeExecClient } from '../snapshot/kube-exec.js';
import { NodeStore } from '../store/node-store.js';
import { advertisedPeerAddress, peerTlsConfig, type DaemonConfig } from './config.js';
import { openPool } from './pool-factory.js';
import { VERSION } from './version.js';

/** This node's own storage: opened before the cluster store, closed after it. */
export interface NodeStorage {
  store: NodeStore;
  pool: PoolBackend;
  close(): Promise<void>;
}

export async function openNodeStorage(config: Readonly<DaemonConfig>, log: Logger): Promise<NodeStorage> {
  const store = NodeStore.open(join(config.dataDir, 'node.db'), log);
  const pool = await openPool(config, log);
  return {
    store, pool,
    async close() {
      await pool.close();
      store.close();
    },
  };
}

export interface DataPlane {
  volumes: ClusterVolumeService;
  exports: ExportManager;
  attacher: KernelAttacher;
  /** CSI staging on this node (NodeStageVolume / NodeUnstageVolume). */
  stager: Stager;
  /**
   * Snapshot rules' hooks (command and fsfreeze here for volumes staged here, on their
   * staging node for the others; exec once a Kubernetes client is given). The daemon calls `hooks.shutdown()` first when it stops, so
   * that nothing stays frozen or locked.
   */
  hooks: HookRunner;
  peerAddress: string;
  /** host:port others dial for this node's replica data channel; empty when it serves none. */
  dataAddress: string;
  /** Reaches replicas on this node and the others (its data channel counters feed /metrics). */
  connector: PeerConnector;
  /** The replicas this node hosts (their states feed /metrics). */
  replicas: ReplicaManager;
  /** This node's engines, for the engine service and the group coordinator. */
  engineLookup: EngineLookup;
  /** Runs `cleanup` on every repair pass while this node leads repair (group snapshots a crash left). */
  onRepairPass(cleanup: () => Promise<void>): void;
  /** Registers the node, starts the election, the repair loop and the collector, and restarts the engines of exported volumes. */
  start(): Promise<void>;
  /** Stops everything the data plane started, in reverse; the node storage and the cluster store are the caller's. */
  close(): Promise<void>;
}

/** The `exec` kind of snapshot rules, over the Kubernetes API when cairnd runs in a pod (config.kubernetes); undefined elsewhere. */
export function execTransport(config: Readonly<DaemonConfig>, log: Logger): ExecTransport | undefined {
  if (!config.kubernetes) return undefined;
  return new ExecTransport(new KubeExecClient(new KubeApi(config.kubernetes, log.child({ component: 'kube-api' })), log.child({ component: 'kube-exec' })));
}

/** Registers this node, retrying while the cluster store cannot be reached (start-up waits). */
async function registerNode(registry: NodeRegistry, registration: NodeRegistration, log: Logger): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await registry.register(registration);
      return;
    } catch (err) {
      if (!isStorageError(err, Code.UNAVAILABLE)) throw err;
      if (attempt === 1 || attempt % 10 === 0) log.warn({ attempt, err: (err as Error).message }, 'cannot register this node in the cluster store yet; retrying');
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

function startDataServer(listen: string, manager: ReplicaManager, tls: PeerTlsConfig, log: Logger): Promise<ReplicaDataServer> {
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  return startReplicaDataServer({ host, port: Number(listen.slice(colon + 1)), manager, tls, log });
}

/**
 * `remoteActions`: another node's `command` and `fsfreeze` actions (EnginePeers.actions), for
 * rules on volumes staged there.
 */
export async function openDataPlane(config: Readonly<DaemonConfig>, log: Logger, local: NodeStorage, cluster: ClusterStore,
  remoteActions: RoutedActionsOptions['remote']): Promise<DataPlane> {
  const { store, pool } = local;
  const nodeId = config.nodeName as NodeId;
  const manager = new ReplicaManager({ pool, store, log: log.child({ component: 'replica' }) });
  const tls = peerTlsConfig(config);
  // SnapshotVolume (from peers, and this node's own snapshot service through the local control)
  // runs the barrier of the engine here; the engine host exists once the volume service does.
  const late: { host?: EngineHost; pulls?: SnapshotPullService; actions?: NodeActionHost } = {};
  const volumeSnapshots: VolumeSnapshotHook = (volumeId, snapshotId, deadlineMs) => {
    if (!late.host) return Promise.reject(new StorageError(Code.UNAVAILABLE, `node ${nodeId} is still starting: no engine runs here yet; retry`));
    return late.host.snapshotVolume(volumeId, snapshotId, deadlineMs);
  };
  // The engine service (cairn.engine.v1): the barrier's phases of the engines here, for group snapshots.
  const engineLookup: EngineLookup = (volumeId) => {
    if (!late.host) throw new StorageError(Code.UNAVAILABLE, `node ${nodeId} is still starting: no engine runs here yet; retry`);
    return late.host.engineOf(volumeId);
  };
  const engines = engineService(engineLookup, log.child({ component: 'engine-service' }), nodeActionHandlers(() => late.actions, log));
  // PullSnapshotCopy (snapshot repair) streams through the connector, made after the server.
  const snapshotPulls: SnapshotPullHook = (input) => (late.pulls ? late.pulls.hook(input) : Promise.reject(noPullHere(input.snapshotId)));
  const peers = tls && config.peerListen !== ''
    ? await startReplicaServer({ listen: config.peerListen, pool, store, log: log.child({ component: 'replica' }), tls, manager, volumeSnapshots, snapshotPulls, services: [engines] })
    : undefined;
  const peerAddress = peers ? advertisedPeerAddress(config, peers.port) : '';
  const data = peers && tls && config.dataListen !== '' ? await startDataServer(config.dataListen, manager, tls, log.child({ component: 'replica-data' })) : undefined;
  // Others dial the host they reach the replica service at, on the data channel's port.
  const dataAddress = data ? `${peerAddress.slice(0, peerAddress.lastIndexOf(':'))}:${data.port}` : '';
  const connector = new PeerConnector({
    nodeId, manager, store: cluster, tls: tls ?? { insecure: true }, transport: config.replicaTransport, log: log.child({ component: 'peers' }), volumeSnapshots, snapshotPulls,
  });
  late.pulls = new SnapshotPullService({ nodeId, manager, connector, log });
  const exports = new ExportManager(config.nbdSocketDir, log.child({ component: 'nbd' }));
  const registry = new NodeRegistry(cluster, { ttlMs: config.nodeTtlMs, log: log.child({ component: 'registry' }) });
  const election = new LeaderElection(cluster, { role: 'repair', candidateId: nodeId, ttlMs: config.nodeTtlMs, log: log.child({ component: 'election' }) });
  const volumes = new ClusterVolumeService({
    nodeId, clusterName: config.clusterName, store: cluster, pool, connector, exports, dirtyMaps: store.dirtyMaps(), election,
    defaultReplicas: config.defaultReplicas, replicaTimeoutMs: config.replicaTimeoutMs, rebuildRateBytesPerSec: config.rebuildRateBytes, log,
  });
  late.host = volumes.host;
  const repair = new RepairLoop({ store: cluster, election, connector, volumes, repairWaitMs: config.repairWaitMs, log });
  const collector = new ReplicaCollector({ store: cluster, manager, graceMs: config.orphanGraceMs, log });
  const copyCollector = new SnapshotCopyCollector({ nodeId, store: cluster, control: localControl(manager), graceMs: config.orphanGraceMs, log });
  const attacher = new KernelAttacher({
    log: log.child({ component: 'attach' }), runDir: join(config.dataDir, 'attach'), reconnectS: Math.ceil(config.attachReconnectMs / 1000),
  });
  const exporter: VolumeExporter = {
    export: async (volume, signal, options) => {
      const { socketPath } = await volumes.export(volume, { readOnly: options?.readOnly === true }, signal);
      // The staged record keeps the volume's id next to its name (the CSI volume id).
      const { id } = await volumes.get(volume, signal);
      return { socketPath, volumeId: id as VolumeId };
    },
    unexport: (volume) => volumes.unexport(volume),
  };
  const stager = new Stager({ store, exporter, attacher, log: log.child({ component: 'stager' }) });
  const nodeActions = { nodeName: config.nodeName, staged: (volume: string) => stager.get(volume) };
  const freezer = new NodeFsFreezer({ ...nodeActions, journal: new FreezeJournal(join(config.dataDir, 'frozen'), log.child({ component: 'snapshot-rules' })) });
  const exec = execTransport(config, log);
  const command = new NodeCommandTransport(nodeActions);
  // The engine service runs other coordinators' actions on volumes staged here; this node's rules reach the others'.
  late.actions = new NodeActionHost({ command, freezer, log });
  const routed = new RoutedActions({
    nodeName: config.nodeName, local: { command, freezer, isStaged: (v) => stager.get(v)?.state === 'staged' }, remote: remoteActions,
  });
  const hooks = new HookRunner({ log, command: routed, freezer: routed, ...(exec ? { exec } : {}) });
  const capacity = async (): Promise<NodeCapacity> => {
    const c = await pool.capacity();
    return { totalBytes: c.totalBytes, freeBytes: c.freeBytes };
  };
  let capacityTimer: NodeJS.Timeout | undefined;

  return {
    volumes, exports, attacher, stager, hooks, peerAddress, dataAddress, connector, engineLookup, replicas: manager,
    onRepairPass: (cleanup) => repair.addCleanup(cleanup),
    async start() {
      await registerNode(registry, {
        nodeId, name: config.nodeName, peerAddress, ...(dataAddress ? { dataAddress } : {}), ...(config.zone ? { zone: config.zone } : {}), labels: config.nodeLabels,
        capacity: await capacity(), version: VERSION,
      }, log);
      capacityTimer = setInterval(() => {
        void capacity().then((c) => registry.updateCapacity(c)).catch((err: unknown) => log.debug({ err: (err as Error).message }, 'capacity update skipped'));
      }, 30_000);
      capacityTimer.unref();
      election.start();
      repair.start();
      collector.start();
      copyCollector.start();
      await importLegacyVolumes({ store, cluster, pool, nodeId, log });
      await volumes.recover();
      await stager.recover();
      // A cairnd killed mid-rule may have left a staged volume's filesystem frozen. Thawed once
      // the volumes are served again (a thaw may write to the device), without holding up the start.
      void freezer.thawLeftovers().catch((err: unknown) => log.error({ err }, 'thawing filesystems left frozen failed'));
    },
    async close() {
      clearInterval(capacityTimer);
      // Staged volumes stay attached: their filesystems are mounted, nbdfuse runs in its own
      // session and reconnects (retry filter) when the next cairnd serves the export again,
      // and the node store keeps their records for recover(). A SIGTERM (a DaemonSet rolling
      // update) must not pull the device from under a pod. Only attachments nothing
      // recorded (cairnctl volume attach) are detached.
      await attacher.detachAll((volume) => stager.get(volume) !== undefined);
      await repair.close();
      await collector.close();
      await copyCollector.close();
      await late.pulls?.close();
      await volumes.shutdown();
      await election.close();
      await registry.close();
      await data?.close();
      await peers?.close();
      connector.close();
      await manager.close();
    },
  };
}
