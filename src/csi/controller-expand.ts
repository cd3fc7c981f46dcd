/**
 * CSI ControllerExpandVolume (capability EXPAND_VOLUME; the plugin's VolumeExpansion is
 * ONLINE): grows the volume while it stays published and served (cluster/volume-expand.ts:
 * every replica first, then the volume document, which the engine follows).
 *
 * - capacity_range.required_bytes is the size the volume must have at least, rounded up
 *   to 4 KiB; limit_bytes, when set, bounds that rounded size (OUT_OF_RANGE past it, or
 *   past Cairn's maximum, or past what the volume's region size allows).
 * - A volume already at least that large answers OK with its size and nothing changes
 *   (the spec's idempotency rule), even when it is larger than limit_bytes: volumes
 *   never shrink.
 * - volume_capability, when given, must be one Cairn serves and fit the volume (a mount
 *   fs_type other than the volume's is INVALID_ARGUMENT).
 * - node_expansion_required is always true, for block volumes too: the node's kernel
 *   device (/dev/nbdX, or the loop device over nbdfuse) keeps its old size until
 *   NodeExpandVolume tells it, and a filesystem grows only then. An NBD connection cannot
 *   be told that its export grew; the node side must resize the device itself.
 */
import { Code, StorageError } from '../common/errors.js';
import { validateName } from '../common/ids.js';
import type { VolumeApi, VolumeView } from '../cluster/volume-views.js';
import type { CsiMethods, CsiRequest } from './csi-call.js';
import { volumeLockKey } from './csi-locks.js';
import { checkCapabilities, sizeForRange } from './controller-params.js';

/** The size the request asks for at least (rounded up to 4 KiB) and its limit; OUT_OF_RANGE for a range no volume can meet. */
function expandArgs(r: CsiRequest): { requiredBytes: number; targetBytes: number } {
  const range = r.capacityRange as { requiredBytes?: string | number; limitBytes?: string | number };
  const requiredBytes = Number(range.requiredBytes ?? 0);
  if (!(requiredBytes > 0)) {
    throw new StorageError(Code.OUT_OF_RANGE, 'capacity_range.required_bytes must be set to the size the volume must have at least', { details: { field: 'capacity_range' } });
  }
  if (r.volumeCapability) checkCapabilities([r.volumeCapability as CsiRequest], 'volume_capability');
  return { requiredBytes, targetBytes: sizeForRange(range) };
}

function fitsVolume(r: CsiRequest, volume: VolumeView): void {
  const fsType = (r.volumeCapability as CsiRequest | undefined)?.mount?.fsType as string | undefined;
  if (fsType && volume.fsType && fsType !== volume.fsType) {
    throw new StorageError(Code.INVALID_ARGUMENT, `volume_capability.mount.fs_type "${fsType}" does not match volume "${volume.name}", created for ${volume.fsType}`,
      { details: { field: 'volume_capability', volume: volume.name } });
  }
}

/** An id that cannot be a Cairn volume name names no volume. */
function checkVolumeId(id: string): void {
  try {
    validateName('volume', id);
  } catch {
    throw new StorageError(Code.NOT_FOUND, `volume "${id}" not found`, { details: { volume: id } });
  }
}

/** The Controller method table entry the controller service merges in. */
export function controllerExpandMethods(volumes: Pick<VolumeApi, 'expand' | 'get'>): CsiMethods {
  return {
    ControllerExpandVolume: {
      required: ['volume_id', 'capacity_range'],
      // A capacity range is checked before the volume is looked up: a range no volume can meet is OUT_OF_RANGE for any id.
      validate: (r) => void expandArgs(r),
      locks: (r) => [volumeLockKey(r.volumeId)],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        const { requiredBytes, targetBytes } = expandArgs(r);
        checkVolumeId(r.volumeId);
        const current = await volumes.get(r.volumeId, signal);
        fitsVolume(r, current);
        const view = current.sizeBytes >= requiredBytes ? current : await volumes.expand(r.volumeId, targetBytes, signal);
        return { capacityBytes: String(view.sizeBytes), nodeExpansionRequired: true };
      },
    },
  };
}
