/**
 * The node side of the engine service's node-scoped actions (cairn.engine.v1 RunCommand,
 * StopCommand, FreezeFilesystem, ThawFilesystem, RenewLease): a rule's `command` and
 * `fsfreeze` actions asked by a coordinator on another node (remote-actions.ts), run here
 * through the same local kinds as a rule run here (node-actions.ts). Each is held on a lease
 * the caller renews; when it ends without a renewal, this node undoes the action by itself:
 * it kills the command's process group, or thaws the filesystem. A freeze is also in the
 * freeze journal, so a cairnd killed while holding it thaws at its next start.
 */
import type * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { toServiceError, unary } from '../rpc/status.js';
import type { ActionSession, FrozenFs, FsFreezer, RuleContext } from './action-transport.js';
import type { NodeCommandTransport } from './node-actions.js';
import type { RuleAction } from './snapshot-rule.js';

interface Lease {
  timer: NodeJS.Timeout;
  onExpire: () => void;
}

/** Leases by id: each calls its `onExpire` once when not renewed or released in time. */
export class ActionLeases {
  private readonly held = new Map<string, Lease>();

  hold(id: string, ms: number, onExpire: () => void): void {
    this.release(id);
    this.held.set(id, { onExpire, timer: this.arm(id, ms, onExpire) });
  }

  /** False when the lease has ended (expired or released). */
  renew(id: string, ms: number): boolean {
    const lease = this.held.get(id);
    if (!lease) return false;
    clearTimeout(lease.timer);
    lease.timer = this.arm(id, ms, lease.onExpire);
    return true;
  }

  /** True when it was held (it had not expired). */
  release(id: string): boolean {
    const lease = this.held.get(id);
    if (!lease) return false;
    clearTimeout(lease.timer);
    this.held.delete(id);
    return true;
  }

  private arm(id: string, ms: number, onExpire: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.held.delete(id);
      onExpire();
    }, ms);
    timer.unref();
    return timer;
  }
}

export interface NodeActionHostOptions {
  command: NodeCommandTransport;
  freezer: FsFreezer;
  log: Logger;
}

interface Target { volume: string; volumeId: string; snapshot: string }

function contextOf(t: Target | null | undefined): RuleContext {
  if (!t?.volume) throw new StorageError(Code.INVALID_ARGUMENT, 'a node action needs the volume it acts for');
  return { volume: t.volume, ...(t.volumeId ? { volumeId: t.volumeId } : {}), ...(t.snapshot ? { snapshot: t.snapshot } : {}) };
}

function leaseOf(req: { leaseId: string; leaseMs?: number }, needMs = true): void {
  if (!req.leaseId) throw new StorageError(Code.INVALID_ARGUMENT, 'a node action needs a lease id');
  if (needMs && !(Number(req.leaseMs) > 0)) throw new StorageError(Code.INVALID_ARGUMENT, 'a node action needs a lease of more than 0 ms');
}

/** The command a remote coordinator asks for, as the local transport takes it. */
function commandAction(command: string[]): RuleAction {
  if (command.length === 0 || !command[0]) throw new StorageError(Code.INVALID_ARGUMENT, 'a command action needs a program to run');
  return { kind: 'command', command, timeoutSeconds: 0, onError: 'Fail', runIn: 'one', background: false };
}

export class NodeActionHost {
  private readonly leases = new ActionLeases();
  private readonly sessions = new Map<string, ActionSession>();
  private readonly frozen = new Map<string, FrozenFs>();
  /** Leases that ended with their freeze thawed by this node. */
  private readonly expired = new Set<string>();
  private readonly log: Logger;

  constructor(private readonly opts: NodeActionHostOptions) {
    this.log = opts.log.child({ component: 'node-actions' });
  }

  /** Starts the command; FAILED_PRECONDITION when the volume is not staged here. */
  async runCommand(req: { target: Target; command: string[]; leaseId: string; leaseMs: number }, onOutput: (stream: 'stdout' | 'stderr', data: Buffer) => void): Promise<ActionSession> {
    leaseOf(req);
    const ctx = contextOf(req.target);
    const action = commandAction(req.command);
    const [target] = await this.opts.command.targets(action, ctx);
    const session = this.opts.command.start(action, target!, ctx, (c) => onOutput(c.stream, c.data));
    this.sessions.set(req.leaseId, session);
    this.leases.hold(req.leaseId, req.leaseMs, () => {
      this.log.warn({ volume: ctx.volume, lease: req.leaseId }, 'command lease ended without a renewal: killing it');
      session.kill();
    });
    void session.done.then(() => {
      this.leases.release(req.leaseId);
      this.sessions.delete(req.leaseId);
    });
    return session;
  }

