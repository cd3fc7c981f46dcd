/**
 * The CSI Controller service (roles `controller` and `all`): thin handlers over the
 * cluster's volume API. The CSI volume_id is the Cairn volume's name: the name is what
 * every Cairn call is keyed by, the provisioner's name (pvc-<uid>) is already unique and
 * stable, and `cairnctl volume inspect <volume_id>` then works on what Kubernetes shows.
 *
 * Served: CreateVolume, DeleteVolume (refused while the volume is published or served),
 * ValidateVolumeCapabilities, ControllerGetVolume, ControllerPublishVolume and
 * ControllerUnpublishVolume (controller-publish.ts), ListVolumes and GetCapacity
 * (controller-list.ts), ControllerModifyVolume (controller-modify.ts),
 * ControllerExpandVolume (controller-expand.ts), ControllerGetCapabilities, and, given the
 * snapshot service, CreateSnapshot, DeleteSnapshot, ListSnapshots and GetSnapshot
 * (controller-snapshot.ts) and CreateVolume from a snapshot or a volume
 * (volume_content_source); without it those answer UNIMPLEMENTED (a content source
 * INVALID_ARGUMENT) and their capabilities are not advertised.
 *
 * A volume made by CreateVolume keeps its filesystem type (the `fsType` parameter, else the
 * mount capability's, else ext4 for a mount volume; none for a block-only one): it is in
 * the volume_context of every reply, and the same name with another is ALREADY_EXISTS.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { SnapshotService } from '../cluster/snapshot-types.js';
import type { VolumeApi, VolumeView } from '../cluster/volume-views.js';
import { csiService, type CsiRequest, type CsiService } from './csi-call.js';
import { volumeLockKey, type CsiLocks } from './csi-locks.js';
import { controllerModifyMethods } from './controller-modify.js';
import { controllerExpandMethods } from './controller-expand.js';
import { controllerListMethods } from './controller-list.js';
import { controllerPublishMethods } from './controller-publish.js';
import { controllerSnapshotMethods, SNAPSHOT_CAPABILITIES, sourceBytes, type RuleSnapshotTaker } from './controller-snapshot.js';
import { volumeMessage, volumeStatus } from './controller-volume.js';
import { claimOf } from './kube-log-fields.js';
import {
  checkCapabilities, checkTopology, isVolumeId, minimumBytes, parseParameters, preferredNodeOf, requisiteNodes, sizeFitsRange, sizeForRange,
} from './controller-params.js';
import { contentSourceMessage, contentSourceOf, sizeForSource } from './snapshot-params.js';

export interface ControllerServiceOptions {
  volumes: Pick<VolumeApi, 'create' | 'delete' | 'get' | 'nodes' | 'modify' | 'expand' | 'publish' | 'unpublish' | 'listPage' | 'placeableBytes'>;
  /** Snapshots, restore and clone; without it the snapshot calls answer UNIMPLEMENTED. */
  snapshots?: SnapshotService;
  /** Snapshots under a rule (cairn.dev/snapshot-rule); without it that parameter is FAILED_PRECONDITION. */
  ruleSnapshots?: RuleSnapshotTaker;
  log: Logger;
  locks: CsiLocks;
}

/** The controller capabilities whose RPCs are complete (with SNAPSHOT_CAPABILITIES when snapshots are served). */
export const CONTROLLER_CAPABILITIES = [
  'CREATE_DELETE_VOLUME', 'PUBLISH_UNPUBLISH_VOLUME', 'LIST_VOLUMES', 'GET_CAPACITY', 'PUBLISH_READONLY', 'EXPAND_VOLUME',
  'LIST_VOLUMES_PUBLISHED_NODES', 'VOLUME_CONDITION', 'GET_VOLUME', 'MODIFY_VOLUME',
] as const;

type ContentSource = { snapshot: string } | { volume: string };

interface CreateArgs { sizeBytes: number; replicas?: number; fsType?: string; zones?: string[]; source?: ContentSource }

