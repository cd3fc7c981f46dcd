/**
 * cairnctl: the operators' CLI. It talks to cairnd only through its gRPC API. Output is a
 * human table, or JSON with `-o json`.
 */
import { Command, Option } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Code, isStoreUnavailable, StorageError } from '../common/errors.js';
import { formatBytes, parseSize } from '../common/units.js';
import { ApiClient, type CreateVolumeOptions, type VolumeMessage } from './api-client.js';
import { csiInfo, type CsiInfo } from './csi-info.js';
import { waitForFill } from './fill-wait.js';
import { addRuleCommands } from './rule-commands.js';
import { addSpecCommand } from './spec/command.js';
import { addGroupCommands } from './group-commands.js';
import {
  clusterStatusText, copiesText, fillProgress, formatPause, keyValues, mismatchedRegions, nodeRows, percent, ruleOutcomeLine, ruleOutcomeText, snapshotDetail,
  snapshotRows, verifyText, volumeDetail, volumeRows,
} from './format.js';

type Output = 'table' | 'json';
interface GlobalOptions { apiSocket?: string; output: Output }

/** --api-socket, else CAIRN_API_SOCKET, else ./.cairn (the quick start's), else the DaemonSet default. */
function defaultSocket(): string {
  if (process.env.CAIRN_API_SOCKET) return process.env.CAIRN_API_SOCKET;
  const local = resolve('.cairn/cairnd.sock');
  return existsSync(local) ? local : '/var/lib/cairn/cairnd.sock';
}

/** --csi-socket, else CAIRN_CSI_SOCKET, else ./.cairn's (the quick start's daemon), else the default data dir's. */
function defaultCsiSocket(): string {
  if (process.env.CAIRN_CSI_SOCKET) return process.env.CAIRN_CSI_SOCKET;
  const local = resolve('.cairn/csi.sock');
  return existsSync(local) ? local : '/var/lib/cairn/csi.sock';
}

function csiInfoText(i: CsiInfo): string {
  const node = i.node;
  const topology = node ? Object.entries(node.topology).map(([k, v]) => `${k}=${v}`).join(', ') : '';
  return keyValues([
    ['Socket', i.socket], ['Plugin', `${i.name} ${i.vendorVersion}`], ['Ready', i.ready ? 'yes' : 'no'],
    ['Plugin capabilities', i.pluginCapabilities.join(', ')],
    ['Controller', i.controllerCapabilities ? i.controllerCapabilities.join(', ') : 'not served'],
    ['Node', node ? `${node.nodeId}, max volumes ${node.maxVolumesPerNode || 'unlimited'}, topology ${topology || 'none'}` : 'not served'],
    ...(node ? [['Node capabilities', node.capabilities.join(', ')] as [string, string]] : []),
  ]);
}

function print(output: Output, json: unknown, human: () => string): void {
  console.log(output === 'json' ? JSON.stringify(json, null, 2) : human());
}

/** --replicas: a whole number ≥ 1 (the daemon checks the upper bound against the cluster). */
function parseReplicas(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = /^\d+$/.test(text.trim()) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new StorageError(Code.INVALID_ARGUMENT, `--replicas "${text}": write a whole number from 1 to 3`);
  return n;
}

async function withClient<T>(g: GlobalOptions, fn: (client: ApiClient) => Promise<T>): Promise<T> {
  const client = new ApiClient(g.apiSocket ?? defaultSocket());
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

interface PlaceOptions { replicas?: string; preferNode?: string; onNode?: string }
interface CopyOptions extends PlaceOptions { size?: string; wait: boolean; pollMs: string }

const ON_NODE_HELP = 'a replica must go on one of these nodes (comma-separated); with --replicas 1, exactly there';

/** --replicas, --prefer-node and --on-node as the API's create options. */
function placeOptions(opts: PlaceOptions): Pick<CreateVolumeOptions, 'replicas' | 'preferredNode' | 'requiredNodes'> {
  const replicas = parseReplicas(opts.replicas);
  const onNodes = (opts.onNode ?? '').split(',').map((n) => n.trim()).filter(Boolean);
  return { ...(replicas ? { replicas } : {}), ...(opts.preferNode ? { preferredNode: opts.preferNode } : {}), ...(onNodes.length ? { requiredNodes: onNodes } : {}) };
}

/** The options `snapshot restore` and `volume clone` share with `volume create`, and the wait. */
function copyCommand(cmd: Command): Command {
  return cmd.option('--size <size>', 'size, e.g. 20GiB [default: the source\'s; never smaller]')
    .option('--replicas <n>', 'replicas on distinct nodes, 1-3 [default: the cluster\'s --default-replicas]')
    .option('--prefer-node <node>', 'place a replica on this node when it qualifies (e.g. where the volume will be used)')
    .option('--on-node <nodes>', ON_NODE_HELP)
    .option('--no-wait', 'return once the volume exists, without waiting for its replicas to fill')
    .addOption(new Option('--poll-ms <ms>', 'how often to ask for progress while waiting').default('1000').hideHelp());
}

/** Ctrl-C while waiting: stop the wait (the fill goes on in the daemons). */
function interruptSignal(): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSigint = (): void => controller.abort();
  process.once('SIGINT', onSigint);
  return { signal: controller.signal, dispose: () => process.removeListener('SIGINT', onSigint) };
}

