/**
 * CSI snapshots (CREATE_DELETE_SNAPSHOT, LIST_SNAPSHOTS, GET_SNAPSHOT): thin handlers over
 * the cluster's snapshot service (docs/snapshots.md), and the source lookup CreateVolume
 * does for a volume_content_source (CLONE_VOLUME and restores).
 *
 * - CreateSnapshot is idempotent by name: the same name and source returns the snapshot
 *   (ready_to_use says whether every copy is durable yet); the same name for another
 *   source is ALREADY_EXISTS; an unknown source volume is NOT_FOUND.
 * - DeleteSnapshot of an unknown id is OK.
 * - ListSnapshots filters by snapshot_id and source_volume_id (an unknown one gives an
 *   empty list, not an error) and pages in name order (snapshot-params.ts).
 * - GetSnapshot (v1.12) is NOT_FOUND for an unknown id.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { SnapshotService, SnapshotView } from '../cluster/snapshot-types.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import type { RuleSnapshots } from '../snapshot/rule-snapshots.js';
import type { CsiMethods, CsiRequest } from './csi-call.js';
import { snapshotLockKey } from './csi-locks.js';
import { isVolumeId } from './controller-params.js';
import { decodeSnapshotToken, isSnapshotId, parseSnapshotParameters, SNAPSHOT_RULE_PARAMETER, snapshotMessage, snapshotPage } from './snapshot-params.js';

/** The controller capabilities the snapshot calls add. */
export const SNAPSHOT_CAPABILITIES = ['CREATE_DELETE_SNAPSHOT', 'LIST_SNAPSHOTS', 'GET_SNAPSHOT', 'CLONE_VOLUME'] as const;

const notFound = (id: string): StorageError => new StorageError(Code.NOT_FOUND, `snapshot "${id}" not found`, { details: { snapshot: id } });

function validateCreate(r: CsiRequest): void {
  if (!isSnapshotId(r.name)) {
    throw new StorageError(Code.INVALID_ARGUMENT, `name "${r.name}" is not valid: use 1-253 lower-case letters, digits, '.', '_' or '-'`, { details: { field: 'name' } });
  }
  parseSnapshotParameters(r.parameters);
}

/** The snapshot by name or id, or undefined when there is none. */
async function findSnapshot(snapshots: SnapshotService, id: string): Promise<SnapshotView | undefined> {
  if (!isSnapshotId(id)) return undefined;
  try {
    return await snapshots.get(id);
  } catch (err) {
    if (isStorageError(err, Code.NOT_FOUND)) return undefined;
    throw err;
  }
}

/** Snapshots under a rule (the class parameter cairn.dev/snapshot-rule). */
export type RuleSnapshotTaker = Pick<RuleSnapshots, 'create'>;

