/**
 * The CSI gRPC server: the given services on one unix socket (the CSI_ENDPOINT that
 * kubelet and the sidecars dial). Start refuses a socket that another live process serves,
 * replaces a stale one, and creates the parent directory; the socket is made 0660 (owner
 * and group: kubelet and the sidecars run as root, or share the group). `close()` stops
 * taking calls, lets the calls in flight finish (up to a grace period, then cuts them), and
 * removes the socket file.
 */
import * as grpc from '@grpc/grpc-js';
import { chmodSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { Code, fromNodeError, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { CsiService } from './csi-call.js';

export interface CsiServerOptions {
  /** Absolute path of the unix socket ("unix://" prefix allowed, as in CSI_ENDPOINT). */
  socketPath: string;
  log: Logger;
  /** e.g. [identityService(...), nodeService(...)]; each service name at most once. */
  services: readonly CsiService[];
  /** How long close() lets calls in flight finish before cutting them; 10 s by default. */
  closeGraceMs?: number;
  /** Told of every call answered: its method, gRPC code name and duration (for /metrics). */
  onCall?: CsiCallObserver;
}

export type CsiCallObserver = (method: string, code: string, seconds: number) => void;

export interface CsiServer {
  readonly socketPath: string;
  /** Stops serving, drains calls in flight (up to closeGraceMs), removes the socket. Idempotent. */
  close(): Promise<void>;
}

export const CSI_SOCKET_MODE = 0o660;

export async function startCsiServer(options: CsiServerOptions): Promise<CsiServer> {
  const socketPath = options.socketPath.replace(/^unix:\/\//, '');
  if (!socketPath.startsWith('/')) throw new StorageError(Code.INVALID_ARGUMENT, `CSI socket path "${options.socketPath}" must be absolute`);
  const names = options.services.map((s) => s.name);
  if (new Set(names).size !== names.length) throw new StorageError(Code.INVALID_ARGUMENT, `a CSI service is given twice: ${names.join(', ')}`);

  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o750 });
  await clearStaleSocket(socketPath);
  const server = new grpc.Server();
  const { onCall } = options;
  for (const service of options.services) server.addService(service.definition, onCall ? observed(service.handlers, onCall) : service.handlers);
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(fromNodeError(err, `cannot listen on CSI socket ${socketPath}`)) : resolve()));
  });
  chmodSync(socketPath, CSI_SOCKET_MODE);
  options.log.info({ socket: socketPath, services: names }, 'csi server listening');

  let closing: Promise<void> | undefined;
  return {
    socketPath,
    close: () => (closing ??= shutdown(server, socketPath, options.closeGraceMs ?? 10_000, options.log)),
  };
}

/** The handlers of a service, each telling `onCall` how its call ended (every CSI method is unary). */
function observed(handlers: grpc.UntypedServiceImplementation, onCall: CsiCallObserver): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [method, handler] of Object.entries(handlers)) {
    const unary = handler as grpc.handleUnaryCall<unknown, unknown>;
    out[method] = ((call, callback) => {
      const started = performance.now();
      unary(call, (err, ...rest) => {
        onCall(method, grpc.status[err?.code ?? grpc.status.OK] ?? 'UNKNOWN', (performance.now() - started) / 1000);
        callback(err, ...rest);
      });
    }) as grpc.handleUnaryCall<unknown, unknown>;
  }
  return out;
}

/**
 * Removes a socket file nobody listens on (left by a killed daemon). A socket that accepts
 * a connection belongs to a live process: FAILED_PRECONDITION, nothing is touched. A path
 * that is not a socket is not ours to remove: FAILED_PRECONDITION too.
 */
async function clearStaleSocket(socketPath: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(socketPath).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw fromNodeError(err, `cannot inspect CSI socket path ${socketPath}`);
  }
  if (!isSocket) throw new StorageError(Code.FAILED_PRECONDITION, `CSI socket path ${socketPath} exists and is not a socket: remove it or choose another --csi-socket`);
  if (await answers(socketPath)) {
    throw new StorageError(Code.FAILED_PRECONDITION, `another process is serving CSI socket ${socketPath}: stop it first, or choose another --csi-socket`, { details: { socket: socketPath } });
  }
  rmSync(socketPath, { force: true });
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function shutdown(server: grpc.Server, socketPath: string, graceMs: number, log: Logger): Promise<void> {
  const drained = new Promise<boolean>((resolve) => server.tryShutdown(() => resolve(true)));
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), graceMs);
  });
  const clean = await Promise.race([drained, timedOut]);
  clearTimeout(timer);
  if (!clean) {
    log.warn({ socket: socketPath, graceMs }, 'csi calls still in flight after the grace period; cutting them');
    server.forceShutdown();
  }
  rmSync(socketPath, { force: true });
  log.info({ socket: socketPath }, 'csi server stopped');
}
