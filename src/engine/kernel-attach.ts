/**
 * Attaching an exported volume to a kernel block device.
 *
 * - With the kernel's nbd driver: /dev/nbdX driven over netlink from the addon
 *   (nbd-kernel-device.ts): our own NBD handshake on a unix socket to the export, then
 *   NBD_CMD_CONNECT with the export's size and flags, a per-request timeout `timeoutS`
 *   (30 s) and a dead-connection timeout `reconnectS` (120 s). Why not Debian's nbd-client
 *   any more: a cairnd restart ends the server side of the socket, and only
 *   NBD_CMD_RECONFIGURE gives the same device a new one, which nbd-client cannot send.
 *   While no connection is alive the kernel holds I/O for up to `reconnectS` instead of
 *   failing it; a request lost with the old socket is sent again after `timeoutS`. So when
 *   cairnd serves the export again in time, `adopt` reconnects the same /dev/nbdX and the
 *   mounted filesystem sees a pause, not an error (docs/csi.md, "Staging and restart
 *   safety"). What `adopt` needs is in the attachment: the device path (its index) and
 *   the volume (the export name, and the device's backend identifier `cairn:<volume>`).
 * - Without an nbd driver (this project's dev machines): nbdfuse shows the export as a file
 *   and a loop device (direct I/O) makes a block device of it. The choice is logged.
 *   nbdfuse runs in its own session (it outlives a cairnd kill -9) and reaches the export
 *   through `nbdkit -s --filter=retry nbd socket=...`: when cairnd goes away, a request
 *   fails on the dead socket, the retry filter reconnects every second for `reconnectS`
 *   and replays it, so the mounted filesystem sees a pause, not an error, when cairnd
 *   serves the export again in time (docs/csi.md, "Staging and restart safety").
 *   `adopt` takes such an attachment back after a restart from what was recorded.
 *   nbdfuse connects to the export's growable view (nbd/handshake.ts): its file is as
 *   large as a volume can be, and the loop device is limited to the volume's size.
 * Resize (online expansion, `resize`): nbd through a netlink reconfigure with the new
 * size (nbd-kernel-device.ts); nbdfuse-loop by raising the loop device's size limit
 * (loop-resize.ts). Both change the live device: nothing is detached or reconnected.
 * Detach: NBD_CMD_DISCONNECT (waits until the kernel lets go), or losetup -d, fusermount -u
 * and stopping nbdfuse, in that order.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ChildProcessError, Code, StorageError } from '../common/errors.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { runCommand } from './command.js';
import { growLoopDevice } from './loop-resize.js';
import { blockDeviceBytes } from './mounter.js';
import { growableExportName } from './nbd/handshake.js';
import {
  connectNbdDevice, disconnectNbdDevice, exportSizeBytes, isExportUnreachable, nbdDeviceInUse, reconnectNbdDevice, resizeNbdDevice, type NbdDeviceTimeouts,
} from './nbd-kernel-device.js';

export type AttachMethod = 'nbd' | 'nbdfuse-loop';

export interface Attachment {
  name: string;
  devicePath: string;
  method: AttachMethod;
  socketPath: string;
  /** nbdfuse-loop: the FUSE directory and nbdfuse's pid, so that `adopt` finds them after a restart. */
  fuse?: { dir: string; pid: number };
}

export interface KernelAttacherOptions {
  log: Logger;
  /** Where nbdfuse mount points go (fallback only). */
  runDir: string;
  /** nbd: the kernel's per-request timeout; 30 s by default. */
  timeoutS?: number;
  /** Force a method (tests); by default nbd where /sys/module/nbd exists. */
  method?: AttachMethod;
  /**
   * How long I/O waits for a lost export to be served again before it fails; 120 s by
   * default. nbdfuse-loop: the retry filter's retries (once a second); nbd: the kernel's
   * dead-connection timeout.
   */
  reconnectS?: number;
}

type Entry = Attachment;

const COMMAND_TIMEOUT_MS = 60_000;
const POLL_MS = 50;