export function controllerSnapshotMethods(snapshots: SnapshotService, ruleSnapshots?: RuleSnapshotTaker): CsiMethods {
  return {
    CreateSnapshot: {
      required: ['name', 'source_volume_id'],
      validate: validateCreate,
      locks: (r) => [snapshotLockKey(r.name)],
      logIds: (r) => ({ snapshot: r.name, volume: r.sourceVolumeId }),
      handler: async (r, { signal }) => {
        const found = await findSnapshot(snapshots, r.name);
        if (found && found.sourceVolumeName !== r.sourceVolumeId && found.sourceVolumeId !== r.sourceVolumeId) {
          throw new StorageError(Code.ALREADY_EXISTS, `snapshot "${r.name}" already exists for volume "${found.sourceVolumeName}", not "${r.sourceVolumeId}": use another name`, {
            details: { snapshot: r.name },
          });
        }
        if (!found && !isVolumeId(r.sourceVolumeId)) throw new StorageError(Code.NOT_FOUND, `volume "${r.sourceVolumeId}" not found`, { details: { volume: r.sourceVolumeId } });
        const params = parseSnapshotParameters(r.parameters);
        if (params.rule && !found) {
          if (!ruleSnapshots) {
            throw new StorageError(Code.FAILED_PRECONDITION, `parameters.${SNAPSHOT_RULE_PARAMETER}: this cairnd does not take snapshots under a rule`, { details: { field: `parameters.${SNAPSHOT_RULE_PARAMETER}` } });
          }
          const view = await ruleSnapshots.create({ name: r.name, volume: r.sourceVolumeId, rule: params.rule, ...(params.namespace ? { namespace: params.namespace } : {}), signal });
          return { snapshot: snapshotMessage(view) };
        }
        const view = await snapshots.create({ name: r.name, volume: r.sourceVolumeId }, { signal });
        return { snapshot: snapshotMessage(view) };
      },
    },
    DeleteSnapshot: {
      required: ['snapshot_id'],
      locks: (r) => [snapshotLockKey(r.snapshotId)],
      handler: async (r) => {
        // An id that cannot name a Cairn snapshot names none: deleting it succeeds (idempotent).
        if (isSnapshotId(r.snapshotId)) await snapshots.delete(r.snapshotId);
        return {};
      },
    },
    ListSnapshots: {
      validate: (r) => {
        if (r.maxEntries < 0) throw new StorageError(Code.INVALID_ARGUMENT, `max_entries must not be negative, got ${r.maxEntries}`, { details: { field: 'max_entries' } });
      },
      handler: async (r) => {
        const after = r.startingToken ? decodeSnapshotToken(r.startingToken) : undefined;
        let all: SnapshotView[];
        if (r.snapshotId) {
          const one = await findSnapshot(snapshots, r.snapshotId);
          all = one && (!r.sourceVolumeId || one.sourceVolumeName === r.sourceVolumeId || one.sourceVolumeId === r.sourceVolumeId) ? [one] : [];
        } else if (r.sourceVolumeId) {
          all = isVolumeId(r.sourceVolumeId) ? await snapshots.list({ volume: r.sourceVolumeId }) : [];
        } else {
          all = await snapshots.list();
        }
        const { page, nextToken } = snapshotPage(all, after, r.maxEntries ?? 0);
        return { entries: page.map((s) => ({ snapshot: snapshotMessage(s) })), nextToken };
      },
    },
    GetSnapshot: {
      required: ['snapshot_id'],
      handler: async (r) => {
        const found = await findSnapshot(snapshots, r.snapshotId);
        if (!found) throw notFound(r.snapshotId);
        return { snapshot: snapshotMessage(found) };
      },
    },
  };
}

/**
 * The size in bytes of CreateVolume's source, which must exist: NOT_FOUND naming it
 * otherwise (the spec's code for a source that does not exist).
 */
export async function sourceBytes(
  source: { snapshot: string } | { volume: string },
  snapshots: SnapshotService | undefined,
  volumes: Pick<VolumeApi, 'get'>,
  signal: AbortSignal,
): Promise<number> {
  if ('snapshot' in source) {
    if (!snapshots) throw new StorageError(Code.INVALID_ARGUMENT, 'volume_content_source.snapshot: this cairnd does not serve snapshots', { details: { field: 'volume_content_source' } });
    const found = await findSnapshot(snapshots, source.snapshot);
    if (!found) throw new StorageError(Code.NOT_FOUND, `source snapshot "${source.snapshot}" not found`, { details: { snapshot: source.snapshot } });
    return found.sizeBytes;
  }
  if (!isVolumeId(source.volume)) throw new StorageError(Code.NOT_FOUND, `source volume "${source.volume}" not found`, { details: { volume: source.volume } });
  try {
    return (await volumes.get(source.volume, signal)).sizeBytes;
  } catch (err) {
    if (isStorageError(err, Code.NOT_FOUND)) throw new StorageError(Code.NOT_FOUND, `source volume "${source.volume}" not found`, { details: { volume: source.volume }, cause: err });
    throw err;
  }
}
