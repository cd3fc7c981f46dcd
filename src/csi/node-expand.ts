/**
 * CSI NodeExpandVolume (NodeGetCapabilities EXPAND_VOLUME), the node half of online
 * expansion: ControllerExpandVolume (controller-expand.ts) grew the replicas and the volume
 * document, and always answers node_expansion_required; here the staged volume's kernel
 * device and filesystem follow (engine/stager.ts `expand`).
 *
 * - The target is capacity_range.required_bytes, or without it the volume's size. It may
 *   not exceed the volume's size (OUT_OF_RANGE: ControllerExpandVolume grows the volume,
 *   the node cannot); the device then gets everything the export serves.
 * - The engine on this node follows the document through its watch: the call waits for it,
 *   bounded by its own deadline.
 * - volume_path must be where the volume is: its staging path, a mount of its filesystem,
 *   its device node or a bind of it (NOT_FOUND otherwise, as for NodeGetVolumeStats).
 * - Codes (the spec's table): INVALID_ARGUMENT missing fields or a capability that does not
 *   fit the staging; NOT_FOUND unknown volume, or a path that is not the volume's;
 *   FAILED_PRECONDITION not staged here (or staged read-only); OUT_OF_RANGE as above.
 * - Idempotent: a device and filesystem already grown are left as they are, and the reply
 *   is the device's size.
 */
import { basename, resolve } from 'node:path';
import { Code, StorageError } from '../common/errors.js';
import { validateName } from '../common/ids.js';
import { deviceNumber, findMount } from '../engine/mounter.js';
import type { Stager } from '../engine/stager.js';
import type { StagedVolumeRecord } from '../store/staged-volume-record.js';
import type { CsiMethods, CsiRequest } from './csi-call.js';
import { volumeLockKey } from './csi-locks.js';

export interface NodeExpandOptions {
  stager: Pick<Stager, 'get' | 'expand'>;
  volumes: { get(name: string, signal?: AbortSignal): Promise<{ sizeBytes: number }> };
  /** The Node service's capability check (node-server.ts checkCapability): whether it asks for block. */
  capabilityIsBlock: (capability: CsiRequest) => boolean;
}

function outOfRange(message: string, details: Record<string, unknown>): StorageError {
  return new StorageError(Code.OUT_OF_RANGE, message, { details: { field: 'capacity_range', ...details } });
}

function rangeOf(r: CsiRequest): { requiredBytes: number; limitBytes: number } {
  const range = (r.capacityRange ?? {}) as { requiredBytes?: string | number; limitBytes?: string | number };
  const requiredBytes = Number(range.requiredBytes ?? 0);
  const limitBytes = Number(range.limitBytes ?? 0);
  if (requiredBytes < 0 || limitBytes < 0) throw outOfRange('capacity_range bytes must not be negative', {});
  if (limitBytes > 0 && requiredBytes > limitBytes) throw outOfRange(`capacity_range.required_bytes ${requiredBytes} is over limit_bytes ${limitBytes}`, { requiredBytes, limitBytes });
  return { requiredBytes, limitBytes };
}

/** Whether `path` is where staged volume `record` is: staging path, device, a mount of its filesystem or a bind of its device node. */
async function isVolumePath(record: StagedVolumeRecord, path: string): Promise<boolean> {
  if (path === record.stagingPath || path === record.devicePath) return true;
  const m = await findMount(path);
  if (!m) return false;
  if (record.accessType === 'block') return m.root === `/${basename(record.devicePath)}`;
  return m.device === await deviceNumber(record.devicePath).catch(() => '');
}

export function nodeExpandMethods(o: NodeExpandOptions): CsiMethods {
  return {
    NodeExpandVolume: {
      required: ['volume_id', 'volume_path'],
      validate: (r) => {
        for (const [field, path] of [['volume_path', r.volumePath], ['staging_target_path', r.stagingTargetPath]] as const) {
          if (path && !String(path).startsWith('/')) throw new StorageError(Code.INVALID_ARGUMENT, `${field} must be an absolute path`, { details: { field } });
        }
        if (r.volumeCapability) o.capabilityIsBlock(r.volumeCapability);
        rangeOf(r);
      },
      locks: (r) => [volumeLockKey(r.volumeId)],
      handler: async (r, { signal }) => {
        const volume = String(r.volumeId);
        const { requiredBytes, limitBytes } = rangeOf(r);
        try {
          validateName('volume', volume);
        } catch {
          throw new StorageError(Code.NOT_FOUND, `volume "${volume}" not found`, { details: { volume } });
        }
        const view = await o.volumes.get(volume, signal);
        const record = o.stager.get(volume);
        if (!record || record.state !== 'staged') {
          throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume}" is not staged on this node: call NodeStageVolume first`, { details: { volume } });
        }
        const staging = r.stagingTargetPath ? resolve(String(r.stagingTargetPath)) : record.stagingPath;
        if (staging !== record.stagingPath) throw new StorageError(Code.NOT_FOUND, `volume "${volume}" is not staged at ${staging}`, { details: { volume, stagingPath: staging } });
        const path = resolve(String(r.volumePath));
        if (!(await isVolumePath(record, path))) throw new StorageError(Code.NOT_FOUND, `volume "${volume}" is not at ${path}`, { details: { volume, path } });
        if (r.volumeCapability && o.capabilityIsBlock(r.volumeCapability) !== (record.accessType === 'block')) {
          throw new StorageError(Code.INVALID_ARGUMENT, `volume "${volume}" is staged as ${record.accessType}, not as the volume_capability says`, { details: { volume, field: 'volume_capability' } });
        }
        const target = requiredBytes || view.sizeBytes;
        if (target > view.sizeBytes) {
          throw outOfRange(`volume "${volume}" is ${view.sizeBytes} bytes, less than required_bytes ${target}: ControllerExpandVolume grows it first`, { volume, sizeBytes: view.sizeBytes, requiredBytes: target });
        }
        if (limitBytes > 0 && view.sizeBytes > limitBytes) {
          throw outOfRange(`volume "${volume}" is ${view.sizeBytes} bytes, over limit_bytes ${limitBytes}: its device grows to the whole volume`, { volume, sizeBytes: view.sizeBytes, limitBytes });
        }
        const { capacityBytes } = await o.stager.expand(volume, { requiredBytes: target, signal });
        return { capacityBytes: String(capacityBytes) };
      },
    },
  };
}
