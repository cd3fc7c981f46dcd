/**
 * A client of a peer's replica service, for the engine and the control loops: promises for
 * the control calls and `openIoStream` for block I/O (see io-stream.ts).
 *
 * Errors are StorageErrors with the peer's gRPC code. A peer that cannot be reached (down,
 * refused our certificate, presented one our CA did not sign) is UNAVAILABLE; control
 * calls fail after `deadlineMs` (30 s by default).
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';
import { unaryCall } from '../rpc/unary-call.js';
import { peerClientWindowOptions } from '../rpc/http2-window.js';
import { peerChannelCredentials, type PeerTlsConfig } from '../rpc/tls.js';
import type { AllocatedRanges } from '../pool/backend.js';
import type { RebuildProgressRecord } from '../store/node-store.js';
import { DEFAULT_REPLICA_LIMITS } from './io-types.js';
import { IoStream, type IoStreamOptions } from './io-stream.js';
import type { SnapshotId, VolumeId } from '../common/ids.js';
import type { ChecksumRangeResult, ReplicaRefInput, ReplicaStatusView, SnapshotCallOptions, SnapshotCopyView } from './replica-manager.js';
import type { PullSnapshotCopyInput, SnapshotPuller } from './snapshot-pull.js';
import {
  IO_METHOD_PATH, checksumFromWire, refToWire, replicaServiceConstructor, snapshotCopyFromWire, statusViewFromWire, volumeSnapshotFromWire,
  type AllocatedRangesMessage, type ChecksumRangeMessage, type IoBatchMessage, type IoReplyBatchMessage, type ReplicaStatusMessage,
  type SnapshotCopyMessage, type SnapshotVolumeResponseMessage, type VolumeSnapshotView,
} from './replica-wire.js';

export interface ReplicaClientOptions {
  log?: Logger;
  /** Deadline of each control call; 30000 by default. */
  deadlineMs?: number;
  /** The name to check the server's certificate against, when it is not the dialled host. */
  serverName?: string;
  /** The largest reply frame accepted; the server's default frame limit by default. */
  maxFrameBytes?: number;
  /** Channel credentials made once by the caller (see peerChannelCredentials); made from `tls` when unset. */
  credentials?: grpc.ChannelCredentials;
}


/**
 * How long a PullSnapshotCopy, or a SnapshotReplica that waits for the whole copy, may run
 * when the caller gives no deadline: a copy of 1 TiB at 300 MB/s. A peer that goes away is
 * noticed sooner, by the channel's keepalive.
 */
export const DEFAULT_PULL_DEADLINE_MS = 60 * 60_000;

export class ReplicaClient implements SnapshotPuller {
  private readonly client: grpc.Client;
  private readonly deadlineMs: number;