/** The parsed CreateVolume arguments (validated before any lock or side effect). */
function createArgs(r: CsiRequest): CreateArgs {
  if (!isVolumeId(r.name)) {
    throw new StorageError(Code.INVALID_ARGUMENT, `name "${r.name}" is not valid: use 1-253 lower-case letters, digits, '.', '_' or '-'`, { details: { field: 'name' } });
  }
  const capabilities = r.volumeCapabilities as CsiRequest[];
  checkCapabilities(capabilities);
  const params = parseParameters(r.parameters);
  const mutable = parseParameters(r.mutableParameters, true);
  checkTopology(r.accessibilityRequirements);
  const source = contentSourceOf(r);
  const replicas = mutable.replicas ?? params.replicas;
  const fsType = params.fsType ?? capabilities.map((c) => c.mount?.fsType).find((f) => f) ?? (capabilities.some((c) => c.mount) ? 'ext4' : undefined);
  return {
    sizeBytes: sizeForRange(r.capacityRange, minimumBytes(fsType)),
    ...(replicas ? { replicas } : {}), ...(fsType ? { fsType } : {}), ...(params.zones ? { zones: params.zones } : {}), ...(source ? { source } : {}),
  };
}

/** Whether `found` was made from `source` (the same kind, named by name or id), or both from nothing. */
function sameSource(found: VolumeView, source: ContentSource | undefined): boolean {
  const had = found.contentSource;
  if (!source || !had) return !source && !had;
  const [kind, id] = 'snapshot' in source ? ['snapshot', source.snapshot] : ['volume', source.volume];
  return had.kind === kind && (had.name === id || had.id === id);
}

/** Why an existing volume does not answer this CreateVolume (ALREADY_EXISTS), or undefined. */
function conflict(found: VolumeView, r: CsiRequest, args: CreateArgs): string | undefined {
  if (!sizeFitsRange(found.sizeBytes, r.capacityRange)) return `${found.sizeBytes} bytes, outside capacity_range`;
  if (args.replicas !== undefined && args.replicas !== found.replicasWanted) return `${found.replicasWanted} replica(s), not ${args.replicas}`;
  if (found.fsType !== args.fsType) return `fsType ${found.fsType ?? 'none'}, not ${args.fsType ?? 'none'}`;
  if (!sameSource(found, args.source)) return `content source ${found.contentSource ? `${found.contentSource.kind} ${found.contentSource.name}` : 'none'}`;
  return undefined;
}

/**
 * Placement refuses with FAILED_PRECONDITION (details.up: the nodes that are up) when fewer
 * nodes are up than replicas are wanted; the spec's code for a volume that cannot be
 * provisioned where it may live is RESOURCE_EXHAUSTED.
 */
function tooFewNodes(err: unknown): never {
  if (isStorageError(err) && err.code === Code.FAILED_PRECONDITION && typeof err.details.up === 'number') {
    throw new StorageError(Code.RESOURCE_EXHAUSTED, err.message, { details: err.details, cause: err });
  }
  throw err;
}

/** Why the volume cannot be used as `r` asks (ValidateVolumeCapabilities), or undefined. */
function validationProblem(r: CsiRequest, volume: VolumeView): string | undefined {
  try {
    checkCapabilities(r.volumeCapabilities);
    const params = parseParameters(r.parameters);
    const mutable = parseParameters(r.mutableParameters, true);
    const replicas = mutable.replicas ?? params.replicas;
    if (replicas !== undefined && replicas !== volume.replicasWanted) return `volume "${volume.name}" has ${volume.replicasWanted} replica(s), not ${replicas}`;
    if (params.fsType !== undefined && params.fsType !== volume.fsType) return `volume "${volume.name}" is for ${volume.fsType ?? 'no filesystem'}, not ${params.fsType}`;
    return undefined;
  } catch (err) {
    if (isStorageError(err) && err.code === Code.INVALID_ARGUMENT) return err.message;
    throw err;
  }
}

async function existing(volumes: ControllerServiceOptions['volumes'], name: string, signal: AbortSignal): Promise<VolumeView | undefined> {
  try {
    return await volumes.get(name, signal);
  } catch (err) {
    if (isStorageError(err) && err.code === Code.NOT_FOUND) return undefined;
    throw err;
  }
}

