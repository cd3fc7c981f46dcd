/** A promise-returning client of the cairnd API over its unix socket. */
import * as grpc from '@grpc/grpc-js';
import { existsSync } from 'node:fs';
import { Code, SERVER_UNREACHABLE, StorageError } from '../common/errors.js';
import { loadPackage, serviceConstructor } from '../rpc/proto.js';
import { fromServiceError, isFromServer } from '../rpc/status.js';

export interface PoolStatusMessage { backend: string; path: string; totalBytes: number; usedBytes: number; freeBytes: number; provisionedBytes: number }
export interface NodeStatusMessage {
  nodeName: string; version: string; uptimeSeconds: number; pool: PoolStatusMessage;
  volumeCount: number; exportedCount: number; nbdConnectionCount: number;
}
export interface RebuildProgressMessage { doneBytes: number; totalBytes: number; bytesPerSecond: number }
export interface ReplicaMessage {
  id: string; nodeName: string; deviceId: string; state: string; allocatedBytes: number;
  /** ISO 8601; empty from a daemon that does not report it. */
  since: string;
  /** Empty while in sync. */
  reason: string;
  /** null unless rebuilding. */
  rebuild: RebuildProgressMessage | null;
  dirtyBytes: number;
}
export interface AttachmentMessage { devicePath: string; method: string; uri: string }
export interface ExportMessage { uri: string; socketPath: string; connectionCount: number }
export interface PublicationMessage { nodeId: string; readonly: boolean }
/** A volume's CSI staging on the node that answered. */
export interface StagingMessage {
  nodeName: string;
  /** staging, staged or unstaging. */
  state: string;
  stagingPath: string;
  /** Empty until attached. */
  devicePath: string;
  /** nbd or nbdfuse-loop; empty until attached. */
  attachMethod: string;
  /** mount or block. */
  accessType: string;
  /** Empty for a block volume. */
  fsType: string;
  readonly: boolean;
  updatedAt: string;
}
export interface VolumeMessage {
  id: string; name: string; sizeBytes: number; allocatedBytes: number; state: string; health: string;
  epoch: number; createdAt: string; replicas: ReplicaMessage[]; export: ExportMessage | null;
  replicasWanted: number;
  /** Empty when no node runs the volume's engine. */
  engineNode: string;
  /** The nodes it is published to (CSI); empty from a daemon that does not report it. */
  published: PublicationMessage[];
  /** Its staging on the node that answered; null when not staged there. */
  staging: StagingMessage | null;
}
export interface ClusterStatusMessage {
  cluster: string; store: string; nodeName: string;
  /** Empty when no node leads the repair loop. */
  repairLeader: string;
  nodes: { total: number; up: number };
  volumes: { total: number; healthy: number; degraded: number; faulted: number };
}
export interface NodeMessage {
  name: string; nodeId: string; peerAddress: string; zone: string; labels: Record<string, string>; up: boolean;
  totalBytes: number; freeBytes: number; version: string; heartbeatAt: string;
}
export interface VerifyMismatchMessage { offset: number; lengthBytes: number; replicas: string[] }
export interface VerifyMessage { volume: string; replicas: string[]; regionBytes: number; regionsCompared: number; mismatches: VerifyMismatchMessage[] }
export interface SnapshotCopyMessage { nodeId: string; replicaId: string; nodeUp: boolean }
export interface SnapshotMessage {
  id: string; name: string; sourceVolumeId: string; sourceVolumeName: string; sizeBytes: number;
  /** RFC 3339: when the barrier ran. */
  createdAt: string;
  /** creating, ready or deleting. */
  state: string;
  readyToUse: boolean; copiesWanted: number; copies: SnapshotCopyMessage[];
  /** How long the source's writes waited for the barrier, in microseconds. */
  pauseUs: number;
  /** The snapshot rule it was taken under; null when none. */
  rule: SnapshotRuleOutcomeMessage | null;
}
export interface SnapshotRuleActionOutcomeMessage {
  action: string; phase: string; kind: string; step: string; target: string; status: string;
  /** Whether it exited by itself: exitCode is meaningful only then. */
  exited: boolean; exitCode: number; durationMs: number; errorCode: string; errorMessage: string; outputTail: string;
}
export interface SnapshotRuleOutcomeMessage { name: string; ok: boolean; durationMs: number; actions: SnapshotRuleActionOutcomeMessage[] }
export interface SnapshotRuleActionMessage {
  /** Empty when unnamed. */
  name: string;
  kind: string; container: string; command: string[]; matchLabels: Record<string, string>;
  timeoutSeconds: number; onError: string; runIn: string; background: boolean;
  /** 0 when unset. */
  readySeconds: number;
}
export interface SnapshotRuleMessage {
  name: string; namespace: string; pre: SnapshotRuleActionMessage[]; post: SnapshotRuleActionMessage[];
  generation: number; createdAt: string; updatedAt: string; labels: Record<string, string>; annotations: Record<string, string>;
}
export interface GroupSnapshotMemberMessage { volumeId: string; volumeName: string; snapshotId: string; snapshotName: string; pauseUs: number; drainMs: number; rule?: SnapshotRuleOutcomeMessage | null }
export interface GroupSnapshotMessage {
  id: string; name: string; state: string; readyToUse: boolean; createdAt: string; members: GroupSnapshotMemberMessage[];
  phases: { preMs: number; pauseMs: number; cutMs: number; resumeMs: number; finishMs: number; totalMs: number } | null;
}
export interface AppliedRuleMessage { name: string; outcome: 'created' | 'configured' | 'unchanged'; rule: SnapshotRuleMessage }
export interface CreateVolumeOptions {
  /** 0 or undefined: the cluster default. */
  replicas?: number;
  preferredNode?: string;
  /** A replica must go on one of these nodes (names or ids). */
  requiredNodes?: readonly string[];
  /** Restore: the new volume holds this snapshot's data (name or id). */
  sourceSnapshot?: string;
  /** Clone: the new volume holds this volume's data (name or id). */
  sourceVolume?: string;
}
export interface ExportOptions { takeover?: boolean; force?: boolean }

