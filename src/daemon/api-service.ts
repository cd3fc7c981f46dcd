/**
 * The cairnctl gRPC API (proto/cairn/api/v1/api.proto): thin handlers that validate,
 * call the volume service (`VolumeApi`) or the snapshot service (`SnapshotService`), and
 * build the reply from their views; the snapshot rule RPCs are in rule-api.ts. CreateVolume with `source_snapshot` (restore) or
 * `source_volume` (clone) passes the source on as `CreateVolumeOptions.source`.
 */
import * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { NodeStatus } from '../cluster/node-registry.js';
import type { SnapshotService, SnapshotView, VolumeContentSource } from '../cluster/snapshot-types.js';
import type { ClusterStatusView, ReplicaView, VerifyResult, VolumeApi, VolumeView } from '../cluster/volume-views.js';
import type { ExportInfo } from '../engine/export-manager.js';
import type { KernelAttacher } from '../engine/kernel-attach.js';
import type { StagedVolumeRecord } from '../store/staged-volume-record.js';
import { loadPackage, serviceConstructor } from '../rpc/proto.js';
import { unary } from '../rpc/status.js';
import type { GroupCoordinator } from '../snapshot/group-coordinator.js';
import type { SnapshotRuleStore } from '../snapshot/rule-store.js';
import type { RuleSnapshots } from '../snapshot/rule-snapshots.js';
import type { GroupRuleSnapshots } from '../snapshot/group-rules.js';
import { groupApiHandlers } from './group-api.js';
import { ruleApiHandlers, ruleOutcomeMessage } from './rule-api.js';
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

function replicaMessage(r: ReplicaView): object {
  return {
    id: r.id,
    nodeName: r.nodeName,
    deviceId: r.deviceId,
    state: r.state,
    allocatedBytes: r.allocatedBytes,
    since: r.since,
    reason: r.reason ?? '',
    rebuild: r.rebuild ? { doneBytes: r.rebuild.doneBytes, totalBytes: r.rebuild.totalBytes, bytesPerSecond: Math.round(r.rebuild.bytesPerSecond) } : null,
    dirtyBytes: r.dirtyBytes,
  };
}

function stagingMessage(r: StagedVolumeRecord | undefined, nodeName: string): object | null {
  return r ? {
    nodeName, state: r.state, stagingPath: r.stagingPath, devicePath: r.devicePath, attachMethod: r.attachMethod,
    accessType: r.accessType, fsType: r.fsType, readonly: r.readonly, updatedAt: r.updatedAt,
  } : null;
}

/**
 * `ctx` adds this node's staging of the volume. Required, so that every reply carrying a
 * volume (create, get, list, expand, modify) shows the same staging as inspect.
 */
function volumeMessage(v: VolumeView, ctx: Pick<ApiContext, 'staged' | 'nodeName'>): object {
  return {
    id: v.id,
    name: v.name,
    sizeBytes: v.sizeBytes,
    allocatedBytes: v.allocatedBytes,
    state: v.state,
    health: v.health,
    epoch: v.epoch,
    createdAt: v.createdAt,
    replicas: v.replicas.map(replicaMessage),
    export: exportMessage(v.export),
    replicasWanted: v.replicasWanted,
    engineNode: v.engineNode ?? '',
    published: v.published.map((p) => ({ nodeId: p.nodeId, readonly: p.readonly })),
    staging: stagingMessage(ctx.staged?.(v.name), ctx.nodeName),
  };
}

function clusterStatusMessage(s: ClusterStatusView): object {
  return { cluster: s.cluster, store: s.store, nodeName: s.nodeName, repairLeader: s.repairLeader ?? '', nodes: { ...s.nodes }, volumes: { ...s.volumes } };
}

function nodeMessage(n: NodeStatus): object {
  return {
    name: n.name, nodeId: n.nodeId, peerAddress: n.peerAddress, zone: n.zone ?? '', labels: { ...n.labels }, up: n.up,
    totalBytes: n.capacity.totalBytes, freeBytes: n.capacity.freeBytes, version: n.version, heartbeatAt: n.heartbeatAt,
  };
}

function verifyMessage(r: VerifyResult): object {
  return {
    volume: r.volume, replicas: [...r.replicas], regionBytes: r.regionBytes, regionsCompared: r.regionsCompared,
    mismatches: r.mismatches.map((m) => ({ offset: m.offset, lengthBytes: m.lengthBytes, replicas: [...m.replicas] })),
  };
}

