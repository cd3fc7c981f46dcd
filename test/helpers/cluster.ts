/**
 * A real multi-node Cairn cluster on loopback for integration tests: one etcd (Debian's
 * etcd-server, temp dir), a throwaway PKI with one peer certificate per node, and N cairnd
 * processes (test/helpers/daemon.ts), each with its own data dir, a fixed peer port (a
 * restarted node keeps its address) and JSON debug logs.
 *
 * Timing defaults suit tests (a faulted replica is noticed in 2 s, a dead node in 3 s, the
 * repair loop never replaces replicas by itself, rebuilds are not rate-limited); each can
 * be overridden per cluster with `flags`, per node with `nodeArgs`, and per launch with
 * `restart(i, { args })`.
 *
 * On a failed test pass `{ failed: true }` to `destroy`: it prints the tail of every
 * daemon's log and keeps the logs in a directory it names.
 */
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ClusterStatusMessage, ExportMessage, NodeMessage, VerifyMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { Daemon, freePort, mergeArgs, type CtlResult, type LogEvent } from './daemon.js';
import { EtcdProcess } from './etcd.js';
import { makeTestPki, type TestPki } from './tls.js';
import { NbdBlockClient, parseNbdUnixUri, VerifiedWriter, type NbdBlockClientOptions, type VerifiedWriterOptions } from './verified-writer.js';

export interface ClusterOptions {
  nodes: number;
  /** Mutual TLS between peers (default), or plaintext with --peer-insecure. */
  tls?: true | 'insecure';
  /** Node i gets --zone zones[i % zones.length]. */
  zones?: string[];
  /** Replace the timing defaults (or add any flag with a value), e.g. { '--rebuild-rate': '16MiB' }. */
  flags?: Record<string, string>;
  /** More flags for every node (after everything else: a flag here replaces the same one above). */
  extraArgs?: string[];
  /** More flags for node i (last, so they win). */
  nodeArgs?: (i: number) => string[];
  /** The --pool-dir of node i (e.g. a small mounted filesystem); default <data-dir>/pool. */
  poolDir?: (i: number) => string | undefined;
}

/** Test-friendly defaults, each overridable through `flags`. */
export const CLUSTER_TEST_DEFAULTS: Readonly<Record<string, string>> = {
  '--replica-timeout-ms': '2000',
  '--node-ttl-ms': '3000',
  '--repair-wait-ms': '600000',
  '--rebuild-rate': '0',
};

export type Health = 'healthy' | 'degraded' | 'faulted';

