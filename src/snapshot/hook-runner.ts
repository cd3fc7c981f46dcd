/**
 * The hook runner: runs a SnapshotRule around a "take the snapshot" callback
 * (docs/snapshots.md, "Snapshot rules"). Its guarantees:
 * - the snapshot starts strictly after every pre action has finished (a background action:
 *   started and ready), and post actions start strictly after the snapshot has settled;
 * - pre actions run one after another in the rule's order (an exec action with `runIn: all`
 *   runs in its pods in parallel); a failed pre action with `onError: Fail` stops the pre
 *   phase and there is no snapshot; with `Continue` it is recorded and the run goes on;
 * - whatever failed (a pre action, the snapshot, the deadline, a cancellation), the release
 *   step and every post action run: background sessions are ended and frozen filesystems
 *   thawed (in reverse order of the pre actions; a thaw named in post runs at its place
 *   there instead), then the post actions in order, each within its own timeout, a failed one
 *   not stopping the others;
 * - `deadlineMs` bounds the pre phase and the snapshot: when it passes (or `signal` fires) the
 *   pre action running is killed, and a snapshot in progress is told through its signal and
 *   given SNAPSHOT_ABORT_GRACE_MS to stop, after which the post phase starts anyway (an
 *   application is never left frozen or locked because a snapshot call hangs).
 */
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { ActionTransport, FsFreezer, RuleContext } from './action-transport.js';
import { runToEnd, startHeld, type HeldSession, type SessionParams } from './action-session.js';
import { freezeStep, nothingToThaw, type FreezeHold } from './freeze-step.js';
import { outcomeError, type ActionOutcome } from './rule-outcome.js';
import { actionLabel, type RuleAction, type RulePhase, type SnapshotRule } from './snapshot-rule.js';
import { RunState, takeSnapshotStep, type SnapshotStep } from './run-state.js';

export { SNAPSHOT_ABORT_GRACE_MS, type SnapshotStep } from './run-state.js';

export interface HookRunnerOptions {
  log: Logger;
  /** `command` actions: processes on this node (node-actions.ts). Without it they fail FAILED_PRECONDITION. */
  command?: ActionTransport;
  /** `exec` actions: the Kubernetes pods/exec transport (exec-transport.ts). Without it they fail FAILED_PRECONDITION. */
  exec?: ActionTransport;
  /** `fsfreeze` actions (node-actions.ts). Without it they fail FAILED_PRECONDITION. */
  freezer?: FsFreezer;
}

export interface RunRuleOptions<T> {
  /** Cancels the pre phase and the snapshot (never the release or the post actions). */
  signal?: AbortSignal;
  /** How long the pre phase and the snapshot may take together; by default the pre actions' timeouts plus one minute. */
  deadlineMs?: number;
  /** A snapshot that completed after the run gave up on it (see SNAPSHOT_ABORT_GRACE_MS): the caller should delete it. */
  onLateSnapshot?: (value: T) => void;
  /** How long a snapshot told to stop may take to settle before the post phase starts anyway; SNAPSHOT_ABORT_GRACE_MS by default. */
  abortGraceMs?: number;
}

export interface RuleRunResult<T> {
  rule: string;
  /** The snapshot was taken and no action whose onError is Fail failed (before, during or after it). */
  ok: boolean;
  snapshot: SnapshotStep<T>;
  /** Every step's outcome, in the order they ended. */
  actions: ActionOutcome[];
  /** The first failure that made the run not ok. */
  error?: StorageError;
  durationMs: number;
}

const NO_EXEC = 'exec actions need the Kubernetes API: cairnd runs outside Kubernetes';
const NO_COMMAND = 'command actions run on the node daemon where the volume is staged, and this cairnd serves no volumes (controller role): run the rule on that node';

function failed(o: ActionOutcome): boolean {
  return o.status === 'failed';
}

function toError(o: ActionOutcome): StorageError {
  const code = o.error ? (Code[o.error.code as keyof typeof Code] ?? Code.INTERNAL) : Code.INTERNAL;
  return new StorageError(code, o.error?.message ?? `${o.action} failed`, { details: { action: o.action, phase: o.phase, target: o.target } });
}

function defaultDeadlineMs(rule: SnapshotRule): number {
  return rule.pre.reduce((sum, a) => sum + a.timeoutSeconds * 1000, 0) + 60_000;
}

