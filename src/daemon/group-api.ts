/**
 * The group snapshot RPCs of the cairnctl API (CreateGroupSnapshot, ListGroupSnapshots,
 * GetGroupSnapshot, DeleteGroupSnapshot): thin handlers over the group coordinator.
 */
import type * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { unary } from '../rpc/status.js';
import type { GroupCoordinator } from '../snapshot/group-coordinator.js';
import type { GroupSnapshotDoc } from '../snapshot/group-doc.js';
import type { GroupRuleSnapshots } from '../snapshot/group-rules.js';
import { ruleOutcomeMessage } from './rule-api.js';

export interface GroupApiContext {
  /** The coordinator; the group RPCs answer UNIMPLEMENTED without it. */
  groups?: GroupCoordinator;
  /** Group snapshots under a rule; a request with `rule` answers UNIMPLEMENTED without it. */
  groupRules?: GroupRuleSnapshots;
  nodeName: string;
  log: Logger;
}

export function groupMessage(g: GroupSnapshotDoc): object {
  return {
    id: g.id, name: g.name, state: g.state, readyToUse: g.readyToUse, createdAt: g.createdAt,
    members: g.members.map(({ rule, ...m }) => ({ ...m, rule: rule ? ruleOutcomeMessage(rule) : null })), phases: { ...g.phases },
  };
}

function requireGroups(ctx: GroupApiContext): GroupCoordinator {
  if (!ctx.groups) throw new StorageError(Code.UNIMPLEMENTED, `this cairnd (${ctx.nodeName}) does not serve group snapshots: upgrade it, or ask another node`);
  return ctx.groups;
}

function requireGroupName(request: { name?: string }): string {
  if (!request.name) throw new StorageError(Code.INVALID_ARGUMENT, 'the request has no group snapshot name');
  return request.name;
}

export function groupApiHandlers(ctx: GroupApiContext): grpc.UntypedServiceImplementation {
  const onUnexpected = (err: unknown, method: string): void => ctx.log.error({ err, method }, 'api call failed unexpectedly');
  const h = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req) => fn(req), onUnexpected, method);
  return {
    CreateGroupSnapshot: h('CreateGroupSnapshot', async (req: { name?: string; volumes?: string[]; rule?: string }) => {
      const input = { name: requireGroupName(req), volumes: req.volumes ?? [] };
      if (!req.rule) return groupMessage(await requireGroups(ctx).create(input));
      if (!ctx.groupRules) throw new StorageError(Code.UNIMPLEMENTED, `this cairnd (${ctx.nodeName}) does not run snapshot rules on group snapshots`);
      return groupMessage(await ctx.groupRules.create({ ...input, rule: req.rule }));
    }),
    ListGroupSnapshots: h('ListGroupSnapshots', async () => ({ groupSnapshots: (await requireGroups(ctx).list()).map(groupMessage) })),
    GetGroupSnapshot: h('GetGroupSnapshot', async (req: { name?: string }) => groupMessage(await requireGroups(ctx).get(requireGroupName(req)))),
    DeleteGroupSnapshot: h('DeleteGroupSnapshot', async (req: { name?: string }) => {
      await requireGroups(ctx).delete(requireGroupName(req));
      return {};
    }),
  };
}