export function controllerService(options: ControllerServiceOptions): CsiService {
  const { volumes, snapshots } = options;
  const capabilities = [...CONTROLLER_CAPABILITIES, ...(snapshots ? SNAPSHOT_CAPABILITIES : [])];
  return csiService('Controller', {
    CreateVolume: {
      required: ['name', 'volume_capabilities', 'volume_capabilities.access_mode'],
      validate: (r) => void createArgs(r),
      locks: (r) => [volumeLockKey(r.name)],
      logIds: (r) => ({ volume: r.name }),
      handler: async (r, { signal }) => {
        const args = createArgs(r);
        const claim = claimOf(r.parameters);
        const found = await existing(volumes, r.name, signal);
        if (args.source && !found) {
          const what = 'snapshot' in args.source ? `snapshot "${args.source.snapshot}"` : `volume "${args.source.volume}"`;
          args.sizeBytes = sizeForSource(r.capacityRange, await sourceBytes(args.source, snapshots, volumes, signal), `the source ${what}`, minimumBytes(args.fsType));
        }
        const why = found && conflict(found, r, args);
        if (why) throw new StorageError(Code.ALREADY_EXISTS, `volume "${r.name}" already exists with ${why}: use another name`, { details: { volume: r.name } });
        const preferredNode = preferredNodeOf(r.accessibilityRequirements);
        // The node list costs a store read: only a requisite topology needs it here.
        const requisite = found || !r.accessibilityRequirements?.requisite?.length ? undefined : requisiteNodes(r.accessibilityRequirements, await volumes.nodes());
        // An existing volume (or one a crash left half-made) is completed and returned as it is.
        const view = await volumes.create(r.name, found?.sizeBytes ?? args.sizeBytes, {
          ...(found ? { replicas: found.replicasWanted } : args.replicas ? { replicas: args.replicas } : {}),
          ...(preferredNode ? { preferredNode } : {}),
          ...(requisite ? { requisiteNodes: requisite } : {}),
          ...(args.zones && !found ? { zones: args.zones } : {}),
          ...(args.fsType ? { fsType: args.fsType } : {}),
          ...(args.source ? { source: args.source } : {}),
          ...(claim ? { claim } : {}),
        }, signal).catch(tooFewNodes);
        return { volume: { ...volumeMessage(view), ...(args.source ? { contentSource: contentSourceMessage(args.source) } : {}) } };
      },
    },
    DeleteVolume: {
      required: ['volume_id'],
      locks: (r) => [volumeLockKey(r.volumeId)],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        // An id that cannot name a Cairn volume names none: deleting it succeeds (idempotent).
        if (!isVolumeId(r.volumeId)) return {};
        await volumes.delete(r.volumeId, false, signal);
        return {};
      },
    },
    ValidateVolumeCapabilities: {
      required: ['volume_id', 'volume_capabilities', 'volume_capabilities.access_mode'],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        if (!isVolumeId(r.volumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.volumeId}" not found`, { details: { volume: r.volumeId } });
        const volume = await volumes.get(r.volumeId, signal);
        const problem = validationProblem(r, volume);
        if (problem) return { message: problem };
        return {
          confirmed: {
            volumeContext: r.volumeContext ?? {}, volumeCapabilities: r.volumeCapabilities,
            parameters: r.parameters ?? {}, mutableParameters: r.mutableParameters ?? {},
          },
        };
      },
    },
    ControllerGetVolume: {
      required: ['volume_id'],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        if (!isVolumeId(r.volumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.volumeId}" not found`, { details: { volume: r.volumeId } });
        const view = await volumes.get(r.volumeId, signal);
        return { volume: volumeMessage(view), status: volumeStatus(view) };
      },
    },
    ...controllerPublishMethods(volumes),
    ...controllerListMethods(volumes),
    ...controllerModifyMethods(volumes),
    ...controllerExpandMethods(volumes),
    ...(snapshots ? controllerSnapshotMethods(snapshots, options.ruleSnapshots) : {}),
    ControllerGetCapabilities: {
      handler: () => ({ capabilities: capabilities.map((type) => ({ rpc: { type } })) }),
    },
  }, options);
}
