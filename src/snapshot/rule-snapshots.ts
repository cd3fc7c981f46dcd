/**
 * A snapshot taken under a named snapshot rule (application-consistent): what
 * `cairnctl snapshot create --rule` and a VolumeSnapshotClass's `cairn.dev/snapshot-rule`
 * call. The rule runs around the cluster's barrier snapshot (hook-runner.ts), and its
 * outcome is written into the snapshot's document (cluster/snapshot-rule-record.ts).
 *
 * - An unknown rule or volume is NOT_FOUND before anything runs.
 * - A rule with `command` or `fsfreeze` actions runs from any cairnd (the controller role
 *   included): those actions act on the node where the volume is staged, here or through
 *   that node's engine service (remote-actions.ts). A volume staged nowhere is
 *   FAILED_PRECONDITION before anything runs. `exec` actions need Kubernetes.
 * - The same name again returns the existing snapshot without running the rule (idempotent
 *   by name, as without a rule).
 * - A pre action that fails with `onError: Fail`: no snapshot, FAILED_PRECONDITION naming
 *   the action and its error (the release step and the post actions have run).
 * - A post action that fails with `Fail`: the snapshot is kept, its record says `ok: false`.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { recordSnapshotRule } from '../cluster/snapshot-doc.js';
import { shortTail } from '../cluster/snapshot-rule-record.js';
import type { SnapshotRuleActionRecord, SnapshotRuleRecord, SnapshotService, SnapshotView } from '../cluster/snapshot-types.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import type { StagedVolumeRecord } from '../store/staged-volume-record.js';
import type { RuleContext } from './action-transport.js';
import type { HookRunner, RuleRunResult } from './hook-runner.js';
import { requireStaged } from './node-actions.js';
import type { ActionOutcome } from './rule-outcome.js';
import type { SnapshotRuleStore } from './rule-store.js';
import type { SnapshotRule } from './snapshot-rule.js';

export interface RuleSnapshotsOptions {
  /** This cairnd's name, named in errors. */
  nodeName: string;
  store: ClusterStore;
  snapshots: SnapshotService;
  rules: SnapshotRuleStore;
  volumes: Pick<VolumeApi, 'get'>;
  /** This node's hook runner; a cairnd without one (the controller role) takes no snapshot under a rule. */
  runner?: HookRunner;
  /** The volume's staging on this node; absent where no volume is staged (the controller role). */
  staged?: (volume: string) => StagedVolumeRecord | undefined;
  log: Logger;
}

export interface RuleSnapshotInput {
  name: string;
  /** The source volume, by name or id. */
  volume: string;
  rule: string;
  /** The Kubernetes namespace of the volume's claim (exec actions); the rule's own namespace by default. */
  namespace?: string;
  signal?: AbortSignal;
}

/** What a snapshot document keeps of one outcome. */
export function actionRecord(o: ActionOutcome): SnapshotRuleActionRecord {
  const output = o.stderrTail || o.stdoutTail;
  return {
    action: o.action, phase: o.phase, kind: o.kind, step: o.step, target: o.target, status: o.status, exitCode: o.exitCode, durationMs: o.durationMs,
    ...(o.error ? { error: { code: o.error.code, message: o.error.message } } : {}),
    ...(output ? { outputTail: shortTail(output) } : {}),
  };
}

export function ruleRecord(result: RuleRunResult<unknown>): SnapshotRuleRecord {
  return { name: result.rule, ok: result.ok, durationMs: result.durationMs, actions: result.actions.map(actionRecord) };
}

const NODE_KINDS = new Set(['command', 'fsfreeze']);

/** The runner, once it is sure every action of `rule` can run for `ctx`; FAILED_PRECONDITION (nothing run) otherwise. */
export function runnerFor(opts: Pick<RuleSnapshotsOptions, 'nodeName' | 'runner' | 'staged'>, rule: SnapshotRule, ctx: RuleContext): HookRunner {
  const nodeKinds = [...new Set([...rule.pre, ...rule.post].map((a) => a.kind).filter((k) => NODE_KINDS.has(k)))];
  if (!opts.runner) {
    throw new StorageError(Code.FAILED_PRECONDITION, `snapshot rule "${rule.name}" cannot run on ${opts.nodeName}: this cairnd runs no snapshot rules`,
      { details: { rule: rule.name, volume: ctx.volume, node: opts.nodeName } });
  }
  if (nodeKinds.length === 0) return opts.runner;
  const kinds = `snapshot rule "${rule.name}": its ${nodeKinds.join(' and ')}`;
  const stagedHere = opts.staged?.(ctx.volume)?.state === 'staged';
  // Staged here, or on the engine's node (reached through its engine service): else nowhere to act.
  if (!stagedHere && (!ctx.engineNode || ctx.engineNode === opts.nodeName)) {
    if (opts.staged) requireStaged({ nodeName: opts.nodeName, staged: opts.staged }, ctx, kinds);
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${ctx.volume}" is not staged on any node: ${kinds} actions act on the node where it is staged for its pod; stage it first`,
      { details: { rule: rule.name, volume: ctx.volume, node: opts.nodeName } });
  }
  return opts.runner;
}

