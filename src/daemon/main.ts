/**
 * cairnd: wiring, signals and graceful shutdown. Start order: config, logger, pid file,
 * node store, pool, exports, recovery, API, HTTP. Shutdown runs it backwards; exports are
 * flushed before the pool and the store close.
 */
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { mkdirSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { createLogger, type Logger } from '../common/log.js';
import { VolumeService } from '../cluster/volume-service.js';
import { ExportManager } from '../engine/export-manager.js';
import { KernelAttacher } from '../engine/kernel-attach.js';
import { NodeStore } from '../store/node-store.js';
import { apiHandlers, apiServiceDefinition } from './api-service.js';
import { resolveConfig, SETTINGS, type DaemonConfig } from './config.js';
import { startHttpServer } from './http-server.js';
import { acquirePidFile } from './pid-file.js';
import { openPool } from './pool-factory.js';
import { VERSION } from './version.js';

function parseFlags(argv: string[]): Partial<Record<keyof DaemonConfig, string>> {
  const program = new Command('cairnd').description('Cairn storage daemon').version(VERSION);
  for (const s of SETTINGS) program.option(s.flag, `${s.description} [env ${s.env}; default ${s.defaultText}]`);
  program.parse(argv);
  const opts = program.opts<Record<string, string>>();
  const flags: Partial<Record<keyof DaemonConfig, string>> = {};
  for (const s of SETTINGS) {
    const name = s.flag.slice(2).split(' ')[0]!.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    if (opts[name] !== undefined) flags[s.key] = opts[name];
  }
  return flags;
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

async function run(config: Readonly<DaemonConfig>, log: Logger): Promise<void> {
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const releasePid = acquirePidFile(join(config.dataDir, 'cairnd.pid'));
  const store = NodeStore.open(join(config.dataDir, 'node.db'), log);
  const pool = await openPool(config, log);
  const exports = new ExportManager(config.nbdSocketDir, log.child({ component: 'nbd' }));
  const volumes = new VolumeService({ nodeName: config.nodeName, store, pool, exports, log });
  const attacher = new KernelAttacher({ log: log.child({ component: 'attach' }), runDir: join(config.dataDir, 'attach') });
  let ready = false;
  const startedAt = Date.now();

  const api = await startApi(config.apiSocket, apiHandlers({
    volumes, nodeName: config.nodeName, poolKind: pool.kind, poolPath: config.poolDir, startedAt,
    connectionCount: () => exports.connectionCount(), attacher, log,
  }));
  let http: Server | undefined;
  if (config.httpListen) http = await startHttpServer(config.httpListen, { volumes, isReady: () => ready, connectionCount: () => exports.connectionCount(), log });

  await volumes.recover();
  ready = true;
  log.info({ node: config.nodeName, version: VERSION, apiSocket: config.apiSocket, http: config.httpListen || 'off', pool: config.poolDir }, 'cairnd started');

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
    await new Promise<void>((resolve) => api.tryShutdown(() => resolve()));
    http?.close();
    await attacher.detachAll();
    await volumes.shutdown();
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
