/**
 * A rule's node-scoped actions (`command`, `fsfreeze`) from any cairnd: they act on the node
 * whose engine serves the volume (its staging node). When that is this cairnd, they run here
 * (node-actions.ts, no network); otherwise through that node's engine service
 * (node-action-service.ts), each on a lease this side renews every third of its length while
 * it holds it. A coordinator that dies stops renewing, and the node kills the command or
 * thaws the filesystem when the lease ends.
 */
import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { unaryCall } from '../rpc/unary-call.js';
import { fromServiceError } from '../rpc/status.js';
import type { ActionSession, ActionTransport, FrozenFs, FsFreezer, OutputChunk, RuleContext, SessionEnd } from './action-transport.js';
import type { RuleAction } from './snapshot-rule.js';

/** How long a node holds a remote command or freeze without hearing from its coordinator. */
export const ACTION_LEASE_MS = 10_000;
const CALL_DEADLINE_MS = 10_000;

interface EndMessage { exited: boolean; exitCode: number; signal: string; errorCode: string; errorMessage: string }
interface EventMessage { output?: { stream: string; data: Buffer }; end?: EndMessage }

function wireTarget(ctx: RuleContext): object {
  return { volume: ctx.volume, volumeId: ctx.volumeId ?? '', snapshot: ctx.snapshot ?? '' };
}

function endFromWire(m: EndMessage): SessionEnd {
  const error = m.errorCode ? new StorageError(Code[m.errorCode as keyof typeof Code] ?? Code.INTERNAL, m.errorMessage) : undefined;
  return { exitCode: m.exited ? m.exitCode : null, ...(m.signal ? { signal: m.signal } : {}), ...(error ? { error } : {}) };
}

/** One node's node-scoped actions over its engine service. */
export class RemoteNodeActions {
  constructor(readonly nodeName: string, private readonly client: grpc.Client, private readonly log: Logger, private readonly leaseMs = ACTION_LEASE_MS) {}

  /** Keeps lease `leaseId` alive until the returned function is called. */
  private renewing(leaseId: string): () => void {
    const timer = setInterval(() => {
      unaryCall(this.client, 'RenewLease', { leaseId, leaseMs: this.leaseMs }, Math.max(1000, Math.floor(this.leaseMs / 3))).catch((err: unknown) => {
        this.log.warn({ engineNode: this.nodeName, lease: leaseId, err: (err as Error).message }, 'node action lease not renewed');
      });
    }, Math.max(100, Math.floor(this.leaseMs / 3)));
    timer.unref();
    return () => clearInterval(timer);
  }

  start(action: RuleAction, ctx: RuleContext, onOutput: (chunk: OutputChunk) => void): ActionSession {
    const leaseId = randomUUID();
    const stopRenewing = this.renewing(leaseId);
    const run = (this.client as unknown as Record<string, (req: object) => grpc.ClientReadableStream<EventMessage>>).RunCommand!;
    const call = run.call(this.client, { target: wireTarget(ctx), command: action.command, leaseId, leaseMs: this.leaseMs });
    let killed = false;
    const done = new Promise<SessionEnd>((resolve) => {
      let end: SessionEnd | undefined;
      call.on('data', (m: EventMessage) => {
        if (m.output) onOutput({ stream: m.output.stream === 'stderr' ? 'stderr' : 'stdout', data: m.output.data });
        if (m.end) end = endFromWire(m.end);
      });
      call.on('error', (err: unknown) => {
        if (end) return;
        end = killed ? { exitCode: null, signal: 'SIGKILL' }
          : { exitCode: null, error: new StorageError(fromServiceError(err).code, `${action.command[0]} on node ${this.nodeName}: ${fromServiceError(err).message}`, { cause: err }) };
      });
      call.on('close', () => resolve(end ?? { exitCode: null, error: new StorageError(Code.UNAVAILABLE, `lost node ${this.nodeName} before the command ended: it kills the command at its lease's end`) }));
    }).finally(stopRenewing);
    return {
      done,
      kill: () => {
        killed = true;
        call.cancel();
      },
      stop: async (graceMs) => {
        await unaryCall(this.client, 'StopCommand', { leaseId, graceMs }, graceMs + CALL_DEADLINE_MS).catch((err: unknown) => {
          this.log.warn({ engineNode: this.nodeName, err: (err as Error).message }, 'remote command not stopped; cancelling it');
          killed = true;
          call.cancel();
        });
        await done;
      },
    };
  }

