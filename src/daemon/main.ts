/**
 * cairnd: wiring, signals and graceful shutdown, by role (--role):
 * - `all` and `node`: config, logger, pid file, node store, pool, cluster store, data
 *   plane (replica service on the peer port, engines, NBD; data-plane.ts), API, HTTP, CSI,
 *   then node registration, repair leader election and recovery (engines of exported
 *   volumes restart);
 * - `controller`: config, logger, pid file, cluster store (etcd), the volume lifecycle
 *   over the node daemons' replica services (controller-plane.ts), API, HTTP, CSI. No
 *   pool, no node store, no replica service, no NBD.
 * Each part returns how to stop it; shutdown stops them in reverse start order (engines
 * flush every replica before the pool and the stores close).
 */
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { mkdirSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { createLogger, type Logger } from '../common/log.js';
import { acquirePidLock } from '../common/pid-lock.js';
import type { SnapshotService } from '../cluster/snapshot-types.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import { openClusterStore } from '../cluster/store/open-cluster-store.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import { apiHandlers, apiServiceDefinition, type ApiContext } from './api-service.js';
import { flagsFromCommander, peerTlsConfig, resolveConfig, SETTINGS, type DaemonConfig } from './config.js';
import { openControllerPlane } from './controller-plane.js';
import { startCsi, type CsiDeps } from './csi-start.js';
import { execTransport, openDataPlane, openNodeStorage } from './data-plane.js';
import { startHttpServer } from './http-server.js';
import { NodeMetrics } from './metrics/node-metrics.js';
import type { MetricSources } from './metrics/node-view.js';
import { NodeDrain } from './node-drain.js';
import { HookRunner } from '../snapshot/hook-runner.js';
import { RuleSnapshots } from '../snapshot/rule-snapshots.js';
import { SnapshotRuleStore } from '../snapshot/rule-store.js';
import { EnginePeers } from '../snapshot/engine-peers.js';
import { RoutedActions } from '../snapshot/remote-actions.js';
import { GroupRuleSnapshots } from '../snapshot/group-rules.js';
import { GroupCoordinator } from '../snapshot/group-coordinator.js';
import type { SnapshotControls } from '../cluster/snapshot-service.js';
import type { EngineLookup } from '../engine/engine-service.js';
import type { NodeId } from '../common/ids.js';
import { VERSION } from './version.js';

function parseFlags(argv: string[]): ReturnType<typeof flagsFromCommander> {
  const program = new Command('cairnd').description('Cairn storage daemon').version(VERSION);
  for (const s of SETTINGS) program.option(s.flag, `${s.description} [env ${s.env}; default ${s.defaultText}]`);
  program.parse(argv);
  return flagsFromCommander(program.opts<Record<string, unknown>>());
}

async function startApi(socketPath: string, handlers: grpc.UntypedServiceImplementation): Promise<grpc.Server> {
  rmSync(socketPath, { force: true });
  const server = new grpc.Server();
  server.addService(apiServiceDefinition(), handlers);
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
  return server;
}

/** Stops one started part; the parts stop in reverse start order. */
type Stop = () => void | Promise<void>;

/** What the shared front (API, HTTP, CSI) needs from a role. */
interface Front {
  volumes: VolumeApi;
  /** Snapshots, restore and clone: the cairnctl API's and the CSI Controller's. */
  snapshots: SnapshotService;
  /** Snapshot rules in the cluster store. */
  rules: SnapshotRuleStore;
  /** Snapshots under a rule (cairnctl snapshot create --rule, the class parameter cairn.dev/snapshot-rule). */
  ruleSnapshots: RuleSnapshots;
  api: Omit<ApiContext, 'volumes' | 'nodeName' | 'startedAt' | 'log'>;
  /** What /metrics reads on this role (metrics/node-view.ts). */
  metricSources: MetricSources;
  /** Whether the role can serve now: HTTP /readyz and CSI Probe. */
  ready: () => boolean | Promise<boolean>;
  /** Roles `node` and `all`: the CSI Node service's dependencies. */
  csiNode?: CsiDeps['node'];
  /** Roles `node` and `all`: the preStop drain (/drain). */
  drain?: NodeDrain;
}

/** The cairnctl API, the HTTP endpoints and the CSI server: the same in every role. */
async function startFront(config: Readonly<DaemonConfig>, log: Logger, front: Front, stops: Stop[]): Promise<void> {
  const api = await startApi(config.apiSocket, apiHandlers({
    ...front.api, volumes: front.volumes, snapshots: front.snapshots, rules: front.rules, ruleSnapshots: front.ruleSnapshots, nodeName: config.nodeName, startedAt: Date.now(), log,
  }));
  stops.push(async () => {
    await new Promise<void>((resolve) => api.tryShutdown(() => resolve()));
    rmSync(config.apiSocket, { force: true });
  });
  // /readyz answers synchronously: the role's readiness when it is a plain flag, else the last answer of its check.
  let lastReady = false;
  const isReady = (): boolean => {
    const r = front.ready();
    if (typeof r === 'boolean') return (lastReady = r);
    void r.then((v) => { lastReady = v; });
    return lastReady;
  };
  const metrics = new NodeMetrics({ nodeName: config.nodeName, role: config.role, version: VERSION, sources: front.metricSources, log: log.child({ component: 'metrics' }) });
  if (config.httpListen) {
    const http: Server = await startHttpServer(config.httpListen, { metrics, isReady, log, ...(front.drain ? { drain: front.drain } : {}) });
    stops.push(() => void http.close());
  }
  const csi = await startCsi(config.role, { socketPath: config.csiSocket, log, ready: front.ready, onCall: (method, code, seconds) => metrics.csiCall(method, code, seconds), ...(front.csiNode ? { node: front.csiNode } : {}),
    ...(config.role !== 'node' ? { controller: {
      volumes: front.volumes, snapshots: front.snapshots, ruleSnapshots: front.ruleSnapshots, ...(front.api.groups ? { groups: front.api.groups } : {}),
      ...(front.api.groupRules ? { groupRules: front.api.groupRules } : {}),
    } } : {}) });
  stops.push(() => csi.close());
}

/** Roles `node` and `all`: the data plane, then the front, then registration and recovery. */
async function runNode(config: Readonly<DaemonConfig>, log: Logger, stops: Stop[]): Promise<Record<string, unknown>> {
  const local = await openNodeStorage(config, log);
  stops.push(() => local.close());
  const cluster = openCluster(config, log, stops);
  // The peers' engine services exist once the plane does: its rules reach them through this.
  const late: { peers?: EnginePeers } = {};
  const plane = await openDataPlane(config, log, local, cluster, (node) => late.peers!.actions(node as NodeId));
  stops.push(() => plane.close());
  late.peers = enginePeers(config, log, cluster, plane.engineLookup, stops);
  const groups = groupCoordinator(cluster, plane.connector, plane.volumes.snapshots, late.peers, log);
  plane.onRepairPass(() => groups.collect());
  let recovered = false;
  // CSI serves from here on (Probe must answer while starting); NodeStage/NodeUnstage wait for this.
  let markRecovered!: () => void;
  const recovery = new Promise<void>((resolve) => { markRecovered = resolve; });
  const rules = new SnapshotRuleStore(cluster);
  const ruleSnapshots = new RuleSnapshots({
    nodeName: config.nodeName, store: cluster, snapshots: plane.volumes.snapshots, rules, volumes: plane.volumes, runner: plane.hooks, staged: (v) => plane.stager.get(v), log,
  });
  const drain = new NodeDrain(() => plane.volumes.host.writingEngines(), log.child({ component: 'drain' }));
  const groupRules = new GroupRuleSnapshots({
    nodeName: config.nodeName, store: cluster, groups, rules, volumes: plane.volumes, runner: plane.hooks, staged: (v) => plane.stager.get(v), log,
  });
  await startFront(config, log, {
    volumes: plane.volumes, snapshots: plane.volumes.snapshots, rules, ruleSnapshots, ready: () => recovered, drain, // /readyz also answers 503 while draining; CSI Probe (liveness) does not
    metricSources: {
      engines: () => plane.volumes.host.runningEngines(), exports: () => plane.exports.exportStats(), dataChannel: () => plane.connector.dataChannelStats(),
      replicas: () => plane.replicas.list(), pool: local.pool,
      // Snapshot figures come from the cluster store: only where the volume lifecycle is served (the single-node role all, not each node).
      ...(config.role === 'all' ? { snapshots: () => plane.volumes.snapshots.list() } : {}),
    },
    api: {
      poolKind: local.pool.kind, poolPath: config.poolDir, connectionCount: () => plane.exports.connectionCount(), attacher: plane.attacher,
      staged: (volume) => plane.stager.get(volume), groups, groupRules,
    },
    csiNode: {
      stager: plane.stager, recovery, volumes: plane.volumes, nodeName: config.nodeName, zone: config.zone, maxVolumesPerNode: config.maxVolumesPerNode,
      draining: () => drain.draining,
    },
  }, stops);
  // Stops run in reverse: a rule in progress thaws and ends its background sessions before anything else stops.
  stops.push(() => plane.hooks.shutdown());
  await plane.start();
  recovered = true;
  markRecovered();
  return { pool: config.poolDir, store: cluster.kind, peer: plane.peerAddress || 'off' };
}

/** Role `controller`: the volume lifecycle over etcd and the node daemons, and the front. */
async function runController(config: Readonly<DaemonConfig>, log: Logger, stops: Stop[]): Promise<Record<string, unknown>> {
  const cluster = openCluster(config, log, stops);
  const plane = openControllerPlane(config, log, cluster);
  stops.push(() => plane.close());
  const rules = new SnapshotRuleStore(cluster);
  // exec actions run from here in Kubernetes; command and fsfreeze on the volume's staging node, through its engine service.
  const exec = execTransport(config, log);
  const peers = enginePeers(config, log, cluster, undefined, stops);
  const routed = new RoutedActions({ nodeName: config.nodeName, remote: (node) => peers.actions(node as NodeId) });
  const hooks = new HookRunner({ log, command: routed, freezer: routed, ...(exec ? { exec } : {}) });
  const ruleSnapshots = new RuleSnapshots({ nodeName: config.nodeName, store: cluster, snapshots: plane.snapshots, rules, volumes: plane.volumes, log, runner: hooks });
  const groups = groupCoordinator(cluster, plane.connector, plane.snapshots, peers, log);
  const groupRules = new GroupRuleSnapshots({ nodeName: config.nodeName, store: cluster, groups, rules, volumes: plane.volumes, runner: hooks, log });
  await startFront(config, log, {
    volumes: plane.volumes, snapshots: plane.snapshots, rules, ruleSnapshots, ready: () => plane.storeReachable(), metricSources: { snapshots: () => plane.snapshots.list() },
    api: { poolKind: 'none', poolPath: '', connectionCount: () => 0, attacher: undefined, groups, groupRules },
  }, stops);
  // Stops run in reverse: a rule in progress ends its exec sessions before anything else stops.
  stops.push(() => hooks.shutdown());
  return { pool: 'none', store: cluster.kind };
}

/** The engine services of every node: this node's engines directly (`local`), the others' over the peer port. */
function enginePeers(config: Readonly<DaemonConfig>, log: Logger, cluster: ClusterStore, local: EngineLookup | undefined, stops: Stop[]): EnginePeers {
  const peers = new EnginePeers({ nodeId: config.nodeName as NodeId, store: cluster, tls: peerTlsConfig(config) ?? { insecure: true }, log, ...(local ? { local } : {}) });
  stops.push(() => peers.close());
  return peers;
}

/** The group snapshot coordinator of this cairnd. */
function groupCoordinator(cluster: ClusterStore, controls: SnapshotControls, snapshots: SnapshotService, peers: EnginePeers, log: Logger): GroupCoordinator {
  return new GroupCoordinator({ store: cluster, engines: (nodeId) => peers.engines(nodeId), controls, snapshots, log });
}

function openCluster(config: Readonly<DaemonConfig>, log: Logger, stops: Stop[]): ClusterStore {
  const cluster = openClusterStore({ cluster: config.clusterName, etcdEndpoints: config.etcdEndpoints, dataDir: config.dataDir, log });
  stops.push(() => cluster.close());
  return cluster;
}

async function run(config: Readonly<DaemonConfig>, log: Logger): Promise<void> {
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const pidFile = join(config.dataDir, 'cairnd.pid');
  const stops: Stop[] = [acquirePidLock(pidFile, { what: 'the pid file', held: (pid) => `another cairnd (pid ${pid}) is using this data directory (${pidFile}); stop it first` })];
  const started = config.role === 'controller' ? await runController(config, log, stops) : await runNode(config, log, stops);
  log.info({
    role: config.role, version: VERSION, apiSocket: config.apiSocket, csiSocket: config.csiSocket,
    http: config.httpListen || 'off', cluster: config.clusterName, ...started,
  }, 'cairnd started');

  let stopping = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'cairnd stopping');
    const timer = setTimeout(() => {
      log.error({ timeoutMs: config.shutdownTimeoutMs }, 'graceful shutdown timed out; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    for (const stop of stops.reverse()) await stop();
    log.info('cairnd stopped');
    log.flush();
    process.exit(0);
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => void shutdown(signal));
}

export async function main(argv: string[]): Promise<void> {
  let config: Readonly<DaemonConfig>;
  try {
    config = resolveConfig(parseFlags(argv));
  } catch (err) {
    process.stderr.write(`cairnd: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger({ level: config.logLevel, format: config.logFormat, node: config.nodeName });
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled promise rejection'));
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception; exiting');
    log.flush();
    process.exit(1);
  });
  try {
    await run(config, log);
  } catch (err) {
    log.fatal({ err }, 'cairnd could not start');
    log.flush();
    process.exit(1);
  }
}
