/**
 * The CSI Volume message and volume status of a Cairn volume, one shape for CreateVolume,
 * ControllerGetVolume and ListVolumes.
 */
import type { VolumeView } from '../cluster/volume-views.js';
import type { CsiRequest } from './csi-call.js';
import { TOPOLOGY_NODE_KEY } from './controller-params.js';
import { PVC_NAME_CONTEXT_KEY, PVC_NAMESPACE_CONTEXT_KEY } from './kube-log-fields.js';
import { volumeCondition } from './volume-condition.js';

/**
 * volume_id (the name), capacity_bytes, volume_context {replicas, fsType when the volume has
 * one, pvcName and pvcNamespace when it was made for a claim: the later calls' logs name it}, accessible_topology: one node segment per node holding a replica, and content_source
 * for a volume restored from a snapshot or cloned from a volume (named by its CSI id, the name).
 */
export function volumeMessage(v: VolumeView): CsiRequest {
  return {
    volumeId: v.name,
    capacityBytes: String(v.sizeBytes),
    volumeContext: {
      replicas: String(v.replicasWanted), ...(v.fsType === undefined ? {} : { fsType: v.fsType }),
      ...(v.claim ? { [PVC_NAME_CONTEXT_KEY]: v.claim.name, [PVC_NAMESPACE_CONTEXT_KEY]: v.claim.namespace } : {}),
    },
    accessibleTopology: v.replicas.map((r) => ({ segments: { [TOPOLOGY_NODE_KEY]: r.nodeName } })),
    ...(v.contentSource ? {
      contentSource: v.contentSource.kind === 'snapshot' ? { snapshot: { snapshotId: v.contentSource.name } } : { volume: { volumeId: v.contentSource.name } },
    } : {}),
  };
}

/** The nodes it is published to and its condition (abnormal while degraded or faulted). */
export function volumeStatus(v: VolumeView): CsiRequest {
  return { publishedNodeIds: v.published.map((p) => p.nodeId), volumeCondition: volumeCondition(v) };
}
