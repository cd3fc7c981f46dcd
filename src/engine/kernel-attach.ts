/**
 * Attaching an exported volume to a kernel block device.
 *
 * - With the kernel's nbd driver: `nbd-client -unix <socket> /dev/nbdX -N <volume> -b 4096
 *   -t <timeout>` (Debian's nbd-client, netlink mode). Why nbd-client and not netlink from
 *   the addon: the kernel takes a socket on which the NBD handshake is already done, plus
 *   the size and flags it returned; nbd-client does that client side of the protocol (and
 *   TLS, should we need it), so the addon would otherwise carry a second NBD client. It is
 *   one short-lived child per attach, run with a timeout, whose failure is a typed
 *   ChildProcessError (exit code and stderr).
 * - Dead-connection policy: a request the server has not answered within `timeoutS` (30 s)
 *   fails with EIO and the kernel marks the connection dead, so I/O fails instead of hanging
 *   forever; the filesystem above sees errors (ext4 and xfs stop writing). A cairnd restart
 *   ends the server side of the socket: attachments are not re-established (see
 *   docs/pool-dm.md).
 * - Without an nbd driver (this project's dev machines): nbdfuse shows the export as a file
 *   and a loop device (direct I/O) makes a block device of it. The choice is logged.
 * Detach: nbd-client -d (waits until the kernel lets go), or losetup -d, fusermount -u and
 * stopping nbdfuse, in that order.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ChildProcessError, Code, StorageError } from '../common/errors.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { nbdUri } from './export-manager.js';

export type AttachMethod = 'nbd' | 'nbdfuse-loop';

export interface Attachment {
  name: string;
  devicePath: string;
  method: AttachMethod;
  socketPath: string;
}

export interface KernelAttacherOptions {
  log: Logger;
  /** Where nbdfuse mount points go (fallback only). */
  runDir: string;
  /** The kernel's per-request timeout (nbd-client -t); 30 s by default. */
  timeoutS?: number;
  /** Force a method (tests); by default nbd where /sys/module/nbd exists. */
  method?: AttachMethod;
}

interface Entry extends Attachment {
  fuse?: { child: ChildProcess; dir: string };
}

const COMMAND_TIMEOUT_MS = 60_000;
const POLL_MS = 50;

function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: COMMAND_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout.trim());
      const code = typeof err.code === 'number' ? err.code : null;
      reject(new ChildProcessError(`${command} ${args.join(' ')}`, code, `${stderr}${err.message}`));
    });
  });
}

async function waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
  for (let waited = 0; waited < timeoutMs; waited += POLL_MS) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return check();
}

/** /dev/nbdN devices the kernel has that no client is using. */
function freeNbdDevices(): string[] {
  if (!existsSync('/sys/block')) return [];
  return readdirSync('/sys/block').filter((d) => /^nbd\d+$/.test(d) && !existsSync(`/sys/block/${d}/pid`))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3))).map((d) => `/dev/${d}`);
}

export class KernelAttacher {
  private readonly attached = new Map<string, Entry>();
  private readonly locks = new KeyedLock();
  private readonly method: AttachMethod;
  private readonly timeoutS: number;

  constructor(private readonly options: KernelAttacherOptions) {
    this.timeoutS = options.timeoutS ?? 30;
    this.method = options.method ?? (existsSync('/sys/module/nbd') ? 'nbd' : 'nbdfuse-loop');
    if (this.method === 'nbdfuse-loop') options.log.warn({ method: this.method }, 'kernel has no nbd driver: volumes attach through nbdfuse and a loop device');
    else options.log.info({ method: this.method, timeoutS: this.timeoutS }, 'volumes attach through the kernel nbd driver');
  }

  get(name: string): Attachment | undefined {
    const e = this.attached.get(name);
    return e && { name: e.name, devicePath: e.devicePath, method: e.method, socketPath: e.socketPath };
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

  /** Detaches; not an error when `name` is not attached. The caller unmounts first. */
  detach(name: string): Promise<void> {
    return this.locks.run(name, async () => {
      const e = this.attached.get(name);
      if (!e) return;
      if (e.fuse) await this.detachFuse(e);
      else await this.detachNbd(e.devicePath);
      this.attached.delete(name);
      this.options.log.info({ volume: name, device: e.devicePath }, 'volume detached');
    });
  }

  async detachAll(): Promise<void> {
    for (const name of [...this.attached.keys()]) {
      await this.detach(name).catch((err: unknown) => this.options.log.error({ volume: name, err }, 'volume did not detach cleanly'));
    }
  }

  private async attachNbd(name: string, socketPath: string): Promise<Entry> {
    let lastError: unknown = new StorageError(Code.RESOURCE_EXHAUSTED, 'no free /dev/nbd device', { details: { volume: name } });
    for (const device of freeNbdDevices().slice(0, 4)) {
      try {
        await run('nbd-client', ['-unix', socketPath, device, '-N', name, '-b', '4096', '-t', String(this.timeoutS)]);
      } catch (err) {
        lastError = err;
        continue;
      }
      const base = device.slice('/dev/'.length);
      if (!(await waitFor(() => existsSync(`/sys/block/${base}/pid`), 10_000))) {
        await this.detachNbd(device).catch(() => undefined);
        throw new StorageError(Code.INTERNAL, 'nbd-client returned but the device is not connected', { details: { volume: name, device } });
      }
      return { name, devicePath: device, method: 'nbd', socketPath };
    }
    throw lastError;
  }

  private async detachNbd(device: string): Promise<void> {
    await run('nbd-client', ['-d', device]);
    const base = device.slice('/dev/'.length);
    if (!(await waitFor(() => !existsSync(`/sys/block/${base}/pid`), 10_000))) {
      throw new StorageError(Code.UNAVAILABLE, 'the nbd device is still connected after nbd-client -d', { details: { device } });
    }
  }

  private async attachFuse(name: string, socketPath: string): Promise<Entry> {
    const dir = join(this.options.runDir, `fuse-${name}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const child = spawn('nbdfuse', [dir, nbdUri(name, socketPath)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    const file = join(dir, 'nbd');
    if (!(await waitFor(() => existsSync(file) || child.exitCode !== null, 10_000)) || !existsSync(file)) {
      child.kill('SIGTERM');
      throw new ChildProcessError('nbdfuse', child.exitCode, stderr || 'the export did not appear');
    }
    try {
      const devicePath = await run('losetup', ['-f', '--show', '--direct-io=on', file]);
      return { name, devicePath, method: 'nbdfuse-loop', socketPath, fuse: { child, dir } };
    } catch (err) {
      await run('fusermount3', ['-u', dir]).catch(() => undefined);
      child.kill('SIGTERM');
      throw err;
    }
  }

  private async detachFuse(e: Entry): Promise<void> {
    const { child, dir } = e.fuse!;
    await run('losetup', ['-d', e.devicePath]);
    await run('fusermount3', ['-u', dir]).catch((err: unknown) => this.options.log.warn({ volume: e.name, err }, 'fusermount3 -u failed'));
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await waitFor(() => child.exitCode !== null || child.signalCode !== null, 5_000);
    }
    rmSync(dir, { recursive: true, force: true });
  }
}
