/**
 * The cairnctl gRPC API (proto/cairn/api/v1/api.proto): thin handlers that validate,
 * call the volume service, and build the reply.
 */
import * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { VolumeService, VolumeView } from '../cluster/volume-service.js';
import type { ExportInfo } from '../engine/export-manager.js';
import type { KernelAttacher } from '../engine/kernel-attach.js';
import { loadPackage, serviceConstructor } from '../rpc/proto.js';
import { unary } from '../rpc/status.js';
import { VERSION } from './version.js';

export const API_PROTO = 'cairn/api/v1/api.proto';
export const API_SERVICE = 'cairn.api.v1.CairnApi';

interface NameRequest { name: string }

function requireName(request: NameRequest): string {
  if (!request.name) throw new StorageError(Code.INVALID_ARGUMENT, 'the request has no volume name');
  return request.name;
}

function exportMessage(info: ExportInfo | undefined): object | null {
  return info ? { uri: info.uri, socketPath: info.socketPath, connectionCount: info.connectionCount } : null;
}

function volumeMessage(v: VolumeView): object {
  return {
    id: v.id,
    name: v.name,
    sizeBytes: v.sizeBytes,
    allocatedBytes: v.allocatedBytes,
    state: v.state,
    health: v.health,
    epoch: v.epoch,
    createdAt: v.createdAt,
    replicas: v.replicas.map((r) => ({ id: r.id, nodeName: r.nodeName, deviceId: r.deviceId, state: r.state, allocatedBytes: r.allocatedBytes })),
    export: exportMessage(v.export),
  };
}

export interface ApiContext {
  volumes: VolumeService;
  nodeName: string;
  poolKind: string;
  poolPath: string;
  startedAt: number;
  connectionCount: () => number;
  /** Kernel block devices for volumes (AttachVolume / DetachVolume). */
  attacher: KernelAttacher;
  log: Logger;
}

export function apiHandlers(ctx: ApiContext): grpc.UntypedServiceImplementation {
  const onUnexpected = (err: unknown, method: string): void => ctx.log.error({ err, method }, 'api call failed unexpectedly');
  const h = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req) => fn(req), onUnexpected, method);
  return {
    GetStatus: h('GetStatus', async () => {
      const [capacity, volumes] = [await ctx.volumes.capacity(), await ctx.volumes.list()];
      return {
        nodeName: ctx.nodeName,
        version: VERSION,
        uptimeSeconds: Math.floor((Date.now() - ctx.startedAt) / 1000),
        pool: { backend: ctx.poolKind, path: ctx.poolPath, ...capacity },
        volumeCount: volumes.length,
        exportedCount: volumes.filter((v) => v.export).length,
        nbdConnectionCount: ctx.connectionCount(),
      };
    }),
    CreateVolume: h('CreateVolume', async (req: { name: string; sizeBytes: number }) =>
      volumeMessage(await ctx.volumes.create(requireName(req), req.sizeBytes))),
    ListVolumes: h('ListVolumes', async () => ({ volumes: (await ctx.volumes.list()).map(volumeMessage) })),
    GetVolume: h('GetVolume', async (req: NameRequest) => volumeMessage(await ctx.volumes.get(requireName(req)))),
    DeleteVolume: h('DeleteVolume', async (req: NameRequest & { force: boolean }) => {
      await ctx.volumes.delete(requireName(req), req.force);
      return {};
    }),
    ExportVolume: h('ExportVolume', async (req: NameRequest) => exportMessage(await ctx.volumes.export(requireName(req)))),
    UnexportVolume: h('UnexportVolume', async (req: NameRequest) => {
      await ctx.volumes.unexport(requireName(req));
      return {};
    }),
    AttachVolume: h('AttachVolume', async (req: NameRequest) => {
      const exported = await ctx.volumes.export(requireName(req));
      const a = await ctx.attacher.attach(req.name, exported.socketPath);
      return { devicePath: a.devicePath, method: a.method, uri: exported.uri };
    }),
    DetachVolume: h('DetachVolume', async (req: NameRequest) => {
      await ctx.attacher.detach(requireName(req));
      return {};
    }),
  };
}

export function apiServiceDefinition(): grpc.ServiceDefinition {
  return serviceConstructor(loadPackage(API_PROTO), API_SERVICE).service;
}
