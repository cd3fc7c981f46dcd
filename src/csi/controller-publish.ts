/**
 * CSI ControllerPublishVolume / ControllerUnpublishVolume (capabilities
 * PUBLISH_UNPUBLISH_VOLUME and PUBLISH_READONLY): the attach step records, in the volume's
 * document, which node may stage the volume and run its engine, and whether read-only
 * (cluster/volume-publish.ts). Nothing starts here: the engine the node starts at
 * NodeStageVolume bumps the volume's epoch and so fences any engine that ran before.
 *
 * - node_id must be a registered node (the id NodeGetInfo reports): NOT_FOUND otherwise.
 * - Published to that node already with the same readonly: OK, the same publish_context;
 *   with the other readonly: ALREADY_EXISTS.
 * - Published to another node: FAILED_PRECONDITION naming it, unless every publication, the
 *   new one too, is read-only and the capability is MULTI_NODE_READER_ONLY.
 * - Unpublish is OK for a node the volume is not published to and for an unknown volume;
 *   no node_id unpublishes it from every node.
 */
import { Code, StorageError } from '../common/errors.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import type { CsiMethods } from './csi-call.js';
import { volumeLockKey } from './csi-locks.js';
import { checkCapabilities, isVolumeId } from './controller-params.js';

/** What NodeStageVolume gets back from the CO: the node it was published to. */
export const PUBLISH_CONTEXT_NODE_KEY = 'cairn.dev/node';

export function controllerPublishMethods(volumes: Pick<VolumeApi, 'publish' | 'unpublish'>): CsiMethods {
  return {
    ControllerPublishVolume: {
      required: ['volume_id', 'node_id', 'volume_capability', 'volume_capability.access_mode'],
      validate: (r) => checkCapabilities([r.volumeCapability], 'volume_capability'),
      locks: (r) => [volumeLockKey(r.volumeId)],
      logIds: (r) => ({ volume: r.volumeId, publishedNode: r.nodeId }),
      handler: async (r, { signal }) => {
        if (!isVolumeId(r.volumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.volumeId}" not found`, { details: { volume: r.volumeId } });
        const access = { readonly: r.readonly === true, multiNodeReader: r.volumeCapability.accessMode.mode === 'MULTI_NODE_READER_ONLY' };
        await volumes.publish(r.volumeId, r.nodeId, access, signal);
        return { publishContext: { [PUBLISH_CONTEXT_NODE_KEY]: r.nodeId } };
      },
    },
    ControllerUnpublishVolume: {
      required: ['volume_id'],
      locks: (r) => [volumeLockKey(r.volumeId)],
      logIds: (r) => ({ volume: r.volumeId, publishedNode: r.nodeId }),
      handler: async (r, { signal }) => {
        if (isVolumeId(r.volumeId)) await volumes.unpublish(r.volumeId, r.nodeId || undefined, signal);
        return {};
      },
    },
  };
}