/**
 * Creates a volume from a snapshot or a volume, prints it, and unless --no-wait follows its
 * replicas' fill on stderr until every one is in sync. Interrupted, it says how to follow
 * the fill and exits 130; the new volume stays and keeps filling.
 */
async function createFrom(g: GlobalOptions, c: ApiClient, name: string, opts: CopyOptions, source: Pick<CreateVolumeOptions, 'sourceSnapshot' | 'sourceVolume'>, verb: string): Promise<void> {
  const pollMs = Number(opts.pollMs);
  const created = await c.createVolume(name, opts.size === undefined ? 0 : parseSize(opts.size), { ...placeOptions(opts), ...source });
  const from = source.sourceSnapshot ? `snapshot ${source.sourceSnapshot}` : `volume ${source.sourceVolume}`;
  const summary = (v: VolumeMessage): string => {
    const nodes = [...new Set(v.replicas.map((r) => r.nodeName))].join(', ');
    return `volume ${v.name} ${verb} from ${from} (${formatBytes(v.sizeBytes)}, ${v.replicas.length} replica(s) on ${nodes || 'no node'})`;
  };
  if (!opts.wait || !fillProgress(created)) {
    print(g.output, created, () => summary(created) + (fillProgress(created) ? `; its replicas are filling: see cairnctl volume inspect ${name}` : ''));
    return;
  }
  if (g.output === 'table') console.log(summary(created));
  const interrupt = interruptSignal();
  try {
    const r = await waitForFill(created, {
      get: () => c.getVolume(name), pollMs: Number.isFinite(pollMs) && pollMs > 0 ? pollMs : 1000, out: process.stderr, plainEveryMs: 10_000, signal: interrupt.signal,
    });
    if (!r.done) {
      console.error(`stopped waiting; volume ${name} keeps filling: see cairnctl volume inspect ${name}`);
      process.exitCode = 130;
    }
    if (r.done || g.output === 'json') print(g.output, r.volume, () => `volume ${name} is ready: ${r.volume.replicas.length} replica(s) in sync`);
  } finally {
    interrupt.dispose();
  }
}

