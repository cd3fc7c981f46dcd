/**
 * A group snapshot under a snapshot rule (docs/snapshots.md, "Group snapshots with a rule"):
 * the rule runs once per member (its `exec` in the member's namespace, its `command` and
 * `fsfreeze` on the member's staging node), all together around one group cut:
 *
 *   pre actions of every member → pause all → cut and resume each → release (thaws, held
 *   sessions) and post actions of every member.
 *
 * Each member's run is the hook runner's (hook-runner.ts), so its guarantees hold per member;
 * the group cut starts only once every member's pre actions have finished, and no member's
 * release or post starts before every member is cut and resumed. A pre action that fails with
 * `onError: Fail` on any member fails the whole group before any pause: no member snapshot,
 * every member's release and post actions run. A member whose run gave up on the snapshot
 * (its deadline) fails the group too, after the fact: the group is deleted. The group
 * document keeps each member's outcomes.
 *
 * Calls for one name run one after another (a retried call finds the group and does not run
 * the rule again). A group the coordinator answers without cutting it for this call (one of
 * that name taken meanwhile, e.g. without the rule or by another cairnd) is returned as it is:
 * this call's members were never cut, and that group is not theirs to delete.
 */
import { Code, StorageError } from '../common/errors.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { RuleContext } from './action-transport.js';
import type { GroupCoordinator } from './group-coordinator.js';
import type { RuleRunResult } from './hook-runner.js';
import { getGroupDoc, updateGroupDoc, type GroupSnapshotDoc } from './group-doc.js';
import { ruleRecord, runnerFor, summary, type RuleSnapshotsOptions } from './rule-snapshots.js';
import type { SnapshotRule } from './snapshot-rule.js';

export interface GroupRulesOptions extends Omit<RuleSnapshotsOptions, 'snapshots'> {
  groups: GroupCoordinator;
}

export interface GroupRuleInput {
  name: string;
  volumes: string[];
  rule: string;
  /** Where exec actions select pods; the rule's namespace by default. */
  namespace?: string;
}

/** Settles once `count` members arrived, or fails at the first member that will not. */
class Rendezvous {
  private arrived = 0;
  private resolve!: () => void;
  private reject!: (err: Error) => void;
  readonly all: Promise<void>;

  constructor(private readonly count: number) {
    this.all = new Promise<void>((resolve, reject) => { this.resolve = resolve; this.reject = reject; });
    this.all.catch(() => undefined);
  }

  arrive(): void {
    if (++this.arrived === this.count) this.resolve();
  }

