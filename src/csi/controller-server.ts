/**
 * The CSI Controller service (roles `controller` and `all`): thin handlers over the
 * cluster's volume API. The CSI volume_id is the Cairn volume's name: the name is what
 * every Cairn call is keyed by, the provisioner's name (pvc-<uid>) is already unique and
 * stable, and `cairnctl volume inspect <volume_id>` then works on what Kubernetes shows.
 *
 * Served: CreateVolume, DeleteVolume, ValidateVolumeCapabilities, ControllerGetVolume,
 * ControllerModifyVolume (controller-modify.ts), ControllerExpandVolume (controller-expand.ts),
 * ControllerGetCapabilities. Every other Controller
 * method answers UNIMPLEMENTED and its capability is not advertised.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { VolumeApi, VolumeView } from '../cluster/volume-views.js';
import { csiService, type CsiRequest, type CsiService } from './csi-call.js';
import { volumeLockKey, type CsiLocks } from './csi-locks.js';
import { volumeCondition } from './volume-condition.js';
import { controllerModifyMethods } from './controller-modify.js';
import { controllerExpandMethods } from './controller-expand.js';
import {
  TOPOLOGY_NODE_KEY, checkCapabilities, checkTopology, parseParameters, preferredNodeOf, requisiteNodes, sizeFitsRange, sizeForRange,
} from './controller-params.js';

export interface ControllerServiceOptions {
  volumes: Pick<VolumeApi, 'create' | 'delete' | 'get' | 'nodes' | 'modify' | 'expand'>;
  log: Logger;
  locks: CsiLocks;
}

/** The controller capabilities whose RPCs are complete. */
export const CONTROLLER_CAPABILITIES = ['CREATE_DELETE_VOLUME', 'GET_VOLUME', 'VOLUME_CONDITION', 'MODIFY_VOLUME', 'EXPAND_VOLUME'] as const;

const NAME_RE = /^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$/;

/** The parsed CreateVolume arguments (validated before any lock or side effect). */
function createArgs(r: CsiRequest): { sizeBytes: number; replicas?: number; fsType: string } {
  if (!NAME_RE.test(r.name)) {
    throw new StorageError(Code.INVALID_ARGUMENT, `name "${r.name}" is not valid: use 1-253 lower-case letters, digits, '.', '_' or '-'`, { details: { field: 'name' } });
  }
  checkCapabilities(r.volumeCapabilities);
  const params = parseParameters(r.parameters);
  const mutable = parseParameters(r.mutableParameters, true);
  checkTopology(r.accessibilityRequirements);
  if (r.volumeContentSource) {
    throw new StorageError(Code.INVALID_ARGUMENT, 'volume_content_source is not supported: Cairn creates empty volumes only', { details: { field: 'volume_content_source' } });
  }
  const replicas = mutable.replicas ?? params.replicas;
  const capabilityFs = (r.volumeCapabilities as CsiRequest[]).map((c) => c.mount?.fsType).find((f) => f);
  return { sizeBytes: sizeForRange(r.capacityRange), ...(replicas ? { replicas } : {}), fsType: params.fsType ?? capabilityFs ?? 'ext4' };
}

function volumeReply(v: VolumeView, fsType: string): CsiRequest {
  return {
    volume: {
      volumeId: v.name,
      capacityBytes: String(v.sizeBytes),
      volumeContext: { fsType, replicas: String(v.replicasWanted) },
      accessibleTopology: v.replicas.map((r) => ({ segments: { [TOPOLOGY_NODE_KEY]: r.nodeName } })),
    },
  };
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
  const { volumes } = options;
  return csiService('Controller', {
    CreateVolume: {
      required: ['name', 'volume_capabilities', 'volume_capabilities.access_mode'],
      validate: (r) => void createArgs(r),
      locks: (r) => [volumeLockKey(r.name)],
      logIds: (r) => ({ volume: r.name }),
      handler: async (r, { signal }) => {
        const args = createArgs(r);
        const found = await existing(volumes, r.name, signal);
        if (found && (!sizeFitsRange(found.sizeBytes, r.capacityRange) || (args.replicas !== undefined && args.replicas !== found.replicasWanted))) {
          throw new StorageError(Code.ALREADY_EXISTS,
            `volume "${r.name}" already exists with ${found.sizeBytes} bytes and ${found.replicasWanted} replica(s), which this request does not allow`, { details: { volume: r.name } });
        }
        const preferredNode = preferredNodeOf(r.accessibilityRequirements);
        const requisite = found ? undefined : requisiteNodes(r.accessibilityRequirements, await volumes.nodes());
        // An existing volume (or one a crash left half-made) is completed and returned as it is.
        const view = await volumes.create(r.name, found?.sizeBytes ?? args.sizeBytes, {
          ...(found ? { replicas: found.replicasWanted } : args.replicas ? { replicas: args.replicas } : {}),
          ...(preferredNode ? { preferredNode } : {}),
          ...(requisite ? { requisiteNodes: requisite } : {}),
        }, signal).catch(tooFewNodes);
        return volumeReply(view, args.fsType);
      },
    },
    DeleteVolume: {
      required: ['volume_id'],
      locks: (r) => [volumeLockKey(r.volumeId)],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        // An id that cannot name a Cairn volume names none: deleting it succeeds (idempotent).
        if (!NAME_RE.test(r.volumeId)) return {};
        await volumes.delete(r.volumeId, false, signal);
        return {};
      },
    },
    ValidateVolumeCapabilities: {
      required: ['volume_id', 'volume_capabilities', 'volume_capabilities.access_mode'],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        if (!NAME_RE.test(r.volumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.volumeId}" not found`, { details: { volume: r.volumeId } });
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
        if (!NAME_RE.test(r.volumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.volumeId}" not found`, { details: { volume: r.volumeId } });
        const view = await volumes.get(r.volumeId, signal);
        const { volume } = volumeReply(view, '');
        // No fsType here: it is the StorageClass's, which the volume does not keep.
        return { volume: { ...volume, volumeContext: { replicas: String(view.replicasWanted) } }, status: { publishedNodeIds: [], volumeCondition: volumeCondition(view) } };
      },
    },
    ...controllerModifyMethods(volumes),
    ...controllerExpandMethods(volumes),
    ControllerGetCapabilities: {
      handler: () => ({ capabilities: CONTROLLER_CAPABILITIES.map((type) => ({ rpc: { type } })) }),
    },
  }, options);
}
