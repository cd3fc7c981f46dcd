/**
 * Running one action on one target through its transport, with its timeout: to its end
 * (`runToEnd`), or, for a background action, until it is ready and then held until the
 * runner ends it (`startHeld`). A session that times out, or whose run is cancelled, is
 * killed (its whole process group) and counts as failed.
 *
 * A background action is ready when it prints a line that is exactly `READY` on stdout
 * (surrounding blanks ignored), or, with `readySeconds`, once it has run that long without
 * exiting, whichever comes first. Ending it: SIGTERM (or closing its exec stream), SIGKILL
 * after BACKGROUND_STOP_GRACE_MS. Exiting on its own before it is ended loses what it held
 * (e.g. MySQL's read lock), so that is a failure.
 */
import { Code, StorageError } from '../common/errors.js';
import type { ActionSession, ActionTransport, OutputChunk, RuleContext, SessionEnd } from './action-transport.js';
import { OutputTail, outcomeError, type ActionOutcome } from './rule-outcome.js';
import type { RuleAction, RulePhase } from './snapshot-rule.js';

export const BACKGROUND_STOP_GRACE_MS = 5000;
/**
 * How long a killed session may take to report its end before the runner stops waiting for
 * it (a transport whose kill does not take, e.g. an exec stream that never closes): the
 * post phase must not wait for it forever.
 */
export const KILL_WAIT_MS = 5000;
export const READY_LINE = 'READY';

export interface SessionParams {
  transport: ActionTransport;
  action: RuleAction;
  /** Its label ("pre[0]" or its name). */
  label: string;
  phase: RulePhase;
  index: number;
  target: string;
  ctx: RuleContext;
  /** Fires when the run gives up (its deadline, a cancellation): the session is killed. */
  signal?: AbortSignal;
}

function baseOutcome(p: SessionParams, step: ActionOutcome['step']): ActionOutcome {
  return {
    action: p.label, index: p.index, phase: p.phase, kind: p.action.kind, step, target: p.target, status: 'failed', onError: p.action.onError,
    exitCode: null, startedAt: new Date().toISOString(), durationMs: 0, stdoutTail: '', stderrTail: '',
  };
}

/** What is being run, for messages: `pre[0] (psql -c CHECKPOINT) on node-1`. */
function what(p: SessionParams): string {
  return `${p.label} (${p.action.command.join(' ')}) on ${p.target}`;
}

function exitText(end: SessionEnd): string {
  return end.exitCode !== null ? `exit code ${end.exitCode}` : `signal ${end.signal ?? 'unknown'}`;
}

function lastLine(text: string): string {
  const lines = text.trim().split('\n');
  return lines[lines.length - 1]?.trim().slice(0, 200) ?? '';
}

/** `session`, whose end is reported at the latest KILL_WAIT_MS after a kill (or a stop's grace). */
function boundedSession(session: ActionSession, p: SessionParams): ActionSession {
  let abandon!: (end: SessionEnd) => void;
  const abandoned = new Promise<SessionEnd>((resolve) => { abandon = resolve; });
  const done = Promise.race([session.done, abandoned]);
  const abandonAfter = (ms: number): void => {
    const timer = setTimeout(() => abandon({
      exitCode: null, signal: 'SIGKILL', error: new StorageError(Code.UNAVAILABLE, `${what(p)} did not report its end ${ms} ms after it was killed: no longer waited for`),
    }), ms);
    void done.then(() => clearTimeout(timer));
  };
  return {
    done,
    kill: () => {
      session.kill();
      abandonAfter(KILL_WAIT_MS);
    },
    stop: async (graceMs) => {
      abandonAfter(graceMs + KILL_WAIT_MS);
      await Promise.race([session.stop(graceMs), done]);
    },
  };
}

/** Starts the session, feeding the tails (and `onStdout`); a transport that throws gives an ended session. */
function open(p: SessionParams, tails: { stdout: OutputTail; stderr: OutputTail }, onStdout?: (data: Buffer) => void): ActionSession {
  const onOutput = (c: OutputChunk): void => {
    tails[c.stream].push(c.data);
    if (c.stream === 'stdout') onStdout?.(c.data);
  };
  try {
    return boundedSession(p.transport.start(p.action, p.target, p.ctx, onOutput), p);
  } catch (err) {
    const error = err instanceof StorageError ? err : new StorageError(Code.INTERNAL, `${what(p)}: could not start: ${(err as Error).message}`, { cause: err });
    return { done: Promise.resolve({ exitCode: null, error }), stop: () => Promise.resolve(), kill: () => undefined };
  }
}

/** Kills `session` when the timeout passes or `signal` fires; says which happened. */
function guard(p: SessionParams, session: ActionSession, timeoutMs: number): { why: () => 'timeout' | 'cancelled' | undefined; dispose: () => void } {
  let why: 'timeout' | 'cancelled' | undefined;
  const timer = setTimeout(() => {
    why ??= 'timeout';
    session.kill();
  }, timeoutMs);
  const onAbort = (): void => {
    why ??= 'cancelled';
    session.kill();
  };
  if (p.signal?.aborted) onAbort();
  else p.signal?.addEventListener('abort', onAbort, { once: true });
  return { why: () => why, dispose: () => { clearTimeout(timer); p.signal?.removeEventListener('abort', onAbort); } };
}