  constructor(readonly address: string, tls: PeerTlsConfig, options: ReplicaClientOptions = {}) {
    const Ctor = replicaServiceConstructor();
    const frameBytes = options.maxFrameBytes ?? DEFAULT_REPLICA_LIMITS.maxFrameBytes;
    const channelOptions: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': frameBytes,
      'grpc.max_send_message_length': frameBytes,
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.keepalive_permit_without_calls': 1,
      ...peerClientWindowOptions(),
      // A peer that restarts is back within a second or so: redial quickly (grpc-js starts at 1 s).
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.min_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2000,
    };
    if (options.serverName) channelOptions['grpc.ssl_target_name_override'] = options.serverName;
    this.client = new Ctor(address, options.credentials ?? peerChannelCredentials(tls, options.log ?? silentLogger()), channelOptions);
    this.deadlineMs = options.deadlineMs ?? 30_000;
  }

  createReplica(ref: ReplicaRefInput, sizeBytes: number, epoch: number, inSync: boolean): Promise<ReplicaStatusView> {
    return this.status('CreateReplica', { replica: refToWire(ref), sizeBytes, epoch, inSync });
  }

  /** Not an error when the peer has no such replica. */
  async deleteReplica(ref: ReplicaRefInput, epoch: number): Promise<void> {
    await this.call('DeleteReplica', { replica: refToWire(ref), epoch });
  }

  /** `ref.volumeId` may be empty. */
  getReplicaStatus(ref: ReplicaRefInput): Promise<ReplicaStatusView> {
    return this.status('GetReplicaStatus', { replica: refToWire(ref) });
  }

  async listReplicas(): Promise<ReplicaStatusView[]> {
    const res = await this.call<{ replicas: ReplicaStatusMessage[] }>('ListReplicas', {});
    return res.replicas.map(statusViewFromWire);
  }

  async checksumRange(ref: ReplicaRefInput, epoch: number, offset: number, lengthBytes: number, regionBytes: number): Promise<ChecksumRangeResult> {
    return checksumFromWire(await this.call<ChecksumRangeMessage>('ChecksumRange', { replica: refToWire(ref), epoch, offset, lengthBytes, regionBytes }));
  }

  /** UNIMPLEMENTED from a peer that predates the call. */
  async allocatedRanges(ref: ReplicaRefInput, epoch: number, offset: number, lengthBytes: number, maxExtents = 0): Promise<AllocatedRanges> {
    const res = await this.call<AllocatedRangesMessage>('AllocatedRanges', { replica: refToWire(ref), epoch, offset, lengthBytes, maxExtents });
    return { extents: res.extents.map((e) => ({ offset: e.offset, lengthBytes: e.lengthBytes })), endOffset: res.endOffset };
  }

  startRebuild(ref: ReplicaRefInput, epoch: number, totalBytes: number, restart = false): Promise<ReplicaStatusView> {
    return this.status('StartRebuild', { replica: refToWire(ref), epoch, totalBytes, restart });
  }

  updateRebuildProgress(ref: ReplicaRefInput, epoch: number, progress: RebuildProgressRecord): Promise<ReplicaStatusView> {
    return this.status('UpdateRebuildProgress', { replica: refToWire(ref), epoch, ...progress });
  }

  finishRebuild(ref: ReplicaRefInput, epoch: number): Promise<ReplicaStatusView> {
    return this.status('FinishRebuild', { replica: refToWire(ref), epoch });
  }

  /** Grows the replica to `sizeBytes`; idempotent, never shrinks (OUT_OF_RANGE). */
  resizeReplica(ref: ReplicaRefInput, sizeBytes: number, epoch: number): Promise<ReplicaStatusView> {
    return this.status('ResizeReplica', { replica: refToWire(ref), sizeBytes, epoch });
  }

  /**
   * Copies the replica into the peer's copy of the snapshot; idempotent. A cut (`cutOnly`) is
   * a control call; without it the call answers once the copy is whole (a file pool's fill,
   * or a full copy where the pool cannot reflink), so it lasts as long as the copy takes:
   * its callers bound it (a snapshot's deadline, a group's finish).
   */
  async snapshotReplica(ref: ReplicaRefInput, epoch: number, snapshotId: SnapshotId, opts: SnapshotCallOptions = {}): Promise<SnapshotCopyView> {
    const cutOnly = opts.cutOnly === true;
    return snapshotCopyFromWire(await this.call<SnapshotCopyMessage>('SnapshotReplica', { replica: refToWire(ref), epoch, snapshotId, cutOnly }, cutOnly ? this.deadlineMs : DEFAULT_PULL_DEADLINE_MS));
  }

  /** Not an error when the peer holds no copy. */
  async deleteSnapshotCopy(snapshotId: SnapshotId): Promise<void> {
    await this.call('DeleteSnapshotCopy', { snapshotId });
  }

  async listSnapshotCopies(): Promise<SnapshotCopyView[]> {
    const res = await this.call<{ copies: SnapshotCopyMessage[] }>('ListSnapshotCopies', {});
    return res.copies.map(snapshotCopyFromWire);
  }

  /** A replica in sync at `epoch` made from the peer's copy of the snapshot; NOT_FOUND without one there. */
  createReplicaFromSnapshot(ref: ReplicaRefInput, sizeBytes: number, epoch: number, snapshotId: SnapshotId): Promise<ReplicaStatusView> {
    return this.status('CreateReplicaFromSnapshot', { replica: refToWire(ref), sizeBytes, epoch, snapshotId });
  }

  /**
   * Runs the write barrier of the volume's engine on the peer. The call's own deadline is
   * the barrier's plus this client's, so that the peer's answer (DEADLINE_EXCEEDED with the
   * copies cleaned up) arrives rather than a local timeout.
   */
  async snapshotVolume(volumeId: VolumeId, snapshotId: SnapshotId, deadlineMs: number): Promise<VolumeSnapshotView> {
    const res = await this.call<SnapshotVolumeResponseMessage>('SnapshotVolume', { volumeId, snapshotId, deadlineMs }, deadlineMs + this.deadlineMs);
    return volumeSnapshotFromWire(res);
  }

  /**
   * Asks the peer to stream the snapshot from `input.sourceNodeId` into a copy of its own
   * (PullSnapshotCopy); idempotent. The call lasts as long as the copy: `deadlineMs` bounds it.
   */
  async pullSnapshotCopy(input: PullSnapshotCopyInput, deadlineMs = DEFAULT_PULL_DEADLINE_MS): Promise<SnapshotCopyView> {
    return snapshotCopyFromWire(await this.call<SnapshotCopyMessage>('PullSnapshotCopy', { ...input }, deadlineMs));
  }

  /** Opens an Io stream to one replica at `epoch`. */
  openIoStream(ref: ReplicaRefInput, epoch: number, options?: IoStreamOptions): IoStream {
    const call = this.client.makeBidiStreamRequest(IO_METHOD_PATH,
      (m: IoBatchMessage) => replicaServiceConstructor().service.Io!.requestSerialize(m),
      (b: Buffer) => replicaServiceConstructor().service.Io!.responseDeserialize(b) as IoReplyBatchMessage) as grpc.ClientDuplexStream<IoBatchMessage, IoReplyBatchMessage>;
    return new IoStream(call, ref, epoch, options);
  }

  /** The underlying channel, for tests that send raw frames. */
  get grpcClient(): grpc.Client {
    return this.client;
  }

  close(): void {
    this.client.close();
  }

  private async status(method: string, request: object): Promise<ReplicaStatusView> {
    return statusViewFromWire(await this.call<ReplicaStatusMessage>(method, request));
  }

  private call<Res>(method: string, request: object, deadlineMs = this.deadlineMs): Promise<Res> {
    return unaryCall<Res>(this.client, method, request, deadlineMs);
  }
}

/** Dials a peer's replica service at "host:port". The connection is made on first use. */
export function connect(address: string, tls: PeerTlsConfig, options?: ReplicaClientOptions): ReplicaClient {
  return new ReplicaClient(address, tls, options);
}
