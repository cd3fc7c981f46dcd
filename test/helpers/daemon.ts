/**
 * Real cairnd processes for integration tests: each gets its own data directory (short,
 * under /tmp, so unix socket paths fit), its own HTTP port, JSON logs in a file, and
 * cairnctl wired to its API socket. Uses the compiled build (npm run build).
 */
import { execa, type ResultPromise } from 'execa';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient } from '../../src/cli/api-client.js';
import { freePort } from './ports.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CAIRND = join(ROOT, 'bin/cairnd.js');
const CAIRNCTL = join(ROOT, 'bin/cairnctl.js');

export { freePort };

export interface CtlResult { stdout: string; stderr: string; exitCode: number }

export type LogEvent = Record<string, unknown>;

export interface DaemonStartOptions {
  /** Flags on every launch, after the ones Daemon sets. */
  extraArgs?: string[];
  /** An existing, empty directory to use instead of a new one under /tmp (keep it short: sockets live there). */
  dataDir?: string;
}

export class Daemon {
  private child: ResultPromise | undefined;
  private pausedFlag = false;
  readonly apiSocket: string;
  readonly logFile: string;
  httpPort = 0;

  private constructor(readonly dataDir: string, private extraArgs: string[]) {
    this.apiSocket = join(dataDir, 'api.sock');
    this.logFile = join(dataDir, 'cairnd.log');
  }

  static async start(opts: DaemonStartOptions = {}): Promise<Daemon> {
    if (!existsSync(join(ROOT, 'dist/daemon/main.js'))) throw new Error('dist/ is missing: run npm run build first');
    const d = new Daemon(opts.dataDir ?? mkdtempSync('/tmp/cairn-it-'), opts.extraArgs ?? []);
    try {
      await d.launch();
    } catch (err) {
      // A cairnd that died in start-up may have mounted its pool's xfs image: the caller removes the dir next.
      unmountUnder(d.dataDir);
      throw err;
    }
    return d;
  }

  /** The flags every later launch gets (after the ones Daemon sets). */
  get args(): readonly string[] {
    return this.extraArgs;
  }

  setArgs(args: string[]): void {
    this.extraArgs = [...args];
  }

