/**
 * Real cairnd processes for integration tests: each gets its own data directory (short,
 * under /tmp, so unix socket paths fit), its own HTTP port, JSON logs in a file, and
 * cairnctl wired to its API socket. Uses the compiled build (npm run build).
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtempSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient } from '../../src/cli/api-client.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CAIRND = join(ROOT, 'bin/cairnd.js');
const CAIRNCTL = join(ROOT, 'bin/cairnctl.js');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface CtlResult { stdout: string; stderr: string; exitCode: number }

export class Daemon {
  private child: ResultPromise | undefined;
  readonly apiSocket: string;
  readonly logFile: string;
  httpPort = 0;

  private constructor(readonly dataDir: string, private readonly extraArgs: string[]) {
    this.apiSocket = join(dataDir, 'api.sock');
    this.logFile = join(dataDir, 'cairnd.log');
  }

  static async start(opts: { extraArgs?: string[] } = {}): Promise<Daemon> {
    if (!existsSync(join(ROOT, 'dist/daemon/main.js'))) throw new Error('dist/ is missing: run npm run build first');
    const d = new Daemon(mkdtempSync('/tmp/cairn-it-'), opts.extraArgs ?? []);
    await d.launch();
    return d;
  }

  async launch(): Promise<void> {
    this.httpPort = await freePort();
    this.child = execa('node', [CAIRND, '--data-dir', this.dataDir, '--api-socket', this.apiSocket, '--http-listen', `127.0.0.1:${this.httpPort}`,
      '--log-format', 'json', '--log-level', 'debug', ...this.extraArgs], { reject: false, stdout: { file: this.logFile, append: true }, stderr: { file: this.logFile, append: true } });
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

  log(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  /** JSON log events, parsed. */
  events(): Record<string, unknown>[] {
    return this.log().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  client(): ApiClient {
    return new ApiClient(this.apiSocket);
  }

  async ctl(args: string[]): Promise<CtlResult> {
    const r = await execa('node', [CAIRNCTL, '--api-socket', this.apiSocket, ...args], { reject: false });
    return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 };
  }

  async ctlJson<T>(args: string[]): Promise<T> {
    const r = await this.ctl(['-o', 'json', ...args]);
    if (r.exitCode !== 0) throw new Error(`cairnctl ${args.join(' ')} failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** SIGTERM and wait: the graceful path. Returns the exit code. */
  async stop(): Promise<number | undefined> {
    if (!this.child || this.child.exitCode !== null) return this.child?.exitCode ?? undefined;
    this.child.kill('SIGTERM');
    const r = await this.child;
    return r.exitCode;
  }

  /** kill -9: no flush, no cleanup. */
  async crash(): Promise<void> {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill('SIGKILL');
    await this.child;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  async destroy(): Promise<void> {
    await this.crash();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
