/**
 * cairnd: wiring, signals and graceful shutdown. Start order: config, logger, pid file,
 * node store, pool, cluster store, replica service (peer port), API, HTTP, node
 * registration, repair leader election, recovery (engines of exported volumes restart).
 * Shutdown runs it backwards; engines flush every replica before the pool and the stores
 * close.
 */
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { mkdirSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { createLogger, type Logger } from '../common/log.js';
import { ClusterVolumeService } from '../cluster/cluster-volume-service.js';
import { LeaderElection } from '../cluster/leader-election.js';
import { importLegacyVolumes } from '../cluster/legacy-import.js';
import { NodeRegistry, type NodeCapacity, type NodeRegistration } from '../cluster/node-registry.js';
import { RepairLoop } from '../cluster/repair-loop.js';
import { ReplicaCollector } from '../cluster/replica-gc.js';
import { PeerConnector } from '../cluster/replica-connector.js';
import { openClusterStore } from '../cluster/store/open-cluster-store.js';
import { Code, isStorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import { ReplicaManager } from '../replica/replica-manager.js';
import { startReplicaServer } from '../replica/replica-server.js';
import { ExportManager } from '../engine/export-manager.js';
import { KernelAttacher } from '../engine/kernel-attach.js';
import { NodeStore } from '../store/node-store.js';
import { apiHandlers, apiServiceDefinition } from './api-service.js';
import { advertisedPeerAddress, flagsFromCommander, peerTlsConfig, resolveConfig, SETTINGS, type DaemonConfig } from './config.js';
import { startHttpServer } from './http-server.js';
import { acquirePidFile } from './pid-file.js';
import { openPool } from './pool-factory.js';
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

async function run(config: Readonly<DaemonConfig>, log: Logger): Promise<void> {
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const releasePid = acquirePidFile(join(config.dataDir, 'cairnd.pid'));
  const store = NodeStore.open(join(config.dataDir, 'node.db'), log);
  const pool = await openPool(config, log);
  const nodeId = config.nodeName as NodeId;
  const cluster = openClusterStore({ cluster: config.clusterName, etcdEndpoints: config.etcdEndpoints, dataDir: config.dataDir, log });
  const manager = new ReplicaManager({ pool, store, log: log.child({ component: 'replica' }) });
  const tls = peerTlsConfig(config);
  const peers = tls && config.peerListen !== '' ? await startReplicaServer({ listen: config.peerListen, pool, store, log: log.child({ component: 'replica' }), tls, manager }) : undefined;
  const peerAddress = peers ? advertisedPeerAddress(config, peers.port) : '';
  const connector = new PeerConnector({ nodeId, manager, store: cluster, tls: tls ?? { insecure: true }, log: log.child({ component: 'peers' }) });
  const exports = new ExportManager(config.nbdSocketDir, log.child({ component: 'nbd' }));
  const registry = new NodeRegistry(cluster, { ttlMs: config.nodeTtlMs, log: log.child({ component: 'registry' }) });
  const election = new LeaderElection(cluster, { role: 'repair', candidateId: nodeId, ttlMs: config.nodeTtlMs, log: log.child({ component: 'election' }) });
  const volumes = new ClusterVolumeService({
    nodeId, clusterName: config.clusterName, store: cluster, pool, connector, exports, dirtyMaps: store.dirtyMaps(), election,
    defaultReplicas: config.defaultReplicas, replicaTimeoutMs: config.replicaTimeoutMs, rebuildRateBytesPerSec: config.rebuildRateBytes, log,
  });
  const repair = new RepairLoop({ store: cluster, election, connector, volumes, repairWaitMs: config.repairWaitMs, log });
  const collector = new ReplicaCollector({ store: cluster, manager, graceMs: config.orphanGraceMs, log });
  const attacher = new KernelAttacher({ log: log.child({ component: 'attach' }), runDir: join(config.dataDir, 'attach') });
  let ready = false;
  const startedAt = Date.now();

  const api = await startApi(config.apiSocket, apiHandlers({
    volumes, nodeName: config.nodeName, poolKind: pool.kind, poolPath: config.poolDir, startedAt,
    connectionCount: () => exports.connectionCount(), attacher, log,
  }));
  let http: Server | undefined;
  if (config.httpListen) http = await startHttpServer(config.httpListen, { volumes, isReady: () => ready, connectionCount: () => exports.connectionCount(), log });

  const capacity = async (): Promise<NodeCapacity> => {
    const c = await pool.capacity();
    return { totalBytes: c.totalBytes, freeBytes: c.freeBytes };
  };
  await registerNode(registry, {
    nodeId, name: config.nodeName, peerAddress, ...(config.zone ? { zone: config.zone } : {}), labels: config.nodeLabels,
    capacity: await capacity(), version: VERSION,
  }, log);
  const capacityTimer = setInterval(() => {
    void capacity().then((c) => registry.updateCapacity(c)).catch((err: unknown) => log.debug({ err: (err as Error).message }, 'capacity update skipped'));
  }, 30_000);
  capacityTimer.unref();
  election.start();
  repair.start();
  collector.start();
  await importLegacyVolumes({ store, cluster, pool, nodeId, log });
  await volumes.recover();
  ready = true;
  log.info({
    node: config.nodeName, version: VERSION, apiSocket: config.apiSocket, http: config.httpListen || 'off', pool: config.poolDir,
    store: cluster.kind, cluster: config.clusterName, peer: peerAddress || 'off',
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
    clearInterval(capacityTimer);
    await new Promise<void>((resolve) => api.tryShutdown(() => resolve()));
    http?.close();
    await attacher.detachAll();
    await repair.close();
    await collector.close();
    await volumes.shutdown();
    await election.close();
    await registry.close();
    await peers?.close();
    connector.close();
    await manager.close();
    await cluster.close();
    await pool.close();
    store.close();
    rmSync(config.apiSocket, { force: true });
    releasePid();
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
  const log = createLogger({ level: config.logLevel, format: config.logFormat });
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
