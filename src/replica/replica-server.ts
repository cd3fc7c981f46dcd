/**
 * The replica service on the peer port: thin gRPC handlers over the replica manager, and
 * one IoStreamHandler per Io stream. Errors become gRPC statuses only here.
 */
import * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { SnapshotId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { PoolBackend } from '../pool/backend.js';
import { unary } from '../rpc/status.js';
import { widenConnectionWindows, widenStreamWindows } from '../rpc/http2-window.js';
import { peerServerCredentials, type PeerTlsConfig } from '../rpc/tls.js';
import type { NodeStore } from '../store/node-store.js';
import type { ReplicaLimits } from './io-types.js';
import { IoStreamHandler } from './io-stream-handler.js';
import { ReplicaManager, type ReplicaRefInput } from './replica-manager.js';
import { noPullHere, pullInput, type SnapshotPullHook } from './snapshot-pull.js';
import {
  replicaServerDefinition, snapshotCopyToWire, statusViewToWire, volumeSnapshotToWire, type AllocatedRangesMessage, type IoBatchMessage, type IoReplyBatchMessage,
  type MalformedFrame, type ReplicaRefMessage, type VolumeSnapshotView,
} from './replica-wire.js';

/**
 * Runs the write barrier of the volume's engine on this node (SnapshotVolume). The data
 * plane wires it to its engine host; it throws FAILED_PRECONDITION when no engine of the
 * volume runs here.
 */
export type VolumeSnapshotHook = (volumeId: VolumeId, snapshotId: SnapshotId, deadlineMs: number) => Promise<VolumeSnapshotView>;

/** The barrier's deadline when SnapshotVolume asks for none (deadline_ms 0). */
export const DEFAULT_SNAPSHOT_DEADLINE_MS = 10_000;

/** SnapshotVolume without an engine host here (the controller role, or a test server). */
export function noEngineHere(volumeId: string): StorageError {
  return new StorageError(Code.FAILED_PRECONDITION, `no engine of volume ${volumeId} runs on this node: ask the node that serves the volume`,
    { details: { volumeId } });
}

export interface ReplicaServerOptions {
  /** "host:port"; port 0 picks a free one. */
  listen: string;
  pool: PoolBackend;
  store: NodeStore;
  log: Logger;
  tls: PeerTlsConfig;
  /** Share a manager with other users of the same replicas; one is made otherwise. */
  manager?: ReplicaManager;
  limits?: Partial<ReplicaLimits>;
  /** How long close() lets calls finish before it cuts them; 5000 by default. */
  shutdownTimeoutMs?: number;
  /** SnapshotVolume: the barrier of this node's engine of the volume. Without it, FAILED_PRECONDITION. */
  volumeSnapshots?: VolumeSnapshotHook;
  /** PullSnapshotCopy: streams a snapshot copy here from another node. Without it, UNIMPLEMENTED. */
  snapshotPulls?: SnapshotPullHook;
  /** More services on the same port and credentials (the engine service, cairn.engine.v1). */
  services?: { definition: grpc.ServiceDefinition; handlers: grpc.UntypedServiceImplementation }[];
}

export interface ReplicaServer {
  port: number;
  manager: ReplicaManager;
  /** Stops accepting calls, lets running ones finish (up to the timeout), closes devices. */
  close(): Promise<void>;
}

interface Fenced { replica: ReplicaRefMessage | null; epoch: number }

function ref(m: { replica: ReplicaRefMessage | null }): ReplicaRefInput {
  return { replicaId: m.replica?.replicaId ?? '', volumeId: m.replica?.volumeId ?? '' };
}

function handlers(manager: ReplicaManager, log: Logger, volumeSnapshots: VolumeSnapshotHook | undefined, snapshotPulls: SnapshotPullHook | undefined): grpc.UntypedServiceImplementation {
  const onUnexpected = (err: unknown, method: string): void => log.error({ err, method }, 'replica call failed unexpectedly');
  const h = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req) => fn(req), onUnexpected, method);
  return {
    Io: ((call: grpc.ServerDuplexStream<IoBatchMessage | MalformedFrame, IoReplyBatchMessage>) => {
      new IoStreamHandler(call, manager, log);
    }) as grpc.handleBidiStreamingCall<IoBatchMessage | MalformedFrame, IoReplyBatchMessage>,
    CreateReplica: h('CreateReplica', async (req: Fenced & { sizeBytes: number; inSync: boolean }) =>
      statusViewToWire(await manager.create(ref(req), req.sizeBytes, req.epoch, req.inSync))),
    DeleteReplica: h('DeleteReplica', async (req: Fenced) => {
      await manager.delete(ref(req), req.epoch);
      return {};
    }),
    GetReplicaStatus: h('GetReplicaStatus', async (req: Fenced) => statusViewToWire(await manager.status(ref(req)))),
    ListReplicas: h('ListReplicas', async () => ({ replicas: (await manager.list()).map(statusViewToWire) })),
    ChecksumRange: h('ChecksumRange', async (req: Fenced & { offset: number; lengthBytes: number; regionBytes: number }) =>
      manager.checksumRange(ref(req), req.epoch, req.offset, req.lengthBytes, req.regionBytes)),
    AllocatedRanges: h('AllocatedRanges', async (req: Fenced & { offset: number; lengthBytes: number; maxExtents: number }): Promise<AllocatedRangesMessage> =>
      manager.allocatedRanges(ref(req), req.epoch, req.offset, req.lengthBytes, req.maxExtents)),
    StartRebuild: h('StartRebuild', async (req: Fenced & { totalBytes: number; restart: boolean }) =>
      statusViewToWire(await manager.startRebuild(ref(req), req.epoch, req.totalBytes, req.restart))),
    UpdateRebuildProgress: h('UpdateRebuildProgress', async (req: Fenced & { doneBytes: number; totalBytes: number; checkpoint: Buffer }) =>
      statusViewToWire(await manager.updateRebuildProgress(ref(req), req.epoch, { doneBytes: req.doneBytes, totalBytes: req.totalBytes, checkpoint: req.checkpoint }))),
    FinishRebuild: h('FinishRebuild', async (req: Fenced) => statusViewToWire(await manager.finishRebuild(ref(req), req.epoch))),
    ResizeReplica: h('ResizeReplica', async (req: Fenced & { sizeBytes: number }) =>
      statusViewToWire(await manager.resize(ref(req), req.sizeBytes, req.epoch))),
    SnapshotReplica: h('SnapshotReplica', async (req: Fenced & { snapshotId: string; cutOnly: boolean }) =>
      snapshotCopyToWire(await manager.snapshot(ref(req), req.epoch, req.snapshotId, { cutOnly: req.cutOnly === true }))),
    DeleteSnapshotCopy: h('DeleteSnapshotCopy', async (req: { snapshotId: string }) => {
      await manager.deleteSnapshotCopy(req.snapshotId);
      return {};
    }),
    ListSnapshotCopies: h('ListSnapshotCopies', async () => ({ copies: (await manager.listSnapshotCopies()).map(snapshotCopyToWire) })),
    CreateReplicaFromSnapshot: h('CreateReplicaFromSnapshot', async (req: Fenced & { sizeBytes: number; snapshotId: string }) =>
      statusViewToWire(await manager.createReplicaFromSnapshot(ref(req), req.sizeBytes, req.epoch, req.snapshotId))),
    SnapshotVolume: h('SnapshotVolume', async (req: { volumeId: string; snapshotId: string; deadlineMs: number }) => {
      if (!req.volumeId || !req.snapshotId) throw new StorageError(Code.INVALID_ARGUMENT, 'SnapshotVolume needs a volume id and a snapshot id');
      if (!volumeSnapshots) throw noEngineHere(req.volumeId);
      const view = await volumeSnapshots(req.volumeId as VolumeId, req.snapshotId as SnapshotId, req.deadlineMs || DEFAULT_SNAPSHOT_DEADLINE_MS);
      return volumeSnapshotToWire(view);
    }),
    PullSnapshotCopy: h('PullSnapshotCopy', async (req: { snapshotId: string; volumeId: string; sizeBytes: number; sourceNodeId: string }) => {
      const input = pullInput(req);
      if (!snapshotPulls) throw noPullHere(input.snapshotId);
      return snapshotCopyToWire(await snapshotPulls(input));
    }),
  };
}

