/**
 * The entry point for taking a snapshot under a named rule (`cairnctl snapshot create
 * --rule`, a VolumeSnapshotClass's `cairn.dev/snapshot-rule`, the group coordinator): the
 * rule is read from the cluster store, then run around the caller's snapshot callback.
 */
import type { HookRunner, RuleRunResult, RunRuleOptions } from './hook-runner.js';
import type { RuleContext } from './action-transport.js';
import type { SnapshotRuleStore } from './rule-store.js';

export interface RuleSnapshotDeps {
  rules: SnapshotRuleStore;
  /** This node's runner (its command and fsfreeze kinds act on volumes staged here). */
  runner: HookRunner;
}

/**
 * Runs rule `ruleName` around `takeSnapshot` for the volume in `ctx`. NOT_FOUND (nothing run)
 * when there is no such rule; otherwise never rejects: the result says whether the snapshot
 * was taken and how each action went (see HookRunner.runWithRule).
 */
export async function snapshotWithRule<T>(deps: RuleSnapshotDeps, ruleName: string, ctx: RuleContext, takeSnapshot: (signal: AbortSignal) => Promise<T>,
  options: RunRuleOptions<T> = {}): Promise<RuleRunResult<T>> {
  const { rule } = await deps.rules.get(ruleName, options.signal ? { signal: options.signal } : {});
  return deps.runner.runWithRule(rule, ctx, takeSnapshot, options);
}
