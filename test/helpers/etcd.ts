/**
 * A real etcd (Debian's etcd-server) for tests: loopback only, a temporary data dir,
 * random free ports. `pause`/`resume` freeze it with SIGSTOP/SIGCONT, `kill`/`restart`
 * take it away and bring it back on the same data dir and ports.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { has } from './run.js';

export const ETCD_BINARY = process.env.CAIRN_TEST_ETCD ?? 'etcd';

/** Why etcd tests must skip on this machine, or undefined when etcd is there. */
export async function etcdMissingReason(): Promise<string | undefined> {
  if (await has(ETCD_BINARY)) return undefined;
  return `no "${ETCD_BINARY}" binary: install Debian's etcd-server (scripts/install-deps.sh does)`;
}


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class EtcdProcess {
  readonly endpoint: string;
  private child: ChildProcess | undefined;
  private stderrTail = '';

  private constructor(
    private readonly dataDir: string,
    private readonly clientPort: number,
    private readonly peerPort: number,
  ) {
    this.endpoint = `http://127.0.0.1:${clientPort}`;
  }

  static async start(): Promise<EtcdProcess> {
    const dataDir = mkdtempSync(join(tmpdir(), 'cairn-etcd-'));
    const etcd = new EtcdProcess(dataDir, await freePort(), await freePort());
    try {
      await etcd.launch();
    } catch (err) {
      await etcd.stop();
      throw err;
    }
    return etcd;
  }

  private async launch(): Promise<void> {
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const child = spawn(ETCD_BINARY, [
      '--name', 'test', '--data-dir', join(this.dataDir, 'data'),
      '--listen-client-urls', this.endpoint, '--advertise-client-urls', this.endpoint,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `test=${peer}`, '--initial-cluster-state', 'new',
      '--log-level', 'error', '--logger', 'zap',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    // A test worker that dies must not leave etcd behind.
    const reap = (): void => {
      child.kill('SIGKILL');
    };
    process.once('exit', reap);
    child.once('exit', () => process.removeListener('exit', reap));
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString()).slice(-2000);
    });
    await this.waitHealthy(child);
  }

  private async waitHealthy(child: ChildProcess): Promise<void> {
    for (let attempt = 0; attempt < 200; attempt++) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`etcd exited (${child.exitCode ?? child.signalCode}) while starting: ${this.stderrTail}`);
      }
      try {
        const res = await fetch(`${this.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
        const body = (await res.json()) as { health?: string };
        if (body.health === 'true') return;
      } catch {
        // not up yet
      }
      await sleep(100);
    }
    throw new Error(`etcd did not become healthy: ${this.stderrTail}`);
  }

  /** SIGSTOP: the process holds its sockets but answers nothing. */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** SIGKILL and wait for the exit: connections are refused until `restart`. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exited;
  }

  /** Starts etcd again on the same data dir and ports. */
  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