  /**
   * Starts cairnd and waits for /readyz. `opts.args` are added for this launch only (after
   * the permanent ones, so a flag given in both takes this launch's value).
   */
  async launch(opts: { args?: string[] } = {}): Promise<void> {
    this.httpPort = await freePort();
    this.pausedFlag = false;
    this.child = execa('node', [CAIRND, '--data-dir', this.dataDir, '--api-socket', this.apiSocket, '--http-listen', `127.0.0.1:${this.httpPort}`,
      '--log-format', 'json', '--log-level', 'debug', ...mergeArgs(this.extraArgs, opts.args ?? [])], { reject: false, stdout: { file: this.logFile, append: true }, stderr: { file: this.logFile, append: true } });
    // In the kernel-test VM (software emulation) nothing is timed: start-up may take minutes.
    const deadline = Date.now() + (process.env.CAIRN_KERNEL_VM ? Infinity : 30_000);
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`cairnd exited during start-up:\n${this.log()}`);
      const ready = await fetch(`http://127.0.0.1:${this.httpPort}/readyz`).then((r) => r.ok, () => false);
      if (ready) return;
      if (Date.now() > deadline) throw new Error(`cairnd did not become ready:\n${this.log()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  /** Launched and not exited (it may be paused). */
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get paused(): boolean {
    return this.pausedFlag && this.running;
  }

  log(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  /** The last `lines` lines of the log. */
  logTail(lines = 60): string {
    return this.log().split('\n').slice(-lines - 1).join('\n');
  }

  /** A position in the log: pass it to `events`/`waitForEvent` to see only what came after. */
  logMark(): number {
    return existsSync(this.logFile) ? statSync(this.logFile).size : 0;
  }

  /** JSON log events, parsed (those written after `since`, a logMark(), when given). */
  events(since = 0): LogEvent[] {
    if (!existsSync(this.logFile)) return [];
    const text = since > 0 ? readFileSync(this.logFile).subarray(since).toString('utf8') : this.log();
    const out: LogEvent[] = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as LogEvent);
      } catch {
        // a line still being written
      }
    }
    return out;
  }

  /**
   * Waits for a log event matching `match` (an object of fields that must be equal, or a
   * predicate), written after `since`. Rejects after `timeoutMs` naming what it waited for.
   */
  async waitForEvent(match: Partial<LogEvent> | ((e: LogEvent) => boolean), opts: { since?: number; timeoutMs?: number } = {}): Promise<LogEvent> {
    const pred = typeof match === 'function' ? match : (e: LogEvent) => Object.entries(match).every(([k, v]) => e[k] === v);
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    for (;;) {
      const found = this.events(opts.since ?? 0).find(pred);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no log event ${typeof match === 'function' ? match.toString() : JSON.stringify(match)} in ${opts.timeoutMs ?? 30_000} ms (log ${this.logFile})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  client(): ApiClient {
    return new ApiClient(this.apiSocket);
  }

  /** Runs cairnctl against this daemon; `timeoutMs` kills it after that long (default: no limit). */
  async ctl(args: string[], opts: { timeoutMs?: number } = {}): Promise<CtlResult> {
    const r = await execa('node', [CAIRNCTL, '--api-socket', this.apiSocket, ...args], { reject: false, ...(opts.timeoutMs ? { timeout: opts.timeoutMs } : {}) });
    return { stdout: r.stdout, stderr: r.stderr || (r.timedOut ? `cairnctl timed out after ${opts.timeoutMs} ms` : ''), exitCode: r.exitCode ?? -1 };
  }

  async ctlJson<T>(args: string[]): Promise<T> {
    const r = await this.ctl(['-o', 'json', ...args]);
    if (r.exitCode !== 0) throw new Error(`cairnctl ${args.join(' ')} failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** SIGSTOP: the process keeps its sockets and leases but answers nothing until resume(). */
  pause(): void {
    if (!this.running) throw new Error('cannot pause: cairnd is not running');
    this.child!.kill('SIGSTOP');
    this.pausedFlag = true;
  }

  resume(): void {
    if (!this.running) return;
    this.child!.kill('SIGCONT');
    this.pausedFlag = false;
  }

  /** SIGTERM and wait: the graceful path. Returns the exit code. */
  async stop(): Promise<number | undefined> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return this.child?.exitCode ?? undefined;
    this.resume();
    this.child.kill('SIGTERM');
    const r = await this.child;
    return r.exitCode;
  }

  /** kill -9: no flush, no cleanup (a paused process dies too). */
  async crash(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
    await this.child;
    this.pausedFlag = false;
  }

  async restart(opts: { args?: string[] } = {}): Promise<void> {
    await this.stop();
    await this.launch(opts);
  }

  /** kill -9, then unmount what cairnd left mounted under its data dir (the file pool's xfs image), then remove the dir. */
  async destroy(): Promise<void> {
    await this.crash();
    unmountUnder(this.dataDir);
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * Unmounts the file pools' xfs images mounted below `dir` (a mount point next to an
 * `xfs-pool.img`): a pool in the xfs-image layout keeps `<pool>/xfs` mounted after a
 * kill -9, and unmounting it also frees its loop device. Other mounts are left alone.
 */
export function unmountUnder(dir: string): void {
  if (!existsSync('/proc/self/mountinfo')) return;
  const prefix = `${dir.replace(/\/+$/, '')}/`;
  const points = readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => p !== undefined && p.startsWith(prefix))
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => existsSync(join(dirname(p), 'xfs-pool.img')))
    .sort((a, b) => b.length - a.length);
  for (const p of points) execFileSync('umount', [p], { stdio: 'ignore' });
}

/** `base` then `extra`, where a flag in `extra` replaces the same flag (and its value) in `base`. */
export function mergeArgs(base: readonly string[], extra: readonly string[]): string[] {
  const flagsOf = (args: readonly string[]): Set<string> => new Set(args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]!));
  const replaced = flagsOf(extra);
  const out: string[] = [];
  for (let i = 0; i < base.length; i++) {
    const a = base[i]!;
    const name = a.split('=')[0]!;
    if (a.startsWith('--') && replaced.has(name)) {
      if (!a.includes('=') && i + 1 < base.length && !base[i + 1]!.startsWith('--')) i++;
      continue;
    }
    out.push(a);
  }
  return [...out, ...extra];
}
