/**
 * The cairn.replica.v1 wire shapes as @grpc/proto-loader hands them over (camelCase
 * fields, enums as names, uint64 as numbers), and the conversions between them and the
 * core's types. Both the server and the client use this file.
 */
import * as grpc from '@grpc/grpc-js';
import { constants as osConstants } from 'node:os';
import { Code, StorageError, SystemError } from '../common/errors.js';
import { loadPackage, serviceConstructor } from '../rpc/proto.js';
import type { IoOp, IoRequest } from './io-types.js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../common/ids.js';
import type { ChecksumRangeResult, ReplicaRefInput, ReplicaStatusView, SnapshotCopyView } from './replica-manager.js';

export const REPLICA_PROTO = 'cairn/replica/v1/replica.proto';
export const REPLICA_SERVICE = 'cairn.replica.v1.ReplicaService';
export const IO_METHOD_PATH = `/${REPLICA_SERVICE}/Io`;

export type WireIoOp = 'IO_OP_UNSPECIFIED' | 'IO_OP_WRITE' | 'IO_OP_READ' | 'IO_OP_FLUSH' | 'IO_OP_TRIM' | 'IO_OP_WRITE_ZEROES';

export interface ReplicaRefMessage { replicaId: string; volumeId: string }
export interface IoRequestMessage {
  seq: number; op: WireIoOp | number; offset: number; lengthBytes: number; data: Uint8Array; fua: boolean; mayTrim: boolean;
}
export interface IoBatchMessage { replica: ReplicaRefMessage | null; epoch: number; requests: IoRequestMessage[] }
export interface RequestStatusMessage { code: number; errnoName: string; message: string; reason: string; newestEpoch: number }
export interface IoReplyMessage { seq: number; status: RequestStatusMessage | null; data: Uint8Array }
export interface IoReplyBatchMessage { replies: IoReplyMessage[]; epoch: number }
export interface RebuildProgressMessage { doneBytes: number; totalBytes: number; checkpoint: Uint8Array }
export interface ReplicaStatusMessage {
  replicaId: string; volumeId: string; sizeBytes: number; allocatedBytes: number; epoch: number; state: string;
  rebuild: RebuildProgressMessage | null; createdAt: string;
}
export interface ChecksumRangeMessage { algorithm: string; offset: number; regionBytes: number; digests: Uint8Array[] }
export interface AllocatedRangesMessage { extents: Array<{ offset: number; lengthBytes: number }>; endOffset: number }
export interface SnapshotCopyMessage {
  snapshotId: string; volumeId: string; replicaId: string; sizeBytes: number; allocatedBytes: number; createdAt: string; filling?: boolean;
}
export interface SnapshotVolumeResponseMessage {
  copies: Array<{ nodeId: string; replicaId: string; sizeBytes: number }>; pauseUs: number; epoch: number;
}

/**
 * What a write barrier snapshot of a volume produced (SnapshotVolume): the engine's
 * VolumeSnapshotResult, in a shape this layer may name.
 */
export interface VolumeSnapshotView {
  copies: { nodeId: NodeId; replicaId: ReplicaId; sizeBytes: number }[];
  pauseUs: number;
  epoch: number;
}

/** What the server's Io deserializer yields for a frame that is not an IoBatch. */
export interface MalformedFrame { malformed: string }

const OP_TO_WIRE: Record<IoOp, WireIoOp> = {
  write: 'IO_OP_WRITE', read: 'IO_OP_READ', flush: 'IO_OP_FLUSH', trim: 'IO_OP_TRIM', 'write-zeroes': 'IO_OP_WRITE_ZEROES', unspecified: 'IO_OP_UNSPECIFIED',
};
const OP_FROM_WIRE = new Map<unknown, IoOp>(Object.entries(OP_TO_WIRE).map(([op, wire]) => [wire, op as IoOp]));
const ERRNO_NUMBERS = osConstants.errno as Record<string, number>;

export function opToWire(op: IoOp): WireIoOp {
  return OP_TO_WIRE[op];
}

export function requestFromWire(m: IoRequestMessage): IoRequest {
  return {
    seq: m.seq, op: OP_FROM_WIRE.get(m.op) ?? 'unspecified', offset: m.offset, lengthBytes: m.lengthBytes,
    data: m.data.byteLength > 0 ? m.data : undefined, fua: m.fua, mayTrim: m.mayTrim,
  };
}

export function refToWire(ref: ReplicaRefInput): ReplicaRefMessage {
  return { replicaId: ref.replicaId, volumeId: ref.volumeId };
}

/** A StorageError as a per-request status: code, errno name, message. */
export function statusToWire(err: StorageError): RequestStatusMessage {
  const errnoName = err instanceof SystemError ? err.errnoName : typeof err.details.errnoName === 'string' ? err.details.errnoName : '';
  const reason = typeof err.details.reason === 'string' ? err.details.reason : '';
  const newestEpoch = typeof err.details.newestEpoch === 'number' ? err.details.newestEpoch : 0;
  return { code: err.code, errnoName, message: err.message, reason, newestEpoch };
}

