/**
 * CSI ControllerModifyVolume (capability MODIFY_VOLUME): the mutable parameter `replicas`
 * (what a Kubernetes VolumeAttributesClass carries) changes the volume's replica count live
 * (cluster/volume-modify.ts). Every key is checked before anything changes: one Cairn does
 * not know is INVALID_ARGUMENT naming it, and nothing is changed. The `secrets` field is
 * not used (the wrapper redacts it in logs).
 *
 * The call returns OK once the change is recorded in the cluster store (new replicas
 * placed, created and listed as rebuilding; removed ones gone), not once new replicas are
 * in sync: a rebuild can outlast any sidecar's deadline, and the external-resizer retries a
 * call that did not return OK. ControllerGetVolume's volume condition says abnormal, naming
 * each replica still rebuilding, until they are.
 */
import { Code, StorageError } from '../common/errors.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import type { CsiMethods, CsiRequest } from './csi-call.js';
import { volumeLockKey } from './csi-locks.js';
import { parseParameters, type VolumeParameters } from './controller-params.js';

/** Volume ids Cairn can have (its volume names); any other id names no volume. */
const NAME_RE = /^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$/;

function modifyArgs(r: CsiRequest): VolumeParameters {
  return parseParameters(r.mutableParameters, true);
}

/** The Controller method table entry the controller service merges in. */
export function controllerModifyMethods(volumes: Pick<VolumeApi, 'modify'>): CsiMethods {
  return {
    ControllerModifyVolume: {
      required: ['volume_id', 'mutable_parameters'],
      validate: (r) => void modifyArgs(r),
      locks: (r) => [volumeLockKey(r.volumeId)],
      logIds: (r) => ({ volume: r.volumeId }),
      handler: async (r, { signal }) => {
        if (!NAME_RE.test(r.volumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.volumeId}" not found`, { details: { volume: r.volumeId } });
        const { replicas } = modifyArgs(r);
        await volumes.modify(r.volumeId, replicas === undefined ? {} : { replicas }, signal);
        return {};
      },
    },
  };
}
