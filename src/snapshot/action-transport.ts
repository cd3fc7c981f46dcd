/**
 * What the hook runner (hook-runner.ts) needs from each kind of action. `command` (a process
 * on this node, node-actions.ts) and `exec` (a process in a pod's container through the
 * Kubernetes API, exec-transport.ts) are transports: they find where an action runs and start
 * a session there. `fsfreeze` is built in and goes through a `FsFreezer`.
 */
import type { StorageError } from '../common/errors.js';
import type { RuleAction } from './snapshot-rule.js';

/** What a rule runs for: the volume whose snapshot it surrounds. */
export interface RuleContext {
  /** The volume's name. */
  volume: string;
  volumeId?: string;
  /** The Kubernetes namespace of the volume's claim: where exec actions select pods. */
  namespace?: string;
  /** The snapshot being taken, for logs and the commands' environment. */
  snapshot?: string;
  /** The node whose engine serves the volume, when known: named in "not staged here" errors. */
  engineNode?: string;
}

export interface OutputChunk {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

export interface SessionEnd {
  /** null when it was ended by a signal or never started. */
  exitCode: number | null;
  /** The signal that ended it (e.g. "SIGKILL"), when one did. */
  signal?: string;
  /** Why it could not run at all (a program that is not installed, an exec the API refused). */
  error?: StorageError;
}

/** One running command (a process on this node, or an exec session in a container). */
export interface ActionSession {
  /** Settles once, when the command has ended (never rejects). */
  readonly done: Promise<SessionEnd>;
  /** Ends it politely (SIGTERM, or closing the exec stream), forcibly after `graceMs`; resolves when it has ended. */
  stop(graceMs: number): Promise<void>;
  /** Kills it now (SIGKILL to its process group, or aborting the exec stream). */
  kill(): void;
}

export interface ActionTransport {
  /**
   * Where `action` may run for `ctx` (pod names, or this node's name), in a stable order.
   * FAILED_PRECONDITION when it cannot run anywhere (no matching pod, the volume not staged here).
   */
  targets(action: RuleAction, ctx: RuleContext, signal: AbortSignal): Promise<string[]>;
  /** Starts `action` on `target`; output arrives through `onOutput` as it comes. */
  start(action: RuleAction, target: string, ctx: RuleContext, onOutput: (chunk: OutputChunk) => void): ActionSession;
}

/** A filesystem frozen by a FsFreezer: thaw it exactly once. */
export interface FrozenFs {
  /** What was frozen (the mount point). */
  target: string;
  thaw(): Promise<void>;
}

export interface FsFreezer {
  /**
   * Freezes the filesystem of `ctx.volume`. FAILED_PRECONDITION when the volume has no
   * mounted filesystem on this node. The freeze may outlive a timeout of the caller: the
   * caller thaws what a late freeze returns.
   */
  freeze(ctx: RuleContext, signal: AbortSignal): Promise<FrozenFs>;
}