/** A per-request status as an error: a SystemError when it names a known errno. */
export function statusFromWire(s: RequestStatusMessage, fields: Record<string, unknown>): StorageError {
  const code = Number.isInteger(s.code) && s.code > 0 && s.code <= Code.UNAUTHENTICATED ? s.code as Code : Code.UNKNOWN;
  const details = s.reason ? { ...fields, reason: s.reason, ...(s.newestEpoch ? { newestEpoch: s.newestEpoch } : {}) } : fields;
  const errno = s.errnoName ? ERRNO_NUMBERS[s.errnoName] : undefined;
  if (errno !== undefined) return new SystemError(code, s.message, { errno, errnoName: s.errnoName, syscall: 'replica' }, { details });
  return new StorageError(code, s.message || `request failed with code ${code}`, { details });
}

export function statusViewToWire(v: ReplicaStatusView): ReplicaStatusMessage {
  return {
    replicaId: v.replicaId, volumeId: v.volumeId, sizeBytes: v.sizeBytes, allocatedBytes: v.allocatedBytes, epoch: v.epoch, state: v.state,
    rebuild: v.rebuild ? { doneBytes: v.rebuild.doneBytes, totalBytes: v.rebuild.totalBytes, checkpoint: v.rebuild.checkpoint } : null,
    createdAt: v.createdAt,
  };
}

export function statusViewFromWire(m: ReplicaStatusMessage): ReplicaStatusView {
  return {
    replicaId: m.replicaId as ReplicaStatusView['replicaId'], volumeId: m.volumeId as ReplicaStatusView['volumeId'],
    sizeBytes: m.sizeBytes, allocatedBytes: m.allocatedBytes, epoch: m.epoch, state: m.state as ReplicaStatusView['state'],
    rebuild: m.rebuild ? { doneBytes: m.rebuild.doneBytes, totalBytes: m.rebuild.totalBytes, checkpoint: Buffer.from(m.rebuild.checkpoint) } : undefined,
    createdAt: m.createdAt,
  };
}

export function checksumFromWire(m: ChecksumRangeMessage): ChecksumRangeResult {
  return { algorithm: m.algorithm, offset: m.offset, regionBytes: m.regionBytes, digests: m.digests.map((d) => Buffer.from(d)) };
}

export function snapshotCopyToWire(v: SnapshotCopyView): SnapshotCopyMessage {
  return { snapshotId: v.snapshotId, volumeId: v.volumeId, replicaId: v.replicaId, sizeBytes: v.sizeBytes, allocatedBytes: v.allocatedBytes, createdAt: v.createdAt, filling: v.filling === true };
}

export function snapshotCopyFromWire(m: SnapshotCopyMessage): SnapshotCopyView {
  return {
    snapshotId: m.snapshotId as SnapshotId, volumeId: m.volumeId as VolumeId, replicaId: m.replicaId as ReplicaId,
    sizeBytes: m.sizeBytes, allocatedBytes: m.allocatedBytes, createdAt: m.createdAt, ...(m.filling ? { filling: true } : {}),
  };
}

export function volumeSnapshotToWire(v: VolumeSnapshotView): SnapshotVolumeResponseMessage {
  return { copies: v.copies.map((c) => ({ nodeId: c.nodeId, replicaId: c.replicaId, sizeBytes: c.sizeBytes })), pauseUs: v.pauseUs, epoch: v.epoch };
}

export function volumeSnapshotFromWire(m: SnapshotVolumeResponseMessage): VolumeSnapshotView {
  return {
    copies: m.copies.map((c) => ({ nodeId: c.nodeId as NodeId, replicaId: c.replicaId as ReplicaId, sizeBytes: c.sizeBytes })),
    pauseUs: m.pauseUs, epoch: m.epoch,
  };
}

let constructorCache: grpc.ServiceClientConstructor | undefined;

/** The generated client constructor (its `.service` is the service definition). */
export function replicaServiceConstructor(): grpc.ServiceClientConstructor {
  constructorCache ??= serviceConstructor(loadPackage(REPLICA_PROTO), REPLICA_SERVICE);
  return constructorCache;
}

/**
 * The service definition for the server, with the Io deserializer made forgiving: a frame
 * that does not decode becomes a `MalformedFrame` that the handler refuses with
 * INVALID_ARGUMENT, instead of grpc-js's bare INTERNAL.
 */
export function replicaServerDefinition(): grpc.ServiceDefinition {
  const definition = { ...replicaServiceConstructor().service };
  const io = definition.Io!;
  const decode = io.requestDeserialize;
  definition.Io = {
    ...io,
    requestDeserialize: (buf: Buffer): IoBatchMessage | MalformedFrame => {
      try {
        return decode(buf) as IoBatchMessage;
      } catch (err) {
        return { malformed: (err as Error).message };
      }
    },
  };
  return definition;
}
