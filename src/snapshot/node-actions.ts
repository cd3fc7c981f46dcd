/**
 * The node-side kinds of action, for a volume staged on this node (the node store's staged
 * record, written by the CSI stager):
 * - `command`: a process run by cairnd, in a process group of its own (a timeout kills the
 *   whole group), with cairnd's environment plus CAIRN_VOLUME, CAIRN_VOLUME_ID,
 *   CAIRN_SNAPSHOT, CAIRN_STAGING_PATH and CAIRN_DEVICE, in `/`. No shell: `command` is the
 *   argument list.
 * - `fsfreeze`: FIFREEZE of the filesystem mounted at the staging path, FITHAW in post.
 */
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { Code, StorageError } from '../common/errors.js';
import { findMount } from '../engine/mounter.js';
import { fsFreeze, fsThaw } from '../native/index.js';
import type { StagedVolumeRecord } from '../store/staged-volume-record.js';
import type { FreezeJournal } from './freeze-journal.js';
import type { ActionSession, ActionTransport, FrozenFs, FsFreezer, OutputChunk, RuleContext, SessionEnd } from './action-transport.js';
import type { RuleAction } from './snapshot-rule.js';

/** The staged record of a volume on this node (the stager's `get`). */
export type StagedLookup = (volume: string) => StagedVolumeRecord | undefined;

export interface NodeActionsOptions {
  /** This node's name: the target of command actions, and named in errors. */
  nodeName: string;
  staged: StagedLookup;
  /** The environment commands start from; cairnd's own by default. */
  env?: NodeJS.ProcessEnv;
}

/** The volume's staged record, or FAILED_PRECONDITION saying where it must be staged. */
export function requireStaged(opts: NodeActionsOptions, ctx: RuleContext, kind: string): StagedVolumeRecord {
  const r = opts.staged(ctx.volume);
  if (!r || r.state !== 'staged') {
    const where = ctx.engineNode && ctx.engineNode !== opts.nodeName ? ` (its engine runs on node ${ctx.engineNode})` : '';
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${ctx.volume}" is not staged on node ${opts.nodeName}${r ? ` (its staging is ${r.state})` : ''}${where}: ${kind} actions run on the node where the volume is staged for its pod; run the rule there`,
      { details: { volume: ctx.volume, node: opts.nodeName } });
  }
  return r;
}

function signalGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // the group has already gone
  }
}

export class NodeCommandTransport implements ActionTransport {
  constructor(private readonly opts: NodeActionsOptions) {}

  targets(_action: RuleAction, ctx: RuleContext): Promise<string[]> {
    requireStaged(this.opts, ctx, 'command');
    return Promise.resolve([this.opts.nodeName]);
  }

  start(action: RuleAction, _target: string, ctx: RuleContext, onOutput: (chunk: OutputChunk) => void): ActionSession {
    const record = requireStaged(this.opts, ctx, 'command');
    const env = {
      ...(this.opts.env ?? process.env),
      CAIRN_VOLUME: ctx.volume, CAIRN_VOLUME_ID: ctx.volumeId ?? record.volumeId, CAIRN_SNAPSHOT: ctx.snapshot ?? '',
      CAIRN_STAGING_PATH: record.stagingPath, CAIRN_DEVICE: record.devicePath,
    };
    const [program, ...args] = action.command;
    const child = spawn(program!, args, { cwd: '/', env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (data: Buffer) => onOutput({ stream: 'stdout', data }));
    child.stderr.on('data', (data: Buffer) => onOutput({ stream: 'stderr', data }));
    const done = new Promise<SessionEnd>((resolve) => {
      child.once('error', (err: NodeJS.ErrnoException) => {
        const missing = err.code === 'ENOENT';
        resolve({
          exitCode: null,
          error: new StorageError(missing ? Code.FAILED_PRECONDITION : Code.INTERNAL,
            missing ? `${program} is not installed on node ${this.opts.nodeName} (or not on cairnd's PATH): install it, or give its full path in the rule's command`
              : `${program} could not be started on node ${this.opts.nodeName}: ${err.message}`, { cause: err, details: { program } }),
        });
      });
      // 'close' comes after the output has been read; a grandchild that keeps the pipes open is not waited for.
      child.once('close', (code, signal) => resolve({ exitCode: code, ...(signal ? { signal } : {}) }));
      child.once('exit', (code, signal) => {
        setTimeout(() => {
          child.stdout.destroy();
          child.stderr.destroy();
          resolve({ exitCode: code, ...(signal ? { signal } : {}) });
        }, 1000).unref();
      });
    });
    return {
      done,
      kill: () => signalGroup(child.pid, 'SIGKILL'),
      stop: async (graceMs) => {
        signalGroup(child.pid, 'SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const forced = new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            signalGroup(child.pid, 'SIGKILL');
            resolve();
          }, graceMs);
        });
        await Promise.race([done, forced]);
        clearTimeout(timer);
        await done;
      },
    };
  }
}

export interface FreezeCalls {
  findMount: typeof findMount;
  fsFreeze: typeof fsFreeze;
  fsThaw: typeof fsThaw;
}

export class NodeFsFreezer implements FsFreezer {
  private readonly calls: FreezeCalls;

  /** With a journal, every freeze is recorded on disk until its thaw, and `thawLeftovers` mends a cairnd killed in between. */
  constructor(private readonly opts: NodeActionsOptions & { journal?: FreezeJournal }, calls: Partial<FreezeCalls> = {}) {
    this.calls = { findMount, fsFreeze, fsThaw, ...calls };
  }

  /** At start: thaws what a previous cairnd froze and did not thaw (see freeze-journal.ts). */
  async thawLeftovers(): Promise<number> {
    if (!this.opts.journal) return 0;
    return this.opts.journal.thawLeftovers(async (mountPoint) => {
      // Without the volume's mount there, FITHAW would reach the filesystem holding the directory.
      if (!(await this.calls.findMount(mountPoint))) throw new StorageError(Code.NOT_FOUND, `nothing is mounted at ${mountPoint} any more`);
      const dir = await open(mountPoint, 'r');
      try {
        await this.calls.fsThaw(dir.fd);
      } finally {
        await dir.close();
      }
    });
  }

  async freeze(ctx: RuleContext): Promise<FrozenFs> {
    const record = requireStaged(this.opts, ctx, 'fsfreeze');
    const path = record.stagingPath;
    if (record.accessType !== 'mount') {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${ctx.volume}" is staged as a raw block device: it has no filesystem for fsfreeze to freeze; remove the fsfreeze action from the rule`,
        { details: { volume: ctx.volume } });
    }
    // Freezing a directory freezes the filesystem holding it: without the volume's mount there, that would be the node's own.
    if (!(await this.calls.findMount(path))) {
      throw new StorageError(Code.FAILED_PRECONDITION, `nothing is mounted at volume "${ctx.volume}"'s staging path ${path} on node ${this.opts.nodeName}: refusing to freeze the filesystem that holds it`,
        { details: { volume: ctx.volume, stagingPath: path } });
    }
    const journal = this.opts.journal;
    await journal?.record(ctx.volume, path);
    const dir = await open(path, 'r');
    try {
      await this.calls.fsFreeze(dir.fd);
    } catch (err) {
      await dir.close();
      await journal?.clear(ctx.volume);
      throw err;
    }
    return {
      target: path,
      thaw: async () => {
        try {
          await this.calls.fsThaw(dir.fd);
        } finally {
          await dir.close();
        }
        // Kept when the thaw failed: the next start tries again.
        await journal?.clear(ctx.volume);
      },
    };
  }
}
