/**
 * The two halves of an `fsfreeze` action: the freeze (pre) and its thaw (post, named in the
 * rule or implied). A freeze that succeeded is thawed exactly once, whoever asks first (the
 * post phase, the safety net at the end of a run, or the daemon's shutdown), and a freeze
 * that completes after its timeout gave up on it is thawed at once.
 */
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { FrozenFs, FsFreezer, RuleContext } from './action-transport.js';
import { runStopped } from './action-session.js';
import { outcomeError, type ActionOutcome } from './rule-outcome.js';
import type { RuleAction, RulePhase } from './snapshot-rule.js';

/** A filesystem this run froze; `thaw` is idempotent. */
export interface FreezeHold {
  readonly index: number;
  readonly action: RuleAction;
  readonly label: string;
  readonly frozen: FrozenFs;
  /** Thaws once (later calls get the first call's outcome), recording it as `phase[index]`. */
  thaw(phase: RulePhase, index: number, label: string): Promise<ActionOutcome>;
  thawed(): boolean;
}

function outcome(action: RuleAction, label: string, phase: RulePhase, index: number, step: 'freeze' | 'thaw', target: string): ActionOutcome {
  return {
    action: label, index, phase, kind: 'fsfreeze', step, target, status: 'failed', onError: action.onError, exitCode: null,
    startedAt: new Date().toISOString(), durationMs: 0, stdoutTail: '', stderrTail: '',
  };
}

function hold(frozen: FrozenFs, action: RuleAction, index: number, label: string, log: Logger): FreezeHold {
  let thawing: Promise<ActionOutcome> | undefined;
  return {
    index, action, label, frozen,
    thawed: () => thawing !== undefined,
    thaw: (phase, at, thawLabel) => (thawing ??= (async () => {
      const o = outcome(action, thawLabel, phase, at, 'thaw', frozen.target);
      const started = performance.now();
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StorageError(Code.DEADLINE_EXCEEDED,
          `${thawLabel}: the filesystem at ${frozen.target} did not thaw within ${action.timeoutSeconds} s (the thaw goes on; see cairnd's log)`)), action.timeoutSeconds * 1000);
      });
      const thawing = frozen.thaw();
      thawing.catch(() => undefined);
      try {
        await Promise.race([thawing, late]);
        o.status = 'succeeded';
        log.info({ target: frozen.target }, 'filesystem thawed');
      } catch (err) {
        o.error = outcomeError(err);
        log.error({ err, target: frozen.target }, 'filesystem thaw failed');
      }
      clearTimeout(timer);
      o.durationMs = Math.round(performance.now() - started);
      return o;
    })()),
  };
}

export interface FreezeParams {
  freezer: FsFreezer | undefined;
  action: RuleAction;
  label: string;
  index: number;
  ctx: RuleContext;
  /** The run gave up (deadline, cancellation): stop waiting for the freeze. */
  signal: AbortSignal;
  log: Logger;
}

/** Freezes the volume's filesystem within the action's timeout: the outcome, and the hold when it froze. */
export async function freezeStep(p: FreezeParams): Promise<{ outcome: ActionOutcome; hold?: FreezeHold }> {
  const o = outcome(p.action, p.label, 'pre', p.index, 'freeze', '');
  const started = performance.now();
  const finish = (err?: unknown): { outcome: ActionOutcome } => {
    o.durationMs = Math.round(performance.now() - started);
    if (err === undefined) o.status = 'succeeded';
    else o.error = outcomeError(err);
    return { outcome: o };
  };
  if (!p.freezer) {
    return finish(new StorageError(Code.FAILED_PRECONDITION, `${p.label}: fsfreeze runs on the node where the volume is staged, and this cairnd serves no volumes (controller role): run the rule on that node`));
  }
  let gaveUp = false;
  const freezing = p.freezer.freeze(p.ctx, p.signal);
  // A freeze that completes after we stopped waiting must not stay frozen.
  freezing.then((late) => {
    if (!gaveUp) return;
    p.log.warn({ target: late.target }, 'filesystem froze after its timeout; thawing it');
    late.thaw().catch((err: unknown) => p.log.error({ err, target: late.target }, 'filesystem thaw failed'));
  }, () => undefined);
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const giveUp = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      gaveUp = true;
      reject(new StorageError(Code.DEADLINE_EXCEEDED, `${p.label}: the filesystem of volume "${p.ctx.volume}" did not freeze within ${p.action.timeoutSeconds} s`));
    }, p.action.timeoutSeconds * 1000);
    onAbort = () => {
      gaveUp = true;
      reject(runStopped(p, `${p.label}: stopped waiting for the freeze`));
    };
    if (p.signal.aborted) onAbort();
    else p.signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    const frozen = await Promise.race([freezing, giveUp]);
    o.target = frozen.target;
    p.log.info({ target: frozen.target, volume: p.ctx.volume }, 'filesystem frozen');
    return { ...finish(), hold: hold(frozen, p.action, p.index, p.label, p.log) };
  } catch (err) {
    return finish(err);
  } finally {
    clearTimeout(timer);
    p.signal.removeEventListener('abort', onAbort!);
  }
}

/** The outcome of a post fsfreeze with nothing to thaw (the freeze failed or never ran). */
export function nothingToThaw(action: RuleAction, label: string, index: number): ActionOutcome {
  return { ...outcome(action, label, 'post', index, 'thaw', ''), status: 'skipped' };
}