  fail(err: Error): void {
    this.reject(err);
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (err: Error) => void } {
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

const preDeadlineMs = (rule: SnapshotRule): number => rule.pre.reduce((sum, a) => sum + a.timeoutSeconds * 1000, 0) + 60_000;

export class GroupRuleSnapshots {
  private readonly locks = new KeyedLock();

  constructor(private readonly opts: GroupRulesOptions) {}

  /** Takes group snapshot `input.name` under rule `input.rule`: see the file comment. */
  create(input: GroupRuleInput): Promise<GroupSnapshotDoc> {
    return this.locks.run(input.name, () => this.take(input));
  }

  private async take(input: GroupRuleInput): Promise<GroupSnapshotDoc> {
    const { rule } = await this.opts.rules.get(input.rule);
    // The same name again: the coordinator answers it (the group, or why not) without running the rule.
    if (await getGroupDoc(this.opts.store, input.name)) return this.opts.groups.create({ name: input.name, volumes: input.volumes });
    const namespace = input.namespace ?? rule.namespace;
    const contexts = await Promise.all(input.volumes.map(async (v): Promise<RuleContext> => {
      const volume = await this.opts.volumes.get(v);
      return { volume: volume.name, volumeId: volume.id, snapshot: `${input.name}-${volume.name}`, ...(namespace ? { namespace } : {}), ...(volume.engineNode ? { engineNode: volume.engineNode } : {}) };
    }));
    const runner = contexts.map((ctx) => runnerFor(this.opts, rule, ctx))[0]!;
    const pre = new Rendezvous(contexts.length);
    const cut = deferred();
    const runs = contexts.map(async (ctx) => {
      let arrived = false;
      const result = await runner.runWithRule(rule, ctx, async () => {
        arrived = true;
        pre.arrive();
        await cut.promise;
      });
      if (!arrived) pre.fail(result.error ?? new StorageError(Code.ABORTED, `the rule did not reach the snapshot for volume "${ctx.volume}"`));
      return result;
    });
    let group: GroupSnapshotDoc | undefined;
    let groupError: unknown;
    let cutId: string | undefined;
    try {
      group = await this.opts.groups.create({
        name: input.name, volumes: input.volumes,
        hooks: { pre: () => pre.all, resumed: (g) => { cutId = g.id; cut.resolve(); }, preDeadlineMs: preDeadlineMs(rule) },
      });
    } catch (err) {
      groupError = err;
    }
    cut.reject(groupError instanceof Error ? groupError : new StorageError(Code.ABORTED, 'the group snapshot failed'));
    const results = await Promise.all(runs);
    // A group not cut for this call: the coordinator's answer for a name taken meanwhile.
    if (group) return group.id === cutId ? this.settle(group, contexts, results) : group;
    throw this.failure(input.name, rule.name, contexts, results, groupError);
  }

  /** Records each member's outcomes in the group document; a member whose run gave up on the cut fails the group. */
  private async settle(group: GroupSnapshotDoc, contexts: RuleContext[], results: RuleRunResult<void>[]): Promise<GroupSnapshotDoc> {
    const byVolume = new Map(contexts.map((c, i) => [c.volume, ruleRecord(results[i]!)]));
    const lost = results.findIndex((r) => r.snapshot.state !== 'taken');
    if (lost >= 0) {
      await this.opts.groups.delete(group.name);
      const r = results[lost]!;
      throw new StorageError(Code.ABORTED, `group snapshot "${group.name}" deleted: rule "${r.rule}" gave up on the cut for volume "${contexts[lost]!.volume}" (${r.error?.message ?? 'no snapshot'}); its application was released before the cut`,
        { details: { groupSnapshot: group.name, rule: r.rule } });
    }
    const recorded = await updateGroupDoc(this.opts.store, group.name, (d) => (d.id !== group.id ? undefined
      : { ...d, members: d.members.map((m) => ({ ...m, ...(byVolume.has(m.volumeName) ? { rule: byVolume.get(m.volumeName)! } : {}) })) })).catch((err: unknown) => {
      this.opts.log.error({ groupSnapshot: group.name, err: (err as Error).message }, 'group snapshot rule outcomes not recorded in its document');
      return undefined;
    });
    return recorded ?? group;
  }

  private failure(name: string, rule: string, contexts: RuleContext[], results: RuleRunResult<void>[], groupError: unknown): StorageError {
    const at = results.findIndex((r) => r.error && typeof r.error.details.action === 'string' && r.snapshot.state !== 'taken');
    if (at >= 0) {
      const r = results[at]!;
      return new StorageError(Code.FAILED_PRECONDITION,
        `group snapshot "${name}" not taken: rule "${rule}" stopped at ${String(r.error!.details.action)} for volume "${contexts[at]!.volume}": ${r.error!.message} (every member: ${results.map(summary).join('; ')})`,
        { cause: r.error, details: { groupSnapshot: name, rule, volume: contexts[at]!.volume } });
    }
    const err = groupError instanceof StorageError ? groupError : new StorageError(Code.INTERNAL, (groupError as Error).message, { cause: groupError });
    return new StorageError(err.code, `${err.message} (rule "${rule}": ${results.map(summary).join('; ')})`, { cause: err, details: err.details });
  }
}
