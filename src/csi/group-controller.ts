/**
 * The CSI GroupController (VolumeGroupSnapshot): thin handlers over the group snapshot
 * coordinator (snapshot/group-coordinator.ts; docs/snapshots.md, "Group snapshots").
 *
 * - group_snapshot_id is the group's name, each member's snapshot_id its snapshot's name,
 *   and every member carries the group_snapshot_id.
 * - CreateVolumeGroupSnapshot is idempotent by name: the same source volumes return the
 *   group (ready_to_use only once every member is); other volumes are ALREADY_EXISTS.
 * - DeleteVolumeGroupSnapshot of an unknown id is OK; snapshot_ids, when given, must be the
 *   group's members (INVALID_ARGUMENT otherwise).
 * - GetVolumeGroupSnapshot is NOT_FOUND for an unknown id.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { SnapshotService } from '../cluster/snapshot-types.js';
import type { GroupCoordinator } from '../snapshot/group-coordinator.js';
import type { GroupSnapshotDoc } from '../snapshot/group-doc.js';
import { csiService, type CsiCallOptions, type CsiRequest, type CsiService } from './csi-call.js';
import { snapshotLockKey } from './csi-locks.js';
import { isSnapshotId, parseSnapshotParameters, snapshotMessage, SNAPSHOT_RULE_PARAMETER, timestampOf } from './snapshot-params.js';
import type { GroupRuleSnapshots } from '../snapshot/group-rules.js';

export interface GroupControllerOptions extends CsiCallOptions {
  groups: GroupCoordinator;
  /** Groups under a VolumeGroupSnapshotClass's `cairn.dev/snapshot-rule`; such a request is FAILED_PRECONDITION without it. */
  groupRules?: Pick<GroupRuleSnapshots, 'create'>;
  snapshots: SnapshotService;
}

const groupLockKey = (name: string): string => snapshotLockKey(`group/${name}`);

async function groupMessage(g: GroupSnapshotDoc, snapshots: SnapshotService): Promise<CsiRequest> {
  const members = await Promise.all(g.members.map((m) => snapshots.get(m.snapshotId)));
  return {
    groupSnapshotId: g.name, creationTime: timestampOf(g.createdAt), readyToUse: g.readyToUse && members.every((m) => m.readyToUse),
    snapshots: members.map((m) => ({ ...snapshotMessage(m), groupSnapshotId: g.name })),
  };
}

async function findGroup(groups: GroupCoordinator, name: string): Promise<GroupSnapshotDoc | undefined> {
  if (!isSnapshotId(name)) return undefined;
  try {
    return await groups.get(name);
  } catch (err) {
    if (isStorageError(err, Code.NOT_FOUND)) return undefined;
    throw err;
  }
}

function checkMembers(g: GroupSnapshotDoc, snapshotIds: readonly string[]): void {
  const members = new Set(g.members.map((m) => m.snapshotName));
  const foreign = snapshotIds.filter((id) => !members.has(id));
  if (foreign.length > 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `snapshots ${foreign.join(', ')} are not members of group snapshot "${g.name}"`, { details: { groupSnapshot: g.name } });
  }
}

export function groupControllerService(options: GroupControllerOptions): CsiService {
  const { groups, snapshots } = options;
  return csiService('GroupController', {
    GroupControllerGetCapabilities: {
      quiet: true,
      handler: () => ({ capabilities: [{ rpc: { type: 'CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT' } }] }),
    },
    CreateVolumeGroupSnapshot: {
      required: ['name', 'source_volume_ids'],
      validate: (r) => {
        if (!isSnapshotId(r.name)) throw new StorageError(Code.INVALID_ARGUMENT, `name "${r.name}" is not valid: use 1-253 lower-case letters, digits, '.', '_' or '-'`, { details: { field: 'name' } });
      },
      locks: (r) => [groupLockKey(r.name)],
      logIds: (r) => ({ groupSnapshot: r.name, volumes: r.sourceVolumeIds }),
      handler: async (r) => {
        const input = { name: r.name, volumes: [...r.sourceVolumeIds] };
        const { rule, namespace } = parseSnapshotParameters(r.parameters);
        if (rule && !options.groupRules) throw new StorageError(Code.FAILED_PRECONDITION, `this cairnd does not run snapshot rules on group snapshots (${SNAPSHOT_RULE_PARAMETER} "${rule}")`);
        const g = rule ? await options.groupRules!.create({ ...input, rule, ...(namespace ? { namespace } : {}) }) : await groups.create(input);
        return { groupSnapshot: await groupMessage(g, snapshots) };
      },
    },
    DeleteVolumeGroupSnapshot: {
      required: ['group_snapshot_id'],
      locks: (r) => [groupLockKey(r.groupSnapshotId)],
      logIds: (r) => ({ groupSnapshot: r.groupSnapshotId }),
      handler: async (r) => {
        const g = await findGroup(groups, r.groupSnapshotId);
        if (!g) return {};
        checkMembers(g, r.snapshotIds ?? []);
        await groups.delete(g.name);
        return {};
      },
    },
    GetVolumeGroupSnapshot: {
      required: ['group_snapshot_id'],
      logIds: (r) => ({ groupSnapshot: r.groupSnapshotId }),
      handler: async (r) => {
        const g = await findGroup(groups, r.groupSnapshotId);
        if (!g) throw new StorageError(Code.NOT_FOUND, `group snapshot "${r.groupSnapshotId}" not found`, { details: { groupSnapshot: r.groupSnapshotId } });
        checkMembers(g, r.snapshotIds ?? []);
        return { groupSnapshot: await groupMessage(g, snapshots) };
      },
    },
  }, options);
}