function stoppedError(p: SessionParams, why: 'timeout' | 'cancelled', during: string): StorageError {
  return why === 'timeout'
    ? new StorageError(Code.DEADLINE_EXCEEDED, `${what(p)} did not ${during} within its timeout of ${p.action.timeoutSeconds} s: killed`)
    : runStopped(p, `${what(p)} was killed`);
}

/** The run gave up (its deadline, a cancellation, shutdown): the reason's code, and its message after `prefix`. */
export function runStopped(p: { signal?: AbortSignal }, prefix: string): StorageError {
  const reason: unknown = p.signal?.reason;
  return reason instanceof StorageError
    ? new StorageError(reason.code, `${prefix}: ${reason.message}`, { cause: reason })
    : new StorageError(Code.CANCELLED, `${prefix}: the rule's run was cancelled`);
}

function failedExit(p: SessionParams, end: SessionEnd, stderr: string): StorageError {
  if (end.error) return end.error;
  const tail = lastLine(stderr);
  return new StorageError(Code.FAILED_PRECONDITION, `${what(p)} failed with ${exitText(end)}${tail ? `: ${tail}` : ''}`,
    { details: { action: p.label, target: p.target, exitCode: end.exitCode } });
}

/** Runs the action on the target until it exits, is killed at its timeout, or the run is cancelled. */
export async function runToEnd(p: SessionParams): Promise<ActionOutcome> {
  const outcome = baseOutcome(p, 'run');
  const started = performance.now();
  const tails = { stdout: new OutputTail(), stderr: new OutputTail() };
  const session = open(p, tails);
  const g = guard(p, session, p.action.timeoutSeconds * 1000);
  const end = await session.done;
  g.dispose();
  const why = g.why();
  Object.assign(outcome, { exitCode: end.exitCode, ...(end.signal ? { signal: end.signal } : {}), durationMs: Math.round(performance.now() - started) });
  outcome.stdoutTail = tails.stdout.text();
  outcome.stderrTail = tails.stderr.text();
  if (why) outcome.error = outcomeError(stoppedError(p, why, 'finish'));
  else if (end.exitCode !== 0) outcome.error = outcomeError(failedExit(p, end, outcome.stderrTail));
  else outcome.status = 'succeeded';
  return outcome;
}

/** A background action that became ready: it runs until `end`. */
export interface HeldSession {
  readonly outcome: ActionOutcome;
  /** Whether it is still running (it has not exited on its own). */
  alive(): boolean;
  /** Settles when it exits, whether ended or on its own. */
  readonly exited: Promise<SessionEnd>;
  /**
   * Ends it (SIGTERM, then SIGKILL after the grace; nothing when it has exited already) and
   * completes its outcome; idempotent. `lost`: the runner saw it exit while it was to hold
   * (before or during the snapshot), which fails it.
   */
  end(lost: boolean, graceMs?: number): Promise<ActionOutcome>;
}

/**
 * Starts a background action and resolves once it is ready (a held session), or with its
 * failed outcome when it exits, times out or is cancelled before that (it is killed then).
 */
export async function startHeld(p: SessionParams): Promise<HeldSession | ActionOutcome> {
  const outcome = baseOutcome(p, 'hold');
  const started = performance.now();
  const tails = { stdout: new OutputTail(), stderr: new OutputTail() };
  let markReady!: () => void;
  const ready = new Promise<void>((resolve) => { markReady = resolve; });
  let partial = '';
  const session = open(p, tails, (data) => {
    partial += data.toString('utf8');
    const lines = partial.split('\n');
    partial = lines.pop()!.slice(-1024);
    if (lines.some((l) => l.trim() === READY_LINE)) markReady();
  });
  const readyTimer = p.action.readySeconds === undefined ? undefined : setTimeout(markReady, p.action.readySeconds * 1000);
  const g = guard(p, session, p.action.timeoutSeconds * 1000);
  let exited: SessionEnd | undefined;
  const done = session.done.then((end) => (exited = end));
  const first = await Promise.race([ready.then(() => 'ready' as const), done.then(() => 'exited' as const)]);
  clearTimeout(readyTimer);
  g.dispose();
  const finish = (): void => {
    Object.assign(outcome, { exitCode: exited?.exitCode ?? null, ...(exited?.signal ? { signal: exited.signal } : {}), durationMs: Math.round(performance.now() - started) });
    outcome.stdoutTail = tails.stdout.text();
    outcome.stderrTail = tails.stderr.text();
  };
  if (first === 'exited' || exited) {
    finish();
    const why = g.why();
    outcome.error = outcomeError(why ? stoppedError(p, why, 'become ready')
      : exited!.error ?? new StorageError(Code.FAILED_PRECONDITION, `${what(p)} exited (${exitText(exited!)}) before it was ready: a background action must keep running until the snapshot is taken${lastLine(outcome.stderrTail) ? `: ${lastLine(outcome.stderrTail)}` : ''}`));
    return outcome;
  }
  outcome.readyMs = Math.round(performance.now() - started);
  let ending: Promise<ActionOutcome> | undefined;
  return {
    outcome,
    alive: () => exited === undefined,
    exited: done,
    end: (lost, graceMs = BACKGROUND_STOP_GRACE_MS) => (ending ??= (async () => {
      if (exited === undefined) await session.stop(graceMs);
      await done;
      finish();
      if (lost) {
        outcome.error = outcomeError(new StorageError(Code.ABORTED,
          `${what(p)} exited (${exitText(exited!)}) while it was to hold its session until the snapshot was taken: what it held (e.g. a lock) was released early`));
      } else outcome.status = 'succeeded';
      return outcome;
    })()),
  };
}
