/**
 * CSI ListVolumes (LIST_VOLUMES, LIST_VOLUMES_PUBLISHED_NODES) and GetCapacity (GET_CAPACITY).
 *
 * ListVolumes pages through the volumes in name order. next_token encodes "after the volume
 * named X" (not a position), so a page is still right when volumes were created or deleted
 * since the previous one: nothing is skipped or repeated except what changed. A token this
 * driver did not make is ABORTED (list again without one); max_entries below 0 is
 * INVALID_ARGUMENT. Each entry is the volume as ControllerGetVolume shows it, with the nodes
 * it is published to and its volume condition.
 *
 * GetCapacity answers the largest volume that CreateVolume could place now with the same
 * parameters (replicas on distinct up nodes, each with that much free; in `zones` when
 * given; one replica on a node of the accessible_topology segment when given):
 * available_capacity and maximum_volume_size are that size, minimum_volume_size is 4 KiB
 * or, for xfs, the smallest filesystem mkfs.xfs makes (and capacity under it is 0).
 */
import { Code, StorageError } from '../common/errors.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import type { CsiMethods, CsiRequest } from './csi-call.js';
import {
  TOPOLOGY_NODE_KEY, TOPOLOGY_ZONE_KEY, checkCapabilities, decodeListToken, encodeListToken, minimumBytes, parseParameters, requisiteNodes,
} from './controller-params.js';
import { volumeMessage, volumeStatus } from './controller-volume.js';

interface CapacityArgs { replicas?: number; zones?: string[]; fsType?: string; segments?: Record<string, string> }

/** GetCapacity's arguments; INVALID_ARGUMENT for an unknown parameter key or topology key, or a capability Cairn does not serve. */
function capacityArgs(r: CsiRequest): CapacityArgs {
  const capabilities = (r.volumeCapabilities ?? []) as CsiRequest[];
  checkCapabilities(capabilities);
  const params = parseParameters(r.parameters);
  const segments = (r.accessibleTopology?.segments ?? {}) as Record<string, string>;
  for (const key of Object.keys(segments)) {
    if (key !== TOPOLOGY_NODE_KEY && key !== TOPOLOGY_ZONE_KEY) {
      throw new StorageError(Code.INVALID_ARGUMENT, `accessible_topology has an unknown topology key "${key}"`, { details: { field: 'accessible_topology' } });
    }
  }
  const fsType = params.fsType ?? capabilities.map((c) => c.mount?.fsType).find((f) => f);
  return {
    ...(params.replicas ? { replicas: params.replicas } : {}), ...(params.zones ? { zones: params.zones } : {}),
    ...(fsType ? { fsType } : {}), ...(Object.keys(segments).length > 0 ? { segments } : {}),
  };
}

export function controllerListMethods(volumes: Pick<VolumeApi, 'listPage' | 'placeableBytes' | 'nodes'>): CsiMethods {
  return {
    ListVolumes: {
      validate: (r) => {
        if (r.maxEntries < 0) throw new StorageError(Code.INVALID_ARGUMENT, `max_entries must not be negative, got ${r.maxEntries}`, { details: { field: 'max_entries' } });
      },
      handler: async (r, { signal }) => {
        const after = r.startingToken ? decodeListToken(r.startingToken) : undefined;
        const page = await volumes.listPage(after, r.maxEntries ?? 0, signal);
        return {
          entries: page.volumes.map((v) => ({ volume: volumeMessage(v), status: volumeStatus(v) })),
          nextToken: page.last === undefined ? '' : encodeListToken(page.last),
        };
      },
    },
    GetCapacity: {
      validate: (r) => void capacityArgs(r),
      handler: async (r) => {
        const args = capacityArgs(r);
        const firstAmong = args.segments ? requisiteNodes({ requisite: [{ segments: args.segments }] }, await volumes.nodes()) : undefined;
        const placeable = await volumes.placeableBytes({
          ...(args.replicas ? { replicas: args.replicas } : {}), ...(args.zones ? { zones: args.zones } : {}), ...(firstAmong ? { firstAmong } : {}),
        });
        const minBytes = minimumBytes(args.fsType);
        const available = placeable >= minBytes ? placeable : 0;
        return { availableCapacity: String(available), maximumVolumeSize: { value: String(available) }, minimumVolumeSize: { value: String(minBytes) } };
      },
    },
  };
}