/** A proto3 uint32 replica count: 0 (unset) means the cluster default. */
function replicasOption(replicas: number | undefined): { replicas?: number } {
  return replicas ? { replicas } : {};
}

function snapshotMessage(s: SnapshotView): object {
  return {
    id: s.id, name: s.name, sourceVolumeId: s.sourceVolumeId, sourceVolumeName: s.sourceVolumeName, sizeBytes: s.sizeBytes,
    createdAt: s.createdAt, state: s.state, readyToUse: s.readyToUse, copiesWanted: s.copiesWanted,
    copies: s.copies.map((c) => ({ nodeId: c.nodeId, replicaId: c.replicaId, nodeUp: c.nodeUp })), pauseUs: s.pauseUs,
    rule: s.rule ? ruleOutcomeMessage(s.rule) : null,
  };
}

interface CreateVolumeRequest extends NameRequest { sizeBytes: number; replicas?: number; preferredNode?: string; sourceSnapshot?: string; sourceVolume?: string; requiredNodes?: string[] }

/** CreateVolume's content source: at most one of source_snapshot and source_volume. */
export function contentSource(req: Pick<CreateVolumeRequest, 'sourceSnapshot' | 'sourceVolume'>): VolumeContentSource | undefined {
  if (req.sourceSnapshot && req.sourceVolume) {
    throw new StorageError(Code.INVALID_ARGUMENT,
      `the request names both source_snapshot "${req.sourceSnapshot}" and source_volume "${req.sourceVolume}": restore from a snapshot or clone a volume, not both`);
  }
  if (req.sourceSnapshot) return { snapshot: req.sourceSnapshot };
  if (req.sourceVolume) return { volume: req.sourceVolume };
  return undefined;
}
interface ExportVolumeRequest extends NameRequest { takeover?: boolean; force?: boolean }

export interface ApiContext {
  volumes: VolumeApi;
  nodeName: string;
  poolKind: string;
  poolPath: string;
  startedAt: number;
  connectionCount: () => number;
  /** Kernel block devices for volumes (AttachVolume / DetachVolume); none on a controller-role cairnd. */
  attacher: KernelAttacher | undefined;
  /** Snapshots, restore and clone (docs/snapshots.md); the snapshot RPCs answer UNIMPLEMENTED without it. */
  snapshots?: SnapshotService;
  /** The volume's CSI staging on this node (the stager's record); absent on a controller-role cairnd. */
  staged?: (volume: string) => StagedVolumeRecord | undefined;
  /** Snapshot rules in the cluster store (rule-api.ts); the rule RPCs answer UNIMPLEMENTED without it. */
  rules?: SnapshotRuleStore;
  /** Snapshots under a rule (CreateSnapshot's `rule`); UNIMPLEMENTED without it. */
  ruleSnapshots?: RuleSnapshots;
  /** Group snapshots (group-api.ts); the group RPCs answer UNIMPLEMENTED without it. */
  groups?: GroupCoordinator;
  /** Group snapshots under a rule (CreateGroupSnapshot's `rule`). */
  groupRules?: GroupRuleSnapshots;
  log: Logger;
}

function requireAttacher(ctx: ApiContext): KernelAttacher {
  if (!ctx.attacher) throw new StorageError(Code.UNIMPLEMENTED, `this cairnd (${ctx.nodeName}) runs the controller role and has no data plane: attach volumes on a node`);
  return ctx.attacher;
}

function requireSnapshots(ctx: ApiContext): SnapshotService {
  if (!ctx.snapshots) throw new StorageError(Code.UNIMPLEMENTED, `this cairnd (${ctx.nodeName}) does not serve snapshots: upgrade it, or ask another node`);
  return ctx.snapshots;
}

function requireSnapshotName(request: NameRequest): string {
  if (!request.name) throw new StorageError(Code.INVALID_ARGUMENT, 'the request has no snapshot name');
  return request.name;
}