/** The outcome for an error message: what ran after the snapshot step. */
export function summary(result: RuleRunResult<unknown>): string {
  const after = result.actions.filter((a) => a.phase === 'post');
  if (after.length === 0) return 'no post action or thaw was due';
  const failed = after.filter((a) => a.status === 'failed').length;
  return `post actions and thaws ran: ${after.length - failed} succeeded, ${failed} failed`;
}

export class RuleSnapshots {
  private readonly log: Logger;

  constructor(private readonly opts: RuleSnapshotsOptions) {
    this.log = opts.log.child({ component: 'snapshot-rules' });
  }

  /** Takes snapshot `input.name` of `input.volume` under rule `input.rule`: see the file comment. */
  async create(input: RuleSnapshotInput): Promise<SnapshotView> {
    const signalOption = input.signal ? { signal: input.signal } : {};
    const { rule } = await this.opts.rules.get(input.rule, signalOption);
    const existing = await this.opts.snapshots.get(input.name).catch((err: unknown) => {
      if (isStorageError(err, Code.NOT_FOUND)) return undefined;
      throw err;
    });
    // The same name again: the snapshot service returns it, or says why not (another volume, being deleted).
    if (existing) return this.opts.snapshots.create({ name: input.name, volume: input.volume }, signalOption);
    const volume = await this.opts.volumes.get(input.volume, input.signal);
    const namespace = input.namespace ?? rule.namespace;
    const ctx: RuleContext = {
      volume: volume.name, volumeId: volume.id, snapshot: input.name, ...(namespace ? { namespace } : {}), ...(volume.engineNode ? { engineNode: volume.engineNode } : {}),
    };
    const runner = runnerFor(this.opts, rule, ctx);
    const result = await runner.runWithRule(rule, ctx, (signal) => this.opts.snapshots.create({ name: input.name, volume: volume.id }, { signal }), {
      ...signalOption,
      onLateSnapshot: (late) => void this.opts.snapshots.delete(late.name).catch((err: unknown) => {
        this.log.warn({ snapshot: late.name, err: (err as Error).message }, 'snapshot taken after its rule gave up on it not deleted; delete it by hand');
      }),
    });
    return this.settle(input.name, result);
  }

  /** The snapshot with its rule record, or the error that says why there is none. */
  private async settle(name: string, result: RuleRunResult<SnapshotView>): Promise<SnapshotView> {
    const step = result.snapshot;
    if (step.state === 'taken') {
      const record = ruleRecord(result);
      // The snapshot exists whatever happens to its record: a record that cannot be written is logged, not an error.
      const stored = await recordSnapshotRule(this.opts.store, name, step.value.id, record).catch((err: unknown) => {
        this.log.error({ snapshot: name, rule: result.rule, ok: result.ok, err: (err as Error).message }, 'snapshot rule outcome not recorded in the snapshot document');
        return undefined;
      });
      if (!result.ok) {
        this.log.warn({ snapshot: name, rule: result.rule, code: result.error ? Code[result.error.code] : undefined, err: result.error?.message },
          'snapshot taken but its rule failed after it');
      }
      return { ...step.value, ...(stored?.doc.id === step.value.id ? { rule: stored.doc.rule } : { rule: record }) };
    }
    if (step.state === 'failed') {
      throw new StorageError(step.error.code, `snapshot "${name}" under rule "${result.rule}" failed: ${step.error.message} (${summary(result)})`,
        { cause: step.error, details: { snapshot: name, rule: result.rule } });
    }
    const error = result.error ?? new StorageError(Code.INTERNAL, step.reason);
    const action = typeof error.details.action === 'string' ? error.details.action : undefined;
    if (action !== undefined) {
      throw new StorageError(Code.FAILED_PRECONDITION,
        `snapshot "${name}" not taken: rule "${result.rule}" stopped at ${action}${error.code === Code.FAILED_PRECONDITION ? '' : ` (${Code[error.code]})`}: ${error.message} (${summary(result)})`,
        { cause: error, details: { snapshot: name, rule: result.rule, action } });
    }
    throw new StorageError(error.code, `snapshot "${name}" not taken under rule "${result.rule}": ${error.message} (${summary(result)})`,
      { cause: error, details: { snapshot: name, rule: result.rule } });
  }
}