async function run(command: string, args: string[]): Promise<string> {
  return (await runCommand(command, args, { timeoutMs: COMMAND_TIMEOUT_MS })).stdout.trim();
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The command line of `pid`, '' when it is gone. */
function commandLine(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/** The file behind loop device `device`, '' when it has none (or is not a loop device). */
function loopBackingFile(device: string): string {
  try {
    return readFileSync(`/sys/block/${device.slice('/dev/'.length)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return '';
  }
}

async function waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
  for (let waited = 0; waited < timeoutMs; waited += POLL_MS) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return check();
}

export class KernelAttacher {
  private readonly attached = new Map<string, Entry>();
  private readonly locks = new KeyedLock();
  private readonly method: AttachMethod;
  private readonly nbdTimeouts: NbdDeviceTimeouts;

  constructor(private readonly options: KernelAttacherOptions) {
    this.nbdTimeouts = { timeoutS: options.timeoutS ?? 30, deadConnTimeoutS: options.reconnectS ?? 120 };
    this.method = options.method ?? (existsSync('/sys/module/nbd') ? 'nbd' : 'nbdfuse-loop');
    if (this.method === 'nbdfuse-loop') options.log.warn({ method: this.method }, 'kernel has no nbd driver: volumes attach through nbdfuse and a loop device');
    else options.log.info({ method: this.method, ...this.nbdTimeouts }, 'volumes attach through the kernel nbd driver');
  }

  get(name: string): Attachment | undefined {
    const e = this.attached.get(name);
    return e && { ...e, ...(e.fuse ? { fuse: { ...e.fuse } } : {}) };
  }

  /**
   * After a restart: takes back an attachment recorded earlier when its pieces are still
   * there (the nbd device connected to this volume; nbdfuse alive on its directory and the
   * loop device still on its file). An nbd device is reconnected to the export on
   * `recorded.socketPath`, which must be served again first. Returns whether it did (false
   * also when nothing serves the export); a lost one stays the caller's to undo.
   */
  adopt(recorded: Attachment): Promise<boolean> {
    return this.locks.run(recorded.name, async () => {
      if (this.attached.has(recorded.name)) return true;
      if (!this.present(recorded)) return false;
      if (recorded.method === 'nbd' && !(await this.reconnectNbd(recorded))) return false;
      this.attached.set(recorded.name, { ...recorded });
      this.options.log.info({ volume: recorded.name, device: recorded.devicePath, method: recorded.method }, 'volume attachment taken back after restart');
      return true;
    });
  }

  /** Whether a recorded attachment's pieces are still there (see `adopt`); changes nothing. */
  present(a: Attachment): boolean {
    if (a.method === 'nbd') return nbdDeviceInUse(a.devicePath, a.name);
    if (!a.fuse) return false;
    const cmd = commandLine(a.fuse.pid);
    return cmd[0]?.endsWith('nbdfuse') === true && cmd.includes(a.fuse.dir) && loopBackingFile(a.devicePath) === join(a.fuse.dir, 'nbd');
  }

  /** Attaches export `name` served on `socketPath`; idempotent (returns the current attachment). */
  attach(name: string, socketPath: string): Promise<Attachment> {
    return this.locks.run(name, async () => {
      const current = this.get(name);
      if (current) return current;
      const entry = this.method === 'nbd' ? await this.attachNbd(name, socketPath) : await this.attachFuse(name, socketPath);
      this.attached.set(name, entry);
      this.options.log.info({ volume: name, device: entry.devicePath, method: entry.method }, 'volume attached');
      return this.get(name)!;
    });
  }

  /**
   * Grows the kernel device of attached volume `name` to `sizeBytes` online; a device
   * already that large is left alone (devices never shrink). Returns the device's size.
   * The export must already serve at least `sizeBytes`.
   */
  resize(name: string, sizeBytes: number): Promise<number> {
    return this.locks.run(name, async () => {
      const e = this.attached.get(name);
      if (!e) throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" has no kernel device on this node: stage it first`, { details: { volume: name } });
      const before = await blockDeviceBytes(e.devicePath);
      if (before >= sizeBytes) return before;
      if (e.method === 'nbd') await resizeNbdDevice(name, e.devicePath, sizeBytes);
      else await growLoopDevice(name, e.devicePath, join(e.fuse?.dir ?? '', 'nbd'), sizeBytes);
      const after = await blockDeviceBytes(e.devicePath);
      this.options.log.info({ volume: name, device: e.devicePath, method: e.method, fromBytes: before, sizeBytes: after }, 'volume device grown');
      return after;
    });
  }

  /**
   * Detaches; not an error when `name` is not attached. The caller unmounts first.
   * `recorded` (an attachment of an earlier cairnd) is undone as far as its pieces remain.
   */
  detach(name: string, recorded?: Attachment): Promise<void> {
    return this.locks.run(name, async () => {
      const e = this.attached.get(name) ?? recorded;
      if (!e) return;
      if (e.method === 'nbdfuse-loop') await this.detachFuse(e);
      else if (nbdDeviceInUse(e.devicePath, e.name)) await disconnectNbdDevice(e.devicePath);
      this.attached.delete(name);
      this.options.log.info({ volume: name, device: e.devicePath }, 'volume detached');
    });
  }

  /** Detaches every attachment except those `keep` names (staged volumes outlive a cairnd stop). */
  async detachAll(keep: (name: string) => boolean = () => false): Promise<void> {
    for (const name of [...this.attached.keys()].filter((n) => !keep(n))) {
      await this.detach(name).catch((err: unknown) => this.options.log.error({ volume: name, err }, 'volume did not detach cleanly'));
    }
  }

  private async attachNbd(name: string, socketPath: string): Promise<Entry> {
    const devicePath = await connectNbdDevice(name, socketPath, this.nbdTimeouts);
    return { name, devicePath, method: 'nbd', socketPath };
  }

  /** Reconnects a recorded nbd device to its export; false when nothing serves the export. */
  private async reconnectNbd(a: Attachment): Promise<boolean> {
    try {
      await reconnectNbdDevice(a.name, a.devicePath, a.socketPath, this.nbdTimeouts);
    } catch (err) {
      if (!isExportUnreachable(err)) throw err;
      this.options.log.warn({ volume: a.name, device: a.devicePath, err }, 'nbd device cannot reconnect: nothing serves its export');
      return false;
    }
    this.options.log.info({ volume: a.name, device: a.devicePath }, 'nbd device reconnected to its export');
    return true;
  }

  private async attachFuse(name: string, socketPath: string): Promise<Entry> {
    // The loop device is limited to the volume's size; nbdfuse's file is the growable view's.
    const sizeBytes = await exportSizeBytes(socketPath, name);
    const dir = join(this.options.runDir, `fuse-${name}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const logPath = join(this.options.runDir, `fuse-${name}.log`);
    const logFd = openSync(logPath, 'a', 0o600);
    const reconnectS = this.options.reconnectS ?? 120;
    // Its own session: nbdfuse (and the nbdkit under it) outlive cairnd, so that the
    // filesystem on the loop device survives a cairnd restart.
    const child = spawn('nbdfuse', [dir, '--command', 'nbdkit', '-s', '--exit-with-parent', '--filter=retry', 'nbd',
      `socket=${socketPath}`, `export=${growableExportName(name)}`, `retries=${reconnectS}`, 'retry-delay=1', 'retry-exponential=no'],
    { detached: true, stdio: ['ignore', 'ignore', logFd] });
    closeSync(logFd);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.once('error', () => undefined);
    const file = join(dir, 'nbd');
    if (!(await waitFor(() => existsSync(file) || child.exitCode !== null || child.pid === undefined, 10_000)) || !existsSync(file)) {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
      throw new ChildProcessError('nbdfuse', child.exitCode, readLog(logPath) || 'the export did not appear', { details: { volume: name } });
    }
    child.unref();
    const fuse = { dir, pid: child.pid! };
    try {
      const devicePath = await run('losetup', ['-f', '--show', '--direct-io=on', '--sizelimit', String(sizeBytes), file]);
      return { name, devicePath, method: 'nbdfuse-loop', socketPath, fuse };
    } catch (err) {
      await this.stopFuse(name, fuse);
      throw err;
    }
  }

  private async detachFuse(e: Entry): Promise<void> {
    if (e.fuse && loopBackingFile(e.devicePath) === join(e.fuse.dir, 'nbd')) await run('losetup', ['-d', e.devicePath]);
    if (e.fuse) await this.stopFuse(e.name, e.fuse);
  }

  private async stopFuse(name: string, fuse: { dir: string; pid: number }): Promise<void> {
    if (existsSync(join(fuse.dir, 'nbd'))) {
      await run('fusermount3', ['-u', fuse.dir]).catch((err: unknown) => this.options.log.warn({ volume: name, err }, 'fusermount3 -u failed'));
    }
    if (commandLine(fuse.pid)[0]?.endsWith('nbdfuse')) {
      process.kill(fuse.pid, 'SIGTERM');
      if (!(await waitFor(() => !processAlive(fuse.pid), 5_000))) process.kill(fuse.pid, 'SIGKILL');
    }
    rmSync(fuse.dir, { recursive: true, force: true });
    rmSync(`${fuse.dir}.log`, { force: true });
  }
}

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}
