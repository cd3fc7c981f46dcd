/**
 * A client of a peer's engine service (cairn.engine.v1, engine-service.ts), for a group
 * snapshot's coordinator. Errors are StorageErrors with the peer's gRPC code; a peer that
 * cannot be reached is UNAVAILABLE; each call fails after its deadline.
 */
import * as grpc from '@grpc/grpc-js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';
import { unaryCall } from '../rpc/unary-call.js';
import { engineServiceConstructor, type EngineCopyMessage } from './engine-service.js';
import type { BarrierPhases, CutCopy } from './write-barrier.js';


/** The phases of one volume's barrier, wherever its engine runs (a peer, or this node). */
export interface EngineBarrierClient {
  pause(volumeId: VolumeId, groupId: string, leaseMs: number): Promise<{ drainMs: number; epoch: number }>;
  cut(volumeId: VolumeId, groupId: string, snapshotId: SnapshotId): Promise<{ copies: CutCopy[]; epoch: number }>;
  resume(volumeId: VolumeId, groupId: string): Promise<number>;
  finish(volumeId: VolumeId, snapshotId: SnapshotId): Promise<CutCopy[]>;
  abort(volumeId: VolumeId, snapshotId: SnapshotId): Promise<void>;
}

export interface EngineClientOptions {
  /** Deadline of each call but the pause's and the finish's; 10000 ms by default. */
  deadlineMs?: number;
  /** The name to check the server's certificate against, when it is not the dialled host. */
  serverName?: string;
}

export class EngineClient implements EngineBarrierClient {
  private readonly client: grpc.Client;
  private readonly deadlineMs: number;

  constructor(readonly address: string, credentials: grpc.ChannelCredentials, options: EngineClientOptions = {}) {
    const Ctor = engineServiceConstructor();
    const channelOptions: grpc.ChannelOptions = { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.min_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 2000 };
    if (options.serverName) channelOptions['grpc.ssl_target_name_override'] = options.serverName;
    this.client = new Ctor(address, credentials, channelOptions);
    this.deadlineMs = options.deadlineMs ?? 10_000;
  }

  /** The call lasts at most the lease: a pause that drains longer has ended by itself. */
  pause(volumeId: VolumeId, groupId: string, leaseMs: number): Promise<{ drainMs: number; epoch: number }> {
    return this.call('PauseVolume', { volumeId, groupId, leaseMs }, leaseMs);
  }

  async cut(volumeId: VolumeId, groupId: string, snapshotId: SnapshotId): Promise<{ copies: CutCopy[]; epoch: number }> {
    const res = await this.call<{ copies: EngineCopyMessage[]; epoch: number }>('CutVolume', { volumeId, groupId, snapshotId });
    return { copies: res.copies.map(copyFromWire), epoch: res.epoch };
  }

  async resume(volumeId: VolumeId, groupId: string): Promise<number> {
    return (await this.call<{ pauseUs: number }>('ResumeVolume', { volumeId, groupId })).pauseUs;
  }

  /** A fill may take long (a file pool copies the whole device): `deadlineMs` bounds it. */
  async finish(volumeId: VolumeId, snapshotId: SnapshotId, deadlineMs = 10 * 60_000): Promise<CutCopy[]> {
    return (await this.call<{ copies: EngineCopyMessage[] }>('FinishVolume', { volumeId, snapshotId }, deadlineMs)).copies.map(copyFromWire);
  }

  async abort(volumeId: VolumeId, snapshotId: SnapshotId): Promise<void> {
    await this.call('AbortVolume', { volumeId, snapshotId });
  }

  close(): void {
    this.client.close();
  }

  private call<Res>(method: string, request: object, deadlineMs = this.deadlineMs): Promise<Res> {
    return unaryCall<Res>(this.client, method, request, deadlineMs);
  }
}

function copyFromWire(m: EngineCopyMessage): CutCopy {
  return { nodeId: m.nodeId as NodeId, replicaId: m.replicaId as ReplicaId, sizeBytes: m.sizeBytes, filling: m.filling };
}

/** The same phases on this node's own engines (no network), through the same lookup as the service. */
export function localEngineBarrier(lookup: (volumeId: VolumeId) => { barrierPhases: BarrierPhases; epoch: number }): EngineBarrierClient {
  return {
    pause: async (volumeId, groupId, leaseMs) => {
      const e = lookup(volumeId);
      return { drainMs: await e.barrierPhases.pause(groupId, leaseMs), epoch: e.epoch };
    },
    cut: async (volumeId, groupId, snapshotId) => {
      const e = lookup(volumeId);
      return { copies: await e.barrierPhases.cut(groupId, snapshotId), epoch: e.epoch };
    },
    resume: async (volumeId, groupId) => lookup(volumeId).barrierPhases.resume(groupId),
    finish: async (volumeId, snapshotId) => (await lookup(volumeId).barrierPhases.finish(snapshotId)).map((c) => ({ ...c, filling: false })),
    abort: (volumeId, snapshotId) => lookup(volumeId).barrierPhases.abort(snapshotId),
  };
}