type UnaryMethod<Res> = (request: object, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, res: Res) => void) => void;

export class ApiClient {
  private readonly client: grpc.Client;

  constructor(readonly socketPath: string, private readonly deadlineMs = 30_000) {
    const Ctor = serviceConstructor(loadPackage('cairn/api/v1/api.proto'), 'cairn.api.v1.CairnApi');
    this.client = new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure());
  }

  private call<Res>(method: string, request: object): Promise<Res> {
    const fn = (this.client as unknown as Record<string, UnaryMethod<Res>>)[method]!;
    return new Promise<Res>((resolve, reject) => {
      fn.call(this.client, request, { deadline: Date.now() + this.deadlineMs }, (err, res) => {
        if (!err) return resolve(res);
        reject(err.code === grpc.status.UNAVAILABLE && !isFromServer(err) ? this.unreachable(err) : fromServiceError(err));
      });
    });
  }

  /**
   * The channel's own UNAVAILABLE (no status from cairnd): the daemon was not reached.
   * Decided on the missing server trailer, never on grpc-js's message text.
   */
  private unreachable(err: grpc.ServiceError): StorageError {
    const why = existsSync(this.socketPath) ? 'nothing answers on the socket' : 'no socket there';
    return new StorageError(Code.UNAVAILABLE, `cannot reach cairnd at ${this.socketPath}: is it running? (${why}; set --api-socket or CAIRN_API_SOCKET)`, {
      cause: err, details: { reason: SERVER_UNREACHABLE, socket: this.socketPath },
    });
  }

  status(): Promise<NodeStatusMessage> { return this.call('GetStatus', {}); }
  createVolume(name: string, sizeBytes: number, options: CreateVolumeOptions = {}): Promise<VolumeMessage> {
    return this.call('CreateVolume', {
      name, sizeBytes, replicas: options.replicas ?? 0, preferredNode: options.preferredNode ?? '',
      sourceSnapshot: options.sourceSnapshot ?? '', sourceVolume: options.sourceVolume ?? '', requiredNodes: [...(options.requiredNodes ?? [])],
    });
  }
  async listVolumes(): Promise<VolumeMessage[]> { return (await this.call<{ volumes: VolumeMessage[] }>('ListVolumes', {})).volumes; }
  getVolume(name: string): Promise<VolumeMessage> { return this.call('GetVolume', { name }); }
  async deleteVolume(name: string, force: boolean): Promise<void> { await this.call('DeleteVolume', { name, force }); }
  /** Grows the volume online to at least `sizeBytes`. */
  expandVolume(name: string, sizeBytes: number): Promise<VolumeMessage> { return this.call('ExpandVolume', { name, sizeBytes }); }
  /** Changes the volume live; `replicas` 0 or undefined leaves the count as it is. */
  modifyVolume(name: string, changes: { replicas?: number }): Promise<VolumeMessage> {
    return this.call('ModifyVolume', { name, replicas: changes.replicas ?? 0 });
  }
  exportVolume(name: string, options: ExportOptions = {}): Promise<ExportMessage> {
    return this.call('ExportVolume', { name, takeover: Boolean(options.takeover), force: Boolean(options.force) });
  }
  async unexportVolume(name: string): Promise<void> { await this.call('UnexportVolume', { name }); }
  attachVolume(name: string): Promise<AttachmentMessage> { return this.call('AttachVolume', { name }); }
  async detachVolume(name: string): Promise<void> { await this.call('DetachVolume', { name }); }
  clusterStatus(): Promise<ClusterStatusMessage> { return this.call('GetClusterStatus', {}); }
  async listNodes(): Promise<NodeMessage[]> { return (await this.call<{ nodes: NodeMessage[] }>('ListNodes', {})).nodes; }
  verifyVolume(name: string): Promise<VerifyMessage> { return this.call('VerifyVolume', { name }); }
  /** Takes a snapshot of `volume` (name or id) at a write barrier, under `rule` when given; the same name and volume again returns it. */
  createSnapshot(name: string, volume: string, rule?: string): Promise<SnapshotMessage> { return this.call('CreateSnapshot', { name, volume, rule: rule ?? '' }); }
  /** Every snapshot, or those of one volume (name or id), oldest first. */
  async listSnapshots(volume?: string): Promise<SnapshotMessage[]> {
    return (await this.call<{ snapshots: SnapshotMessage[] }>('ListSnapshots', { volume: volume ?? '' })).snapshots;
  }
  getSnapshot(name: string): Promise<SnapshotMessage> { return this.call('GetSnapshot', { name }); }
  async deleteSnapshot(name: string): Promise<void> { await this.call('DeleteSnapshot', { name }); }
  /** Creates or replaces the rules of a manifest (YAML text); `source` names it in errors. */
  async applySnapshotRules(manifest: string, source: string): Promise<AppliedRuleMessage[]> {
    return (await this.call<{ results: AppliedRuleMessage[] }>('ApplySnapshotRule', { manifest, source })).results;
  }
  listSnapshotRules(): Promise<{ rules: SnapshotRuleMessage[]; unreadable: string[] }> { return this.call('ListSnapshotRules', {}); }
  getSnapshotRule(name: string): Promise<SnapshotRuleMessage> { return this.call('GetSnapshotRule', { name }); }
  async deleteSnapshotRule(name: string): Promise<void> { await this.call('DeleteSnapshotRule', { name }); }
  /** One cut across `volumes` (names or ids); the same name and volumes again returns it. */
  createGroupSnapshot(name: string, volumes: string[], rule?: string): Promise<GroupSnapshotMessage> { return this.call('CreateGroupSnapshot', { name, volumes, rule: rule ?? '' }); }
  async listGroupSnapshots(): Promise<GroupSnapshotMessage[]> {
    return (await this.call<{ groupSnapshots: GroupSnapshotMessage[] }>('ListGroupSnapshots', {})).groupSnapshots;
  }
  getGroupSnapshot(name: string): Promise<GroupSnapshotMessage> { return this.call('GetGroupSnapshot', { name }); }
  async deleteGroupSnapshot(name: string): Promise<void> { await this.call('DeleteGroupSnapshot', { name }); }

  close(): void {
    this.client.close();
  }
}