export class HookRunner {
  private readonly active = new Set<RunState>();
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly opts: HookRunnerOptions) {
    this.log = opts.log.child({ component: 'snapshot-rules' });
  }

  /** Runs `rule` around `takeSnapshot` for `ctx`: see the file comment for what it guarantees. Never rejects. */
  async runWithRule<T>(rule: SnapshotRule, ctx: RuleContext, takeSnapshot: (signal: AbortSignal) => Promise<T>, options: RunRuleOptions<T> = {}): Promise<RuleRunResult<T>> {
    const log = this.log.child({ rule: rule.name, volume: ctx.volume, ...(ctx.snapshot ? { snapshot: ctx.snapshot } : {}) });
    if (this.closed) {
      const error = new StorageError(Code.UNAVAILABLE, `cairnd is shutting down: snapshot rule "${rule.name}" was not run; retry on a running cairnd`);
      return { rule: rule.name, ok: false, snapshot: { state: 'skipped', reason: error.message }, actions: [], error, durationMs: 0 };
    }
    const state = new RunState(options.deadlineMs ?? defaultDeadlineMs(rule), options.signal, rule.post.some((a) => a.kind === 'fsfreeze'));
    this.active.add(state);
    const started = performance.now();
    let snapshot: SnapshotStep<T> = { state: 'skipped', reason: 'the rule did not get to the snapshot' };
    try {
      try {
        await this.prePhase(rule, ctx, state, log);
        this.checkHolds(state, 'before');
        if (!state.error) snapshot = await takeSnapshotStep(takeSnapshot, state, log, options);
        else snapshot = { state: 'skipped', reason: state.error.message };
        if (snapshot.state === 'taken') this.checkHolds(state, 'during');
      } catch (err) {
        state.fail(err instanceof StorageError ? err : new StorageError(Code.INTERNAL, `snapshot rule "${rule.name}": ${(err as Error).message}`, { cause: err }));
      }
      await this.release(state);
      await this.postPhase(rule, ctx, state, log);
    } finally {
      await this.thawLeftovers(state);
      state.dispose();
      this.active.delete(state);
    }
    const result: RuleRunResult<T> = {
      rule: rule.name, ok: snapshot.state === 'taken' && !state.error, snapshot, actions: state.outcomes,
      ...(state.error ? { error: state.error } : {}), durationMs: Math.round(performance.now() - started),
    };
    log.info({ ok: result.ok, snapshotState: snapshot.state, durationMs: result.durationMs, failed: state.outcomes.filter(failed).length }, 'snapshot rule run finished');
    return result;
  }

  /**
   * For the daemon's shutdown: every run in progress stops its pre phase and snapshot wait,
   * and its frozen filesystems are thawed and background sessions ended now; then waits for
   * the runs to finish their post actions (each bounded by its timeout). Runs asked for
   * afterwards do nothing and fail UNAVAILABLE.
   */
  async shutdown(): Promise<void> {
    this.closed = true;
    const runs = [...this.active];
    for (const run of runs) run.cancel(new StorageError(Code.UNAVAILABLE, 'cairnd is shutting down'));
    await Promise.all(runs.map(async (run) => {
      await Promise.all(run.freezes.map((h) => h.thaw('post', h.index, h.label).then((o) => run.record(o))));
      await Promise.all(run.sessions.map((h) => h.held.end(false)));
      await run.finished;
    }));
  }

  private transport(action: RuleAction): ActionTransport {
    const t = action.kind === 'exec' ? this.opts.exec : this.opts.command;
    if (!t) throw new StorageError(Code.FAILED_PRECONDITION, action.kind === 'exec' ? NO_EXEC : NO_COMMAND);
    return t;
  }

  /** Where an action runs: every target for `runIn: all`, else the first. */
  private async targets(action: RuleAction, ctx: RuleContext, signal: AbortSignal): Promise<{ transport: ActionTransport; targets: string[] }> {
    const transport = this.transport(action);
    const all = await transport.targets(action, ctx, signal);
    return { transport, targets: action.runIn === 'all' ? all : all.slice(0, 1) };
  }

  private failedOutcome(action: RuleAction, label: string, phase: RulePhase, index: number, err: unknown): ActionOutcome {
    return {
      action: label, index, phase, kind: action.kind, step: action.background ? 'hold' : 'run', target: '', status: 'failed', onError: action.onError,
      exitCode: null, startedAt: new Date().toISOString(), durationMs: 0, stdoutTail: '', stderrTail: '', error: outcomeError(err),
    };
  }

  private async prePhase(rule: SnapshotRule, ctx: RuleContext, state: RunState, log: Logger): Promise<void> {
    for (const [index, action] of rule.pre.entries()) {
      const label = actionLabel(action, 'pre', index);
      if (state.error || state.signal.aborted) {
        state.record({ ...this.failedOutcome(action, label, 'pre', index, state.error ?? state.abortError()), status: 'skipped' });
        continue;
      }
      const outcomes = await this.preAction(action, label, index, ctx, state, log);
      for (const o of outcomes) state.record(o);
      const bad = outcomes.find(failed);
      if (bad) {
        log.warn({ action: label, target: bad.target, code: bad.error?.code, onError: action.onError }, 'snapshot rule action failed');
        if (action.onError === 'Fail') state.fail(toError(bad));
      }
    }
  }

  private async preAction(action: RuleAction, label: string, index: number, ctx: RuleContext, state: RunState, log: Logger): Promise<ActionOutcome[]> {
    if (action.kind === 'fsfreeze') {
      const r = await freezeStep({ freezer: this.opts.freezer, action, label, index, ctx, signal: state.signal, log });
      if (r.hold) state.freezes.push(r.hold);
      return [r.outcome];
    }
    let found: { transport: ActionTransport; targets: string[] };
    try {
      found = await state.bounded(this.targets(action, ctx, state.signal), action.timeoutSeconds * 1000, `${label}: finding where it runs`);
    } catch (err) {
      return [this.failedOutcome(action, label, 'pre', index, err)];
    }
    const params = (target: string): SessionParams => ({ transport: found.transport, action, label, phase: 'pre', index, target, ctx, signal: state.signal });
    if (!action.background) return Promise.all(found.targets.map((t) => runToEnd(params(t))));
    const started = await Promise.all(found.targets.map((t) => startHeld(params(t))));
    const outcomes: ActionOutcome[] = [];
    for (const s of started) {
      if ('end' in s) state.sessions.push({ held: s, action, lost: false });
      else outcomes.push(s);
    }
    // One target that did not become ready fails the action: the ones that did are ended in the release step.
    return outcomes;
  }

  /** A background session that exited on its own before (or during) the snapshot lost what it held. */
  private checkHolds(state: RunState, when: 'before' | 'during'): void {
    for (const s of state.sessions) {
      if (s.lost || s.held.alive()) continue;
      s.lost = true;
      if (s.action.onError === 'Fail') {
        state.fail(new StorageError(Code.ABORTED, `${s.held.outcome.action} on ${s.held.outcome.target} exited ${when} the snapshot: what it held (e.g. a lock) was released early`));
      }
    }
  }

  /** Ends background sessions and thaws (unless the rule thaws in post), newest first. */
  private async release(state: RunState): Promise<void> {
    type Undo = { at: number; run: () => Promise<ActionOutcome | undefined> };
    const undo: Undo[] = [
      ...state.sessions.map((s): Undo => ({ at: s.held.outcome.index, run: () => s.held.end(s.lost) })),
      ...(state.explicitThaw ? [] : state.freezes).map((h): Undo => ({ at: h.index, run: () => h.thaw('post', h.index, h.label) })),
    ].sort((a, b) => b.at - a.at);
    for (const u of undo) {
      const o = await u.run();
      if (!o) continue;
      state.record(o);
      if (failed(o) && o.onError === 'Fail') state.fail(toError(o));
    }
  }

  private async postPhase(rule: SnapshotRule, ctx: RuleContext, state: RunState, log: Logger): Promise<void> {
    for (const [index, action] of rule.post.entries()) {
      const label = actionLabel(action, 'post', index);
      let outcomes: ActionOutcome[];
      try {
        outcomes = await this.postAction(action, label, index, ctx, state);
      } catch (err) {
        outcomes = [this.failedOutcome(action, label, 'post', index, err)];
      }
      for (const o of outcomes) {
        state.record(o);
        if (!failed(o)) continue;
        log.warn({ action: label, target: o.target, code: o.error?.code, onError: action.onError }, 'snapshot rule action failed');
        if (action.onError === 'Fail') state.fail(toError(o));
      }
    }
  }

  private async postAction(action: RuleAction, label: string, index: number, ctx: RuleContext, state: RunState): Promise<ActionOutcome[]> {
    if (action.kind === 'fsfreeze') {
      const held = state.freezes[0];
      return [held ? await held.thaw('post', index, label) : nothingToThaw(action, label, index)];
    }
    const never = new AbortController().signal;
    const found = await state.bounded(this.targets(action, ctx, never), action.timeoutSeconds * 1000, `${label}: finding where it runs`, false);
    return Promise.all(found.targets.map((target) => runToEnd({ transport: found.transport, action, label, phase: 'post', index, target, ctx })));
  }

  /** The safety net: nothing this run froze stays frozen, whatever went wrong above. */
  private async thawLeftovers(state: RunState): Promise<void> {
    for (const h of state.freezes) {
      if (h.thawed()) continue;
      state.record(await h.thaw('post', h.index, h.label));
    }
  }
}

export type { FreezeHold, HeldSession };
