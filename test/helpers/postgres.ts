/**
 * A real PostgreSQL server (Debian's `postgresql` package) for integration tests: initdb
 * as the `postgres` user into a directory (a Cairn volume's filesystem), a server on a
 * private unix socket directory and port (no TCP), psql and pgbench against it, and a stop
 * that never leaves a server behind.
 */
import { execa, type ResultPromise } from 'execa';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './ports.js';

/** The newest installed PostgreSQL's bin directory, or undefined. */
export function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root).filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
  return versions[0] ? join(root, versions[0], 'bin') : undefined;
}

/** Why PostgreSQL tests cannot run here; undefined when they can. */
export async function postgresMissing(): Promise<string | undefined> {
  if (!postgresBinDir()) return 'needs PostgreSQL (initdb, pg_ctl, psql, pgbench, pg_amcheck): apt-get install postgresql (scripts/install-deps.sh does)';
  const user = await execa('id', ['-u', 'postgres'], { reject: false });
  if (user.exitCode !== 0) return 'needs the postgres user (the postgresql package creates it): apt-get install postgresql';
  return undefined;
}

function ids(): { uid: number; gid: number } {
  const uid = Number(execaSyncText('id', ['-u', 'postgres']));
  const gid = Number(execaSyncText('id', ['-g', 'postgres']));
  return { uid, gid };
}

function execaSyncText(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8' }).trim();
}

export class PgServer {
  readonly bin: string;
  readonly socketDir: string;
  private started = false;

  private constructor(readonly dataDir: string, readonly port: number) {
    this.bin = postgresBinDir()!;
    this.socketDir = mkdtempSync('/tmp/cairn-pgsock-');
  }

  /** A server for `dataDir` (created by initdb when `init`, else an existing data directory, e.g. a restored one). */
  static async open(dataDir: string, opts: { init: boolean }): Promise<PgServer> {
    const s = new PgServer(dataDir, await freePort());
    const { uid, gid } = ids();
    chownSync(s.socketDir, uid, gid);
    if (opts.init) {
      mkdirSync(dataDir, { recursive: true });
      chownSync(dataDir, uid, gid);
      chmodSync(dataDir, 0o700);
      await s.asPostgres('initdb', ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
    }
    return s;
  }

  private async asPostgres(tool: string, args: string[]): Promise<string> {
    const r = await execa('runuser', ['-u', 'postgres', '--', join(this.bin, tool), ...args], { reject: false, cwd: '/' });
    if (r.exitCode !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${r.exitCode}:\n${r.stdout}\n${r.stderr}`);
    return r.stdout;
  }

  /** The connection arguments of psql, pgbench and pg_amcheck. */
  get connArgs(): string[] {
    return ['-h', this.socketDir, '-p', String(this.port), '-U', 'postgres'];
  }

  /** Starts the server and waits until it accepts connections (after any crash recovery). */
  async start(): Promise<void> {
    const opts = `-p ${this.port} -k ${this.socketDir} -c listen_addresses='' -c fsync=on`;
    await this.asPostgres('pg_ctl', ['-D', this.dataDir, '-l', join(this.socketDir, 'server.log'), '-o', opts, '-w', '-t', '300', 'start']);
    this.started = true;
  }

  /** Stops the server (immediate: no checkpoint needed in a test); never throws. */
  async stop(): Promise<void> {
    if (!this.started) return;
    await execa('runuser', ['-u', 'postgres', '--', join(this.bin, 'pg_ctl'), '-D', this.dataDir, '-m', 'immediate', '-w', 'stop'], { reject: false, cwd: '/' });
    this.started = false;
  }

  /** Stops the server and removes its socket directory. */
  async close(): Promise<void> {
    await this.stop();
    rmSync(this.socketDir, { recursive: true, force: true });
  }

  /** Runs SQL statements, each as one -c (so in one session, in order); returns psql's unaligned output. */
  async psql(...statements: string[]): Promise<string> {
    const r = await execa(join(this.bin, 'psql'), [...this.connArgs, '-X', '-At', '-v', 'ON_ERROR_STOP=1', ...statements.flatMap((s) => ['-c', s]), 'postgres'], { reject: false });
    if (r.exitCode !== 0) throw new Error(`psql exited ${r.exitCode}: ${r.stderr}`);
    return r.stdout;
  }

  /** A pgbench run in the background (until killed). */
  pgbench(args: string[]): ResultPromise {
    return execa(join(this.bin, 'pgbench'), [...this.connArgs, ...args, 'postgres'], { reject: false });
  }

  async pgbenchInit(scale: number): Promise<void> {
    const r = await execa(join(this.bin, 'pgbench'), [...this.connArgs, '-i', '-s', String(scale), '-q', 'postgres'], { reject: false });
    if (r.exitCode !== 0) throw new Error(`pgbench -i exited ${r.exitCode}: ${r.stderr}`);
  }

  /** The server's log, for a failure message. */
  log(): string {
    const file = join(this.socketDir, 'server.log');
    return existsSync(file) ? execaSyncText('tail', ['-n', '40', file]) : '(no server log)';
  }
}