function bind(server: grpc.Server, listen: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, credentials, (err, port) => {
      if (err) reject(new StorageError(Code.UNAVAILABLE, `cannot listen for peers on ${listen}: ${err.message}`, { cause: err }));
      else resolve(port);
    });
  });
}

export async function startReplicaServer(opts: ReplicaServerOptions): Promise<ReplicaServer> {
  const log = opts.log;
  const manager = opts.manager ?? new ReplicaManager({ pool: opts.pool, store: opts.store, log, limits: opts.limits });
  const credentials = peerServerCredentials(opts.tls, log);
  const server = new grpc.Server({
    'grpc.max_receive_message_length': manager.limits.maxFrameBytes,
    'grpc.max_send_message_length': manager.limits.maxFrameBytes,
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
  });
  server.addService(replicaServerDefinition(), handlers(manager, log, opts.volumeSnapshots, opts.snapshotPulls));
  for (const service of opts.services ?? []) server.addService(service.definition, service.handlers);
  const widened = widenStreamWindows(server);
  const port = await bind(server, opts.listen, credentials);
  if (!widened || !widenConnectionWindows(server)) log.warn('cannot widen the peer port\'s HTTP/2 windows (grpc-js internals changed); replicated throughput is capped by 64 KiB windows');
  log.info({ listen: opts.listen, port, tls: opts.tls.insecure !== true }, 'replica service listening');
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => server.forceShutdown(), opts.shutdownTimeoutMs ?? 5000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (!opts.manager) await manager.close();
      log.info({ port }, 'replica service stopped');
    })();
    return closing;
  };
  return { port, manager, close };
}
