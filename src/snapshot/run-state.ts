/**
 * The state of one rule run (hook-runner.ts): its deadline and cancellation (one signal for
 * the pre phase and the snapshot), the outcomes so far, the first failure, and what it holds
 * (frozen filesystems, background sessions) until the release step. And the snapshot step.
 */
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { HeldSession } from './action-session.js';
import type { FreezeHold } from './freeze-step.js';
import type { ActionOutcome } from './rule-outcome.js';
import type { RuleAction } from './snapshot-rule.js';

/** How long a snapshot call that was told to stop (deadline, cancellation) may take to settle before the post phase starts anyway. */
export const SNAPSHOT_ABORT_GRACE_MS = 5000;

export type SnapshotStep<T> =
  | { state: 'taken'; value: T; durationMs: number }
  | { state: 'failed'; error: StorageError; durationMs: number }
  | { state: 'skipped'; reason: string };

export interface SessionHold {
  held: HeldSession;
  action: RuleAction;
  /** It exited on its own while it was to hold (before or during the snapshot). */
  lost: boolean;
}

export class RunState {
  readonly outcomes: ActionOutcome[] = [];
  readonly freezes: FreezeHold[] = [];
  readonly sessions: SessionHold[] = [];
  /** The first failure that makes the run not ok. */
  error: StorageError | undefined;
  /** Resolves when the run has finished (after its post actions). */
  readonly finished: Promise<void>;
  private readonly recorded = new Set<ActionOutcome>();
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private reason: StorageError | undefined;
  private markFinished!: () => void;
  private readonly onCallerAbort = (): void => this.cancel(new StorageError(Code.CANCELLED, 'the snapshot rule run was cancelled'));

  constructor(private readonly deadlineMs: number, private readonly callerSignal: AbortSignal | undefined, readonly explicitThaw: boolean) {
    this.finished = new Promise((resolve) => { this.markFinished = resolve; });
    this.timer = setTimeout(() => this.cancel(new StorageError(Code.DEADLINE_EXCEEDED,
      `the rule's pre actions and snapshot did not finish within its deadline of ${deadlineMs} ms`)), deadlineMs);
    if (callerSignal?.aborted) this.onCallerAbort();
    else callerSignal?.addEventListener('abort', this.onCallerAbort, { once: true });
  }

  /** Fires at the deadline or on cancellation: the pre phase and the snapshot stop. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  cancel(reason: StorageError): void {
    if (this.controller.signal.aborted) return;
    this.reason = reason;
    this.controller.abort(reason);
  }

  /** Why `signal` fired. */
  abortError(): StorageError {
    return this.reason ?? new StorageError(Code.CANCELLED, 'the snapshot rule run was cancelled');
  }

  record(o: ActionOutcome): void {
    if (this.recorded.has(o)) return;
    this.recorded.add(o);
    this.outcomes.push(o);
  }

  fail(err: StorageError): void {
    this.error ??= err;
  }

  /**
   * Settles like `promise`, or rejects with DEADLINE_EXCEEDED after `ms`, or (with
   * `cancellable`) as soon as the run's signal fires.
   */
  async bounded<T>(promise: Promise<T>, ms: number, what: string, cancellable = true): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    promise.catch(() => undefined);
    const stop = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new StorageError(Code.DEADLINE_EXCEEDED, `${what}: no answer within ${ms} ms`)), ms);
      if (!cancellable) return;
      onAbort = () => reject(this.abortError());
      if (this.signal.aborted) onAbort();
      else this.signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([promise, stop]);
    } finally {
      clearTimeout(timer);
      if (onAbort) this.signal.removeEventListener('abort', onAbort);
    }
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.callerSignal?.removeEventListener('abort', this.onCallerAbort);
    this.markFinished();
  }
}

/**
 * Calls `take` (with the run's signal) unless the run has already given up, and waits for it;
 * once the signal fires, waits at most `abortGraceMs` more. A snapshot that
 * completes after that goes to `onLateSnapshot`.
 */
export async function takeSnapshotStep<T>(take: (signal: AbortSignal) => Promise<T>, state: RunState, log: Logger,
  { onLateSnapshot, abortGraceMs = SNAPSHOT_ABORT_GRACE_MS }: { onLateSnapshot?: (value: T) => void; abortGraceMs?: number }): Promise<SnapshotStep<T>> {
  if (state.signal.aborted) {
    state.fail(state.abortError());
    return { state: 'skipped', reason: state.abortError().message };
  }
  const started = performance.now();
  const settled = (async () => take(state.signal))().then((value) => ({ ok: true as const, value }), (err: unknown) => ({ ok: false as const, err }));
  let graceTimer: NodeJS.Timeout | undefined;
  const onAbort = (): void => { graceTimer = setTimeout(() => resolveGaveUp('gave-up'), abortGraceMs); };
  let resolveGaveUp!: (v: 'gave-up') => void;
  const gaveUp = new Promise<'gave-up'>((resolve) => { resolveGaveUp = resolve; });
  state.signal.addEventListener('abort', onAbort, { once: true });
  const r = await Promise.race([settled, gaveUp]);
  state.signal.removeEventListener('abort', onAbort);
  clearTimeout(graceTimer);
  const durationMs = Math.round(performance.now() - started);
  if (r === 'gave-up') {
    void settled.then((late) => {
      if (!late.ok) return;
      log.warn({ durationMs: Math.round(performance.now() - started) }, 'snapshot completed after its rule run gave up on it');
      onLateSnapshot?.(late.value);
    });
    const error = new StorageError(state.abortError().code, `the snapshot did not finish in time: ${state.abortError().message}`);
    state.fail(error);
    return { state: 'failed', error, durationMs };
  }
  if (r.ok) return { state: 'taken', value: r.value, durationMs };
  const error = r.err instanceof StorageError ? r.err : new StorageError(Code.INTERNAL, `the snapshot failed: ${(r.err as Error).message}`, { cause: r.err });
  state.fail(error);
  return { state: 'failed', error, durationMs };
}