export interface VerifyOutcome {
  exitCode: number;
  /** Parsed `-o json` output; undefined when cairnctl printed none (e.g. it failed outright). */
  result: VerifyMessage | undefined;
  stderr: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `observe` until `until` holds for what it returned, and returns that value. An
 * error thrown by `observe` counts as an observation (a node may be briefly unreachable).
 * On timeout it throws, naming `what` and the last value or error observed.
 */
export async function waitFor<T>(observe: () => Promise<T> | T, until: (value: T) => boolean, what: string, timeoutMs = 30_000, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: string = 'nothing observed yet';
  for (;;) {
    try {
      const value = await observe();
      if (until(value)) return value;
      last = JSON.stringify(value);
    } catch (err) {
      last = `error: ${err instanceof Error ? err.message : String(err)}`;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last observed: ${last.slice(0, 4000)}`);
    await sleep(intervalMs);
  }
}

export class Cluster {
  readonly name = `it-${Math.random().toString(36).slice(2, 8)}`;
  private readonly daemons: Daemon[] = [];
  private readonly peerPorts: number[] = [];
  private readonly opened: { close(): Promise<void> }[] = [];

  private constructor(readonly etcd: EtcdProcess, readonly pki: TestPki | undefined, readonly opts: ClusterOptions) {}

  static async start(opts: ClusterOptions): Promise<Cluster> {
    if (opts.nodes < 1) throw new Error('a cluster needs at least one node');
    const etcd = await EtcdProcess.start();
    let pki: TestPki | undefined;
    let cluster: Cluster | undefined;
    try {
      pki = opts.tls === 'insecure' ? undefined : await makeTestPki();
      cluster = new Cluster(etcd, pki, opts);
      for (let i = 0; i < opts.nodes; i++) cluster.peerPorts.push(await freePort());
      const args = await Promise.all(Array.from({ length: opts.nodes }, (_, i) => cluster!.argsFor(i)));
      const started = await Promise.allSettled(args.map(async (a, i) => {
        const dataDir = mkdtempSync('/tmp/cairn-it-');
        return Daemon.start({ dataDir, extraArgs: a.map((x) => x.replace('<data-dir>', dataDir)) }).catch((err: unknown) => {
          rmSync(dataDir, { recursive: true, force: true });
          throw new Error(`node-${i} did not start: ${err instanceof Error ? err.message : String(err)}`);
        });
      }));
      for (const s of started) if (s.status === 'fulfilled') cluster.daemons.push(s.value);
      const failed = started.find((s) => s.status === 'rejected');
      if (failed) throw failed.reason;
      return cluster;
    } catch (err) {
      if (cluster) await cluster.destroy();
      else {
        await etcd.stop();
        pki?.cleanup();
      }
      throw err;
    }
  }

  /** The flags of node i ('<data-dir>' stands for its data dir, filled in at start). */
  private async argsFor(i: number): Promise<string[]> {
    const port = this.peerPorts[i]!;
    const a = ['--node-name', `node-${i}`, '--cluster-name', this.name, '--etcd-endpoints', this.etcd.endpoint,
      '--peer-listen', `127.0.0.1:${port}`, '--peer-address', `127.0.0.1:${port}`, '--data-listen', '127.0.0.1:0'];
    if (this.pki) {
      const tls = await this.pki.node(`node-${i}`);
      a.push('--peer-tls-ca', tls.caFile, '--peer-tls-cert', tls.certFile, '--peer-tls-key', tls.keyFile);
    } else {
      a.push('--peer-insecure');
    }
    if (this.opts.zones?.length) a.push('--zone', this.opts.zones[i % this.opts.zones.length]!);
    a.push('--pool-dir', this.opts.poolDir?.(i) ?? join('<data-dir>', 'pool'));
    for (const [flag, value] of Object.entries({ ...CLUSTER_TEST_DEFAULTS, ...this.opts.flags })) a.push(flag, value);
    return mergeAll(a, this.opts.extraArgs ?? [], this.opts.nodeArgs?.(i) ?? []);
  }

  get size(): number {
    return this.daemons.length;
  }

  node(i: number): Daemon {
    const d = this.daemons[i];
    if (!d) throw new Error(`no node ${i} (the cluster has ${this.daemons.length})`);
    return d;
  }

  nodeName(i: number): string {
    return `node-${i}`;
  }

  peerAddress(i: number): string {
    return `127.0.0.1:${this.peerPorts[i]}`;
  }

  /** The port node i's replica data channel bound (it picks a free one at each start). */
  dataPort(i: number): number {
    const e = this.node(i).events().filter((l) => l.msg === 'replica data channel listening' && typeof l.port === 'number').at(-1);
    if (!e) throw new Error(`node-${i} logged no data channel port`);
    return e.port as number;
  }

  /** The first node that is running and not paused (to ask about the cluster). */
  liveNode(): number {
    const i = this.daemons.findIndex((d) => d.running && !d.paused);
    if (i < 0) throw new Error('no node is running');
    return i;
  }

  ctl(i: number, args: string[]): Promise<CtlResult> {
    return this.node(i).ctl(args);
  }

  ctlJson<T>(i: number, args: string[]): Promise<T> {
    return this.node(i).ctlJson<T>(args);
  }

  /* ---------------------------------------------------------------- processes */

  /** kill -9 of node i. */
  crash(i: number): Promise<void> {
    return this.node(i).crash();
  }

  /** Starts node i again (stopping it gracefully first if it runs); `args` for this launch only. */
  restart(i: number, opts: { args?: string[] } = {}): Promise<void> {
    return this.node(i).restart(opts);
  }

  /** SIGSTOP of node i: its sockets stay open, it answers nothing, its node lease runs out. */
  pause(i: number): void {
    this.node(i).pause();
  }

  resume(i: number): void {
    this.node(i).resume();
  }

  /** Kills etcd (its data stays); calls to it fail until startEtcd. */
  stopEtcd(): Promise<void> {
    return this.etcd.kill();
  }

  /** Starts etcd again on the same data dir and ports. */
  startEtcd(): Promise<void> {
    return this.etcd.restart();
  }

  /* ---------------------------------------------------------------- cairnctl */

  createVolume(name: string, size: string, replicas: number, via = 0, more: string[] = []): Promise<VolumeMessage> {
    return this.ctlJson<VolumeMessage>(via, ['volume', 'create', name, '--size', size, '--replicas', String(replicas), ...more]);
  }

  /** `volume inspect` (the API's Volume message), asked of `via` or the first live node. */
  volume(name: string, via?: number): Promise<VolumeMessage> {
    return this.ctlJson<VolumeMessage>(via ?? this.liveNode(), ['volume', 'inspect', name]);
  }

  /** `volume export` on node i. */
  exportVolume(i: number, name: string, opts: { takeover?: boolean; force?: boolean } = {}): Promise<ExportMessage> {
    return this.ctlJson<ExportMessage>(i, ['volume', 'export', name, ...(opts.takeover ? ['--takeover'] : []), ...(opts.force ? ['--force'] : [])]);
  }

  /** `volume verify -o json`: the exit code (0 when the in-sync replicas agree, 1 when not) and the report. */
  async verify(name: string, via?: number): Promise<VerifyOutcome> {
    const r = await this.ctl(via ?? this.liveNode(), ['-o', 'json', 'volume', 'verify', name]);
    let result: VerifyMessage | undefined;
    try {
      result = r.stdout.trim() ? (JSON.parse(r.stdout) as VerifyMessage) : undefined;
    } catch {
      result = undefined;
    }
    return { exitCode: r.exitCode, result, stderr: r.stderr };
  }

  nodes(via?: number): Promise<NodeMessage[]> {
    return this.ctlJson<NodeMessage[]>(via ?? this.liveNode(), ['node', 'list']);
  }

  status(via?: number): Promise<ClusterStatusMessage> {
    return this.ctlJson<ClusterStatusMessage>(via ?? this.liveNode(), ['cluster', 'status']);
  }

  /* ---------------------------------------------------------------- waiting */

  waitFor<T>(observe: () => Promise<T> | T, until: (value: T) => boolean, what: string, timeoutMs = 30_000): Promise<T> {
    return waitFor(observe, until, what, timeoutMs);
  }

  waitHealth(name: string, health: Health, timeoutMs = 60_000, via?: number): Promise<VolumeMessage> {
    return waitFor(() => this.volume(name, via), (v) => v.health === health, `volume ${name} ${health}`, timeoutMs);
  }

  /** Until `node list` shows node i up (or down). */
  waitNodeUp(i: number, up: boolean, timeoutMs = 30_000, via?: number): Promise<NodeMessage[]> {
    const name = this.nodeName(i);
    return waitFor(() => this.nodes(via), (ns) => ns.some((n) => n.name === name && n.up === up), `${name} ${up ? 'up' : 'down'} in node list`, timeoutMs);
  }

  /** The replica of a volume on node i, as `volume inspect` shows it. */
  static replicaOn(v: VolumeMessage, i: number): VolumeMessage['replicas'][number] | undefined {
    return v.replicas.find((r) => r.nodeName === `node-${i}`);
  }

  /** Log events of node i (those after `since`, a node(i).logMark()). */
  events(i: number, since = 0): LogEvent[] {
    return this.node(i).events(since);
  }

  waitForEvent(i: number, match: Partial<LogEvent> | ((e: LogEvent) => boolean), opts: { since?: number; timeoutMs?: number } = {}): Promise<LogEvent> {
    return this.node(i).waitForEvent(match, opts);
  }

  /* ---------------------------------------------------------------- NBD */

  /** An NBD connection to the export of `name` on node i (closed by destroy if still open). */
  async nbd(i: number, name: string, opts: NbdBlockClientOptions = {}): Promise<NbdBlockClient> {
    const v = await this.volume(name, i);
    if (!v.export) throw new Error(`volume ${name} is not exported on node-${i}`);
    const { socketPath, exportName } = parseNbdUnixUri(v.export.uri);
    const client = await NbdBlockClient.connect(socketPath, exportName, opts);
    this.opened.push(client);
    return client;
  }

  /** A verified writer over a new NBD connection to node i's export of `name`. */
  async writer(i: number, name: string, opts: VerifiedWriterOptions & NbdBlockClientOptions = {}): Promise<VerifiedWriter> {
    return new VerifiedWriter(await this.nbd(i, name, opts), opts);
  }

  /* ---------------------------------------------------------------- teardown */

  /**
   * Closes NBD connections, kills every node and etcd, removes all temp dirs. With
   * `failed`, first prints each daemon's log tail and copies the logs to a kept directory.
   */
  async destroy(opts: { failed?: boolean } = {}): Promise<void> {
    await Promise.all(this.opened.map((c) => c.close().catch(() => undefined)));
    for (const d of this.daemons) d.resume();
    if (opts.failed) this.keepLogs();
    await Promise.all(this.daemons.map((d) => d.destroy()));
    await this.etcd.stop();
    this.pki?.cleanup();
  }

  private keepLogs(): void {
    const dir = mkdtempSync(`/tmp/cairn-logs-${this.name}-`);
    for (const [i, d] of this.daemons.entries()) {
      if (existsSync(d.logFile)) copyFileSync(d.logFile, join(dir, `node-${i}.log`));
      console.error(`----- node-${i} (${d.logFile}), last lines -----\n${d.logTail(40)}`);
    }
    console.error(`cluster ${this.name}: daemon logs kept in ${dir}`);
  }
}

/** Each later list replaces flags of the earlier ones (see mergeArgs in daemon.ts). */
function mergeAll(...lists: string[][]): string[] {
  return lists.reduce((acc, next) => mergeArgs(acc, next), [] as string[]);
}