function buildProgram(): Command {
  const program = new Command('cairnctl').description('Operate Cairn block storage')
    .option('--api-socket <path>', 'cairnd API socket [env CAIRN_API_SOCKET; default ./.cairn/cairnd.sock if present, else /var/lib/cairn/cairnd.sock]')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'));
  const g = (): GlobalOptions => program.opts<GlobalOptions>();

  program.command('status').description('node, pool and volume summary').action(() => withClient(g(), async (c) => {
    const s = await c.status();
    print(g().output, s, () => keyValues([
      ['Node', s.nodeName], ['Version', s.version], ['Uptime', `${s.uptimeSeconds} s`],
      ['Pool', `${s.pool.backend} at ${s.pool.path}`],
      ['Capacity', `${formatBytes(s.pool.freeBytes)} free of ${formatBytes(s.pool.totalBytes)}; volumes use ${formatBytes(s.pool.usedBytes)} (${percent(s.pool.usedBytes, s.pool.totalBytes)})`],
      ['Provisioned', `${formatBytes(s.pool.provisionedBytes)} (${percent(s.pool.provisionedBytes, s.pool.totalBytes)} of capacity)`],
      ['Volumes', `${s.volumeCount} (${s.exportedCount} exported, ${s.nbdConnectionCount} NBD connection(s))`],
    ]));
  }));

  const volume = program.command('volume').description('create, list, inspect, export and delete volumes');
  volume.command('create <name>').description('create a thin-provisioned volume').requiredOption('--size <size>', 'size, e.g. 10GiB, 512MiB')
    .option('--replicas <n>', 'replicas on distinct nodes, 1-3 [default: the cluster\'s --default-replicas]')
    .option('--prefer-node <node>', 'place a replica on this node when it qualifies (e.g. where the volume will be used)')
    .option('--on-node <nodes>', ON_NODE_HELP)
    .action((name: string, opts: PlaceOptions & { size: string }) => withClient(g(), async (c) => {
      const v = await c.createVolume(name, parseSize(opts.size), placeOptions(opts));
      const nodes = [...new Set(v.replicas.map((r) => r.nodeName))].join(', ');
      print(g().output, v, () => `volume ${v.name} created (${formatBytes(v.sizeBytes)}, ${v.replicas.length} replica(s) on ${nodes || 'no node'})`);
    }));
  volume.command('list').alias('ls').description('list volumes').action(() => withClient(g(), async (c) => {
    const vs = await c.listVolumes();
    print(g().output, vs, () => (vs.length ? volumeRows(vs) : 'no volumes'));
  }));
  volume.command('inspect <name>').description('show a volume with its replicas').action((name: string) => withClient(g(), async (c) => {
    const v = await c.getVolume(name);
    print(g().output, v, () => volumeDetail(v, Date.now()));
  }));
  volume.command('verify <name>').description('compare the in-sync replicas region by region; exits 1 when they differ').action((name: string) => withClient(g(), async (c) => {
    const r = await c.verifyVolume(name);
    print(g().output, r, () => verifyText(r));
    if (r.mismatches.length > 0) throw new StorageError(Code.DATA_LOSS, `replicas of ${r.volume} differ in ${mismatchedRegions(r)} regions`);
  }));
  volume.command('modify <name>').description('change a volume live: the replica count (new replicas are rebuilt while it serves)')
    .requiredOption('--replicas <n>', 'replicas on distinct nodes, 1-3')
    .action((name: string, opts: { replicas: string }) => withClient(g(), async (c) => {
      const v = await c.modifyVolume(name, { replicas: parseReplicas(opts.replicas)! });
      const rebuilding = v.replicas.filter((r) => r.state !== 'in-sync').length;
      print(g().output, v, () => `volume ${v.name} now wants ${v.replicasWanted} replica(s): ${v.replicas.length} listed, ${rebuilding} not yet in sync`
        + (rebuilding > 0 ? ` (see cairnctl volume inspect ${v.name})` : ''));
    }));
  volume.command('expand <name> <size>').description('grow a volume online to at least <size>, e.g. 20GiB (volumes never shrink)')
    .action((name: string, size: string) => withClient(g(), async (c) => {
      const v = await c.expandVolume(name, parseSize(size));
      print(g().output, v, () => `volume ${v.name} is ${formatBytes(v.sizeBytes)}; clients that connect from now on see the new size`);
    }));
  volume.command('delete <name>').alias('rm').description('delete a volume and its data').option('--force', 'delete even while NBD clients are connected')
    .action((name: string, opts: { force?: boolean }) => withClient(g(), async (c) => {
      await c.deleteVolume(name, Boolean(opts.force));
      print(g().output, { deleted: name }, () => `volume ${name} deleted`);
    }));
  volume.command('export <name>').description('run the volume on this node, serve it over NBD and print its URI')
    .option('--takeover', 'failover: start the volume here although another node\'s engine holds it (refused while that node is up)')
    .option('--force', 'with --takeover (implied): take the volume even while the holding node is up; its engine is fenced')
    .action((name: string, opts: { takeover?: boolean; force?: boolean }) => withClient(g(), async (c) => {
      const e = await c.exportVolume(name, { takeover: Boolean(opts.takeover || opts.force), force: Boolean(opts.force) });
      print(g().output, e, () => e.uri);
    }));
  volume.command('unexport <name>').description('stop serving the volume over NBD').action((name: string) => withClient(g(), async (c) => {
    await c.unexportVolume(name);
    print(g().output, { unexported: name }, () => `volume ${name} unexported`);
  }));
  volume.command('attach <name>').description('attach the volume to a kernel block device on this node and print its path').action((name: string) => withClient(g(), async (c) => {
    const a = await c.attachVolume(name);
    print(g().output, a, () => a.devicePath);
  }));
  volume.command('detach <name>').description('detach the volume\'s kernel block device (unmount it first)').action((name: string) => withClient(g(), async (c) => {
    await c.detachVolume(name);
    print(g().output, { detached: name }, () => `volume ${name} detached`);
  }));

  copyCommand(volume.command('clone <source-volume> <new-volume>').description('create a volume holding another volume\'s data (taken at a write barrier)'))
    .action((source: string, name: string, opts: CopyOptions) => withClient(g(), (c) => createFrom(g(), c, name, opts, { sourceVolume: source }, 'cloned')));

  const snapshot = program.command('snapshot').description('take, list, inspect, restore and delete crash-consistent snapshots');
  snapshot.command('create <name>').description('snapshot a volume at a write barrier, with a copy on every in-sync replica')
    .requiredOption('--volume <volume>', 'the volume to snapshot (name or id)')
    .option('--rule <rule>', 'run this snapshot rule around it (application-consistent; run it on the node where the volume is staged)')
    .action((name: string, opts: { volume: string; rule?: string }) => withClient(g(), async (c) => {
      const s = await c.createSnapshot(name, opts.volume, opts.rule);
      print(g().output, s, () => [
        `snapshot ${s.name} of ${s.sourceVolumeName || opts.volume} ${s.readyToUse ? 'ready' : s.state} (${formatBytes(s.sizeBytes)}, copies ${copiesText(s)}, writes paused ${formatPause(s.pauseUs)})`,
        ...(s.rule ? [s.rule.ok ? ruleOutcomeLine(s.rule) : ruleOutcomeText(s.rule)] : []),
      ].join('\n'));
    }));
  snapshot.command('list').alias('ls').description('list snapshots').option('--volume <volume>', 'only the snapshots of this volume')
    .action((opts: { volume?: string }) => withClient(g(), async (c) => {
      const ss = await c.listSnapshots(opts.volume);
      print(g().output, ss, () => (ss.length ? snapshotRows(ss, Date.now()) : `no snapshots${opts.volume ? ` of ${opts.volume}` : ''}`));
    }));
  snapshot.command('inspect <name>').description('show a snapshot with its copies').action((name: string) => withClient(g(), async (c) => {
    const s = await c.getSnapshot(name);
    print(g().output, s, () => snapshotDetail(s, Date.now()));
  }));
  snapshot.command('delete <name>').alias('rm').description('delete a snapshot and its copies').action((name: string) => withClient(g(), async (c) => {
    await c.deleteSnapshot(name);
    print(g().output, { deleted: name }, () => `snapshot ${name} deleted`);
  }));
  copyCommand(snapshot.command('restore <snapshot> <new-volume>').description('create a volume holding a snapshot\'s data'))
    .action((source: string, name: string, opts: CopyOptions) => withClient(g(), (c) => createFrom(g(), c, name, opts, { sourceSnapshot: source }, 'restored')));

  addGroupCommands(snapshot, { withClient: (fn) => withClient(g(), fn), print: (json, human) => print(g().output, json, human) });

  addRuleCommands(program, { withClient: (fn) => withClient(g(), fn), print: (json, human) => print(g().output, json, human) });

  addSpecCommand(program, (text) => process.stdout.write(text));

  const cluster = program.command('cluster').description('the cluster as a whole');
  cluster.command('status').description('store, nodes up, repair leader and volume health').action(() => withClient(g(), async (c) => {
    const s = await c.clusterStatus();
    print(g().output, s, () => clusterStatusText(s));
  }));
  const node = program.command('node').description('the nodes of the cluster');
  node.command('list').alias('ls').description('list nodes, up and down').action(() => withClient(g(), async (c) => {
    const ns = await c.listNodes();
    print(g().output, ns, () => (ns.length ? nodeRows(ns) : 'no nodes registered'));
  }));
  const csi = program.command('csi').description('the CSI socket that kubelet and the sidecars use');
  csi.command('info').description('ask the CSI socket what it serves (Identity, Probe, capabilities, NodeGetInfo); exits 1 unless ready')
    .option('--csi-socket <path>', 'cairnd CSI socket [env CAIRN_CSI_SOCKET; default ./.cairn/csi.sock if present, else /var/lib/cairn/csi.sock]')
    .action(async (opts: { csiSocket?: string }) => {
      const info = await csiInfo(opts.csiSocket ?? defaultCsiSocket());
      print(g().output, info, () => csiInfoText(info));
      if (!info.ready) throw new StorageError(Code.UNAVAILABLE, `the CSI plugin at ${info.socket} is not ready yet (Probe): see cairnd's log`);
    });
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    console.error(errorText(err));
    process.exitCode = 1;
  }
}

/** What cairnctl prints for a failed command: decided on the code and the structured reason. */
export function errorText(err: unknown): string {
  const code = err instanceof StorageError ? Code[err.code] : 'ERROR';
  const message = err instanceof Error ? err.message : String(err);
  if (isStoreUnavailable(err)) {
    return [
      `cairnctl: the cluster store (etcd) is unavailable (${code})`,
      `  cairnd said: ${message}`,
      'hint: cairnd is running but cannot reach etcd: check that etcd is up and reachable from this node at the URLs of cairnd\'s --etcd-endpoints, then retry',
    ].join('\n');
  }
  return `cairnctl: ${message} (${code})`;
}
