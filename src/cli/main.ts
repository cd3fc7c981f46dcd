/**
 * cairnctl: the operators' CLI. It talks to cairnd only through its gRPC API. Output is a
 * human table, or JSON with `-o json`.
 */
import { Command, Option } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Code, isStoreUnavailable, StorageError } from '../common/errors.js';
import { formatBytes, parseSize } from '../common/units.js';
import { ApiClient } from './api-client.js';
import { csiInfo, type CsiInfo } from './csi-info.js';
import { clusterStatusText, keyValues, mismatchedRegions, nodeRows, percent, verifyText, volumeDetail, volumeRows } from './format.js';

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
    .action((name: string, opts: { size: string; replicas?: string; preferNode?: string }) => withClient(g(), async (c) => {
      const replicas = parseReplicas(opts.replicas);
      const v = await c.createVolume(name, parseSize(opts.size), { ...(replicas ? { replicas } : {}), ...(opts.preferNode ? { preferredNode: opts.preferNode } : {}) });
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
