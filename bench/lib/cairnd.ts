/**
 * A real cairnd for the benchmarks: the compiled dist/ (bin/cairnd.js) in a data directory
 * of its own, with one volume created and, once the caller has filled its backing file,
 * exported through the daemon's API. Node flags can be given (e.g. --cpu-prof, which
 * NODE_OPTIONS does not take). Warns when the build is older than the sources, so that a
 * stale build is not measured unknowingly.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient } from '../../src/cli/api-client.js';
import { freePort } from '../../test/helpers/daemon.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The .ts files under `dir` modified after `sinceMs`. */
function newerThan(dir: string, sinceMs: number): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...newerThan(path, sinceMs));
    else if (entry.name.endsWith('.ts') && statSync(path).mtimeMs > sinceMs) found.push(path);
  }
  return found;
}

/** Throws unless dist/ exists; warns when files under src/ changed after it was built. */
export function checkBuild(): void {
  const main = join(ROOT, 'dist/daemon/main.js');
  if (!existsSync(main)) throw new Error('dist/ is missing: run npm run build first');
  const stale = newerThan(join(ROOT, 'src'), statSync(main).mtimeMs);
  if (stale.length > 0) console.warn(`warning: ${stale.length} file(s) under src/ changed since the last build (e.g. ${stale[0]}): run npm run build`);
}


export interface BenchVolume {
  pid: number;
  uri: string;
  socketPath: string;
}

export class BenchCairnd {
  private constructor(
    private readonly child: ChildProcess,
    readonly dataDir: string,
    /** The volume's backing file in the file pool. */
    readonly file: string,
    private readonly client: ApiClient,
    private readonly volume: string,
    private readonly stderr: string[],
  ) {}

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /**
   * Starts cairnd (`nodeArgs` go before the script) and creates volume `name` of
   * `sizeBytes`. Call exportVolume() once its file is filled.
   */
  static async start(name: string, sizeBytes: number, nodeArgs: string[] = []): Promise<BenchCairnd> {
    checkBuild();
    const dataDir = mkdtempSync('/tmp/cairn-bench-');
    const apiSocket = join(dataDir, 'api.sock');
    const port = await freePort();
    const child = spawn(process.execPath, [...nodeArgs, join(ROOT, 'bin/cairnd.js'), '--data-dir', dataDir, '--api-socket', apiSocket,
      // The bench fills the device file itself and measures the plain file: the direct layout keeps it in pool/devices.
      '--file-pool-layout', 'direct', '--http-listen', `127.0.0.1:${port}`, '--log-format', 'json', '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const stderr: string[] = [];
    child.stderr!.on('data', (d: Buffer) => stderr.push(d.toString()));
    const client = new ApiClient(apiSocket);
    const d = new BenchCairnd(child, dataDir, '', client, name, stderr);
    try {
      await d.waitReady(port);
      const vol = await client.createVolume(name, sizeBytes);
      const deviceId = vol.replicas[0]?.deviceId;
      if (!deviceId) throw new Error(`volume ${name} has no replica`);
      const file = join(dataDir, 'pool', 'devices', `${deviceId}.img`);
      if (statSync(file).size !== sizeBytes) throw new Error(`${file} is not ${sizeBytes} bytes`);
      return new BenchCairnd(child, dataDir, file, client, name, stderr);
    } catch (err) {
      await d.stop();
      throw err;
    }
  }

  async exportVolume(): Promise<BenchVolume> {
    const exp = await this.client.exportVolume(this.volume);
    return { pid: this.pid, uri: exp.uri, socketPath: exp.socketPath };
  }

  /** SIGTERM (a graceful stop, which also writes a --cpu-prof profile), then removes its data. */
  async stop(): Promise<void> {
    this.client.close();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  private async waitReady(port: number): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`cairnd exited during start-up: ${this.stderr.join('').slice(-1000)}`);
      if (await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false)) return;
      if (Date.now() > deadline) throw new Error(`cairnd did not become ready: ${this.stderr.join('').slice(-1000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