  async freeze(ctx: RuleContext, timeoutMs: number): Promise<FrozenFs> {
    const leaseId = randomUUID();
    const res = await unaryCall<{ mountPoint: string }>(this.client, 'FreezeFilesystem', { target: wireTarget(ctx), leaseId, leaseMs: this.leaseMs }, timeoutMs);
    const stopRenewing = this.renewing(leaseId);
    return {
      target: `${this.nodeName}:${res.mountPoint}`,
      thaw: async () => {
        stopRenewing();
        const { leaseExpired } = await unaryCall<{ leaseExpired: boolean }>(this.client, 'ThawFilesystem', { leaseId }, CALL_DEADLINE_MS);
        if (leaseExpired) {
          throw new StorageError(Code.ABORTED, `the freeze's lease on node ${this.nodeName} ended before the thaw: the node thawed ${res.mountPoint} by itself, possibly before the snapshot was cut`);
        }
      },
    };
  }
}

export interface RoutedActionsOptions {
  /** This cairnd's node name. */
  nodeName: string;
  /** The kinds run here, on a node daemon; none on a controller. */
  local?: { command: ActionTransport; freezer: FsFreezer; isStaged: (volume: string) => boolean };
  /** Another node's actions, over its engine service. */
  remote: (nodeName: string) => Promise<RemoteNodeActions>;
}

/** `command` and `fsfreeze` for the hook runner, wherever the volume is staged. */
export class RoutedActions implements ActionTransport, FsFreezer {
  constructor(private readonly opts: RoutedActionsOptions) {}

  /** The node the actions for `ctx` run on; undefined for this one. */
  private where(ctx: RuleContext): string | undefined {
    const local = this.opts.local;
    if (local?.isStaged(ctx.volume)) return undefined;
    if (ctx.engineNode && ctx.engineNode !== this.opts.nodeName) return ctx.engineNode;
    if (local) return undefined; // the local kinds say it is not staged here
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${ctx.volume}" is not staged on any node: command and fsfreeze actions act on the node where it is staged for its pod; stage it first`, { details: { volume: ctx.volume } });
  }

  async targets(action: RuleAction, ctx: RuleContext, signal: AbortSignal): Promise<string[]> {
    const node = this.where(ctx);
    return node === undefined ? this.opts.local!.command.targets(action, ctx, signal) : [node];
  }

  start(action: RuleAction, target: string, ctx: RuleContext, onOutput: (chunk: OutputChunk) => void): ActionSession {
    if (target === this.opts.nodeName && this.opts.local) return this.opts.local.command.start(action, target, ctx, onOutput);
    // The client is made on first use: a session whose start fails ends with that error.
    let killed = false;
    const opened = this.opts.remote(target).then((r) => {
      const session = r.start(action, ctx, onOutput);
      if (killed) session.kill();
      return session;
    });
    const done = opened.then((s) => s.done,
      (err: unknown): SessionEnd => ({ exitCode: null, error: err instanceof StorageError ? err : new StorageError(Code.UNAVAILABLE, (err as Error).message) }));
    return {
      done,
      kill: () => {
        killed = true;
        void opened.then((s) => s.kill(), () => undefined);
      },
      stop: async (graceMs) => {
        const session = await opened.catch(() => undefined);
        await session?.stop(graceMs);
      },
    };
  }

  async freeze(ctx: RuleContext, signal: AbortSignal): Promise<FrozenFs> {
    const node = this.where(ctx);
    if (node === undefined) return this.opts.local!.freezer.freeze(ctx, signal);
    const remote = await this.opts.remote(node);
    return remote.freeze(ctx, CALL_DEADLINE_MS * 3);
  }
}
