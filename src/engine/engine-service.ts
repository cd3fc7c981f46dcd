/**
 * The engine service (cairn.engine.v1, proto/cairn/engine/v1/engine.proto) on the peer port:
 * the write barrier's phases (write-barrier.ts) of the engines this node runs, for a group
 * snapshot's coordinator. Thin handlers; errors become gRPC statuses only here.
 */
import type * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { SnapshotId, VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { loadPackage, serviceConstructor } from '../rpc/proto.js';
import { unary } from '../rpc/status.js';
import type { BarrierPhases, CutCopy, SnapshotCopies } from './write-barrier.js';

export const ENGINE_PROTO = 'cairn/engine/v1/engine.proto';
export const ENGINE_SERVICE = 'cairn.engine.v1.EngineService';

/** The engine of a volume on this node; throws FAILED_PRECONDITION when none runs here. */
export type EngineLookup = (volumeId: VolumeId) => { barrierPhases: BarrierPhases; epoch: number };

export interface EngineCopyMessage { nodeId: string; replicaId: string; sizeBytes: number; filling: boolean }

let constructorCache: grpc.ServiceClientConstructor | undefined;

/** The generated client constructor (its `.service` is the service definition). */
export function engineServiceConstructor(): grpc.ServiceClientConstructor {
  constructorCache ??= serviceConstructor(loadPackage(ENGINE_PROTO), ENGINE_SERVICE);
  return constructorCache;
}

/**
 * The engine service for a gRPC server: its definition and handlers. `more` adds the
 * handlers of the node-scoped actions (RunCommand and the rest), made above this layer.
 */
export function engineService(lookup: EngineLookup, log: Logger, more: grpc.UntypedServiceImplementation = {}): { definition: grpc.ServiceDefinition; handlers: grpc.UntypedServiceImplementation } {
  const onUnexpected = (err: unknown, method: string): void => log.error({ err, method }, 'engine call failed unexpectedly');
  const h = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req) => fn(req), onUnexpected, method);
  const engine = (volumeId: string) => {
    if (!volumeId) throw new StorageError(Code.INVALID_ARGUMENT, 'an engine call needs a volume id');
    return lookup(volumeId as VolumeId);
  };
  const snapshotOf = (id: string): SnapshotId => {
    if (!id) throw new StorageError(Code.INVALID_ARGUMENT, 'an engine call needs a snapshot id');
    return id as SnapshotId;
  };
  const handlers: grpc.UntypedServiceImplementation = {
    PauseVolume: h('PauseVolume', async (req: { volumeId: string; groupId: string; leaseMs: number }) => {
      const e = engine(req.volumeId);
      return { drainMs: await e.barrierPhases.pause(req.groupId, req.leaseMs), epoch: e.epoch };
    }),
    CutVolume: h('CutVolume', async (req: { volumeId: string; groupId: string; snapshotId: string }) => {
      const e = engine(req.volumeId);
      return { copies: (await e.barrierPhases.cut(req.groupId, snapshotOf(req.snapshotId))).map(copyToWire), epoch: e.epoch };
    }),
    ResumeVolume: h('ResumeVolume', async (req: { volumeId: string; groupId: string }) => ({ pauseUs: engine(req.volumeId).barrierPhases.resume(req.groupId) })),
    FinishVolume: h('FinishVolume', async (req: { volumeId: string; snapshotId: string }) =>
      ({ copies: (await engine(req.volumeId).barrierPhases.finish(snapshotOf(req.snapshotId))).map(copyToWire) })),
    AbortVolume: h('AbortVolume', async (req: { volumeId: string; snapshotId: string }) => {
      await engine(req.volumeId).barrierPhases.abort(snapshotOf(req.snapshotId));
      return {};
    }),
  };
  return { definition: engineServiceConstructor().service, handlers: { ...handlers, ...more } };
}

function copyToWire(c: SnapshotCopies[number] | CutCopy): EngineCopyMessage {
  return { nodeId: c.nodeId, replicaId: c.replicaId, sizeBytes: c.sizeBytes, filling: 'filling' in c ? c.filling : false };
}
