/**
 * What a rule run records: one outcome per action and target (an exec action with
 * `runIn: all` has one per pod), in the order the steps ran, and the snapshot step. These
 * are what a snapshot's status shows and what `cairnctl` prints.
 */
import { Code, StorageError } from '../common/errors.js';
import type { ActionKind, OnError, RulePhase } from './snapshot-rule.js';

/** How much of each output stream an outcome keeps: the last bytes. */
export const OUTPUT_TAIL_BYTES = 4096;

export type ActionStatus = 'succeeded' | 'failed' | 'skipped';

/**
 * - run: an action that ran to its end;
 * - hold: a background action, from its start until it was ended after the snapshot;
 * - freeze / thaw: the two halves of fsfreeze (a thaw is phase post, also when implied).
 */
export type ActionStep = 'run' | 'hold' | 'freeze' | 'thaw';

export interface OutcomeError {
  /** The canonical code's name, e.g. "DEADLINE_EXCEEDED". */
  code: string;
  message: string;
}

export interface ActionOutcome {
  /** The action's name, or its place ("pre[1]"). */
  action: string;
  /** Its index in its list (an implied thaw carries its pre fsfreeze's). */
  index: number;
  phase: RulePhase;
  kind: ActionKind;
  step: ActionStep;
  /** The pod, this node, or the frozen mount point; empty when none was found. */
  target: string;
  status: ActionStatus;
  onError: OnError;
  /** null when it did not exit by itself (killed, never started) or is not a process. */
  exitCode: number | null;
  signal?: string;
  /** RFC 3339. */
  startedAt: string;
  durationMs: number;
  /** Background actions: how long it took to be ready. */
  readyMs?: number;
  stdoutTail: string;
  stderrTail: string;
  error?: OutcomeError;
}

export function outcomeError(err: unknown): OutcomeError {
  if (err instanceof StorageError) return { code: Code[err.code], message: err.message };
  return { code: Code[Code.INTERNAL], message: err instanceof Error ? err.message : String(err) };
}

/** The last `limit` bytes of a stream. */
export class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;

  constructor(private readonly limit = OUTPUT_TAIL_BYTES) {}

  push(data: Buffer): void {
    this.chunks.push(data);
    this.bytes += data.length;
    while (this.chunks.length > 1 && this.bytes - this.chunks[0]!.length >= this.limit) this.bytes -= this.chunks.shift()!.length;
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}