export function apiHandlers(ctx: ApiContext): grpc.UntypedServiceImplementation {
  const onUnexpected = (err: unknown, method: string): void => ctx.log.error({ err, method }, 'api call failed unexpectedly');
  const h = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req) => fn(req), onUnexpected, method);
  return {
    ...ruleApiHandlers({ ...(ctx.rules ? { rules: ctx.rules } : {}), nodeName: ctx.nodeName, log: ctx.log }),
    ...groupApiHandlers({ ...(ctx.groups ? { groups: ctx.groups } : {}), ...(ctx.groupRules ? { groupRules: ctx.groupRules } : {}), nodeName: ctx.nodeName, log: ctx.log }),
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
    CreateVolume: h('CreateVolume', async (req: CreateVolumeRequest) => {
      const name = requireName(req);
      const source = contentSource(req);
      return volumeMessage(await ctx.volumes.create(name, req.sizeBytes, {
        ...replicasOption(req.replicas),
        ...(req.preferredNode ? { preferredNode: req.preferredNode } : {}),
        ...(req.requiredNodes?.length ? { requisiteNodes: req.requiredNodes } : {}),
        ...(source ? { source } : {}),
      }), ctx);
    }),
    ListVolumes: h('ListVolumes', async () => ({ volumes: (await ctx.volumes.list()).map((v) => volumeMessage(v, ctx)) })),
    GetVolume: h('GetVolume', async (req: NameRequest) => volumeMessage(await ctx.volumes.get(requireName(req)), ctx)),
    DeleteVolume: h('DeleteVolume', async (req: NameRequest & { force: boolean }) => {
      await ctx.volumes.delete(requireName(req), req.force);
      return {};
    }),
    ExpandVolume: h('ExpandVolume', async (req: NameRequest & { sizeBytes: number }) => volumeMessage(await ctx.volumes.expand(requireName(req), req.sizeBytes), ctx)),
    ModifyVolume: h('ModifyVolume', async (req: NameRequest & { replicas?: number }) => volumeMessage(await ctx.volumes.modify(requireName(req), replicasOption(req.replicas)), ctx)),
    ExportVolume: h('ExportVolume', async (req: ExportVolumeRequest) => exportMessage(await ctx.volumes.export(requireName(req), {
      ...(req.takeover ? { takeover: true } : {}),
      ...(req.force ? { force: true } : {}),
    }))),
    UnexportVolume: h('UnexportVolume', async (req: NameRequest) => {
      await ctx.volumes.unexport(requireName(req));
      return {};
    }),
    AttachVolume: h('AttachVolume', async (req: NameRequest) => {
      const attacher = requireAttacher(ctx);
      const exported = await ctx.volumes.export(requireName(req));
      const a = await attacher.attach(req.name, exported.socketPath);
      return { devicePath: a.devicePath, method: a.method, uri: exported.uri };
    }),
    DetachVolume: h('DetachVolume', async (req: NameRequest) => {
      await requireAttacher(ctx).detach(requireName(req));
      return {};
    }),
    GetClusterStatus: h('GetClusterStatus', async () => clusterStatusMessage(await ctx.volumes.clusterStatus())),
    ListNodes: h('ListNodes', async () => ({ nodes: (await ctx.volumes.nodes()).map(nodeMessage) })),
    VerifyVolume: h('VerifyVolume', async (req: NameRequest) => verifyMessage(await ctx.volumes.verify(requireName(req)))),
    CreateSnapshot: h('CreateSnapshot', async (req: NameRequest & { volume: string; rule?: string }) => {
      const name = requireSnapshotName(req);
      if (!req.volume) throw new StorageError(Code.INVALID_ARGUMENT, `snapshot "${name}": the request names no source volume`);
      if (!req.rule) return snapshotMessage(await requireSnapshots(ctx).create({ name, volume: req.volume }));
      if (!ctx.ruleSnapshots) throw new StorageError(Code.UNIMPLEMENTED, `this cairnd (${ctx.nodeName}) does not take snapshots under a rule: upgrade it, or ask another node`);
      return snapshotMessage(await ctx.ruleSnapshots.create({ name, volume: req.volume, rule: req.rule }));
    }),
    ListSnapshots: h('ListSnapshots', async (req: { volume?: string }) => ({
      snapshots: (await requireSnapshots(ctx).list(req.volume ? { volume: req.volume } : {})).map(snapshotMessage),
    })),
    GetSnapshot: h('GetSnapshot', async (req: NameRequest) => snapshotMessage(await requireSnapshots(ctx).get(requireSnapshotName(req)))),
    DeleteSnapshot: h('DeleteSnapshot', async (req: NameRequest) => {
      await requireSnapshots(ctx).delete(requireSnapshotName(req));
      return {};
    }),
  };
}

export function apiServiceDefinition(): grpc.ServiceDefinition {
  return serviceConstructor(loadPackage(API_PROTO), API_SERVICE).service;
}