  async stopCommand(leaseId: string, graceMs: number): Promise<void> {
    await this.sessions.get(leaseId)?.stop(graceMs);
  }

  async freeze(req: { target: Target; leaseId: string; leaseMs: number }): Promise<string> {
    leaseOf(req);
    const ctx = contextOf(req.target);
    const held = this.frozen.get(req.leaseId);
    if (held) {
      this.leases.renew(req.leaseId, req.leaseMs);
      return held.target;
    }
    const frozen = await this.opts.freezer.freeze(ctx, new AbortController().signal);
    this.frozen.set(req.leaseId, frozen);
    this.leases.hold(req.leaseId, req.leaseMs, () => {
      this.log.warn({ volume: ctx.volume, target: frozen.target, lease: req.leaseId }, 'freeze lease ended without a thaw: thawing the filesystem');
      this.expired.add(req.leaseId);
      void this.thawHeld(req.leaseId).catch((err: unknown) => this.log.error({ err, target: frozen.target }, 'filesystem thaw failed'));
    });
    return frozen.target;
  }

  /** Thaws what `leaseId` froze; says whether its lease had ended first (the node thawed it already). */
  async thaw(leaseId: string): Promise<boolean> {
    this.leases.release(leaseId);
    await this.thawHeld(leaseId);
    return this.expired.delete(leaseId);
  }

  renew(leaseId: string, leaseMs: number): void {
    if (!this.leases.renew(leaseId, leaseMs)) {
      throw new StorageError(Code.NOT_FOUND, `lease ${leaseId} has ended on this node: what it held was undone`, { details: { lease: leaseId } });
    }
  }

  private async thawHeld(leaseId: string): Promise<void> {
    const frozen = this.frozen.get(leaseId);
    if (!frozen) return;
    this.frozen.delete(leaseId);
    await frozen.thaw();
  }
}

type EventSink = grpc.ServerWritableStream<{ target: Target; command: string[]; leaseId: string; leaseMs: number }, unknown>;

/** The RunCommand stream: output events, then the end; a cancelled call kills the command. */
async function runCommandCall(host: NodeActionHost, call: EventSink): Promise<void> {
  let session: ActionSession;
  try {
    session = await host.runCommand(call.request, (stream, data) => call.write({ output: { stream, data } }));
  } catch (err) {
    call.emit('error', toServiceError(err));
    return;
  }
  call.on('cancelled', () => session.kill());
  const end = await session.done;
  const error = end.error ? { errorCode: Code[end.error.code], errorMessage: end.error.message } : {};
  call.write({ end: { exited: end.exitCode !== null, exitCode: end.exitCode ?? 0, signal: end.signal ?? '', ...error } });
  call.end();
}

/** The handlers of the node-scoped methods; UNAVAILABLE while `host` is not ready. */
export function nodeActionHandlers(host: () => NodeActionHost | undefined, log: Logger): grpc.UntypedServiceImplementation {
  const onUnexpected = (err: unknown, method: string): void => log.error({ err, method }, 'node action call failed unexpectedly');
  const ready = (): NodeActionHost => {
    const h = host();
    if (!h) throw new StorageError(Code.UNAVAILABLE, 'this node is still starting: node actions are not served yet; retry');
    return h;
  };
  return {
    RunCommand: (call: EventSink) => {
      let h: NodeActionHost;
      try {
        h = ready();
      } catch (err) {
        call.emit('error', toServiceError(err));
        return;
      }
      void runCommandCall(h, call).catch((err: unknown) => onUnexpected(err, 'RunCommand'));
    },
    StopCommand: unary(async (req: { leaseId: string; graceMs: number }) => {
      await ready().stopCommand(req.leaseId, Number(req.graceMs));
      return {};
    }, onUnexpected, 'StopCommand'),
    FreezeFilesystem: unary(async (req: { target: Target; leaseId: string; leaseMs: number }) => ({ mountPoint: await ready().freeze(req) }), onUnexpected, 'FreezeFilesystem'),
    ThawFilesystem: unary(async (req: { leaseId: string }) => ({ leaseExpired: await ready().thaw(req.leaseId) }), onUnexpected, 'ThawFilesystem'),
    RenewLease: unary(async (req: { leaseId: string; leaseMs: number }) => {
      leaseOf(req);
      ready().renew(req.leaseId, Number(req.leaseMs));
      return {};
    }, onUnexpected, 'RenewLease'),
  };
}
