/**
 * cairnctl: the operators' CLI. It talks to cairnd only through its gRPC API. Output is a
 * human table, or JSON with `-o json`.
 */
import { Command, Option } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Code, StorageError } from '../common/errors.js';
import { formatBytes, parseSize } from '../common/units.js';
import { ApiClient, type VolumeMessage } from './api-client.js';
import { keyValues, percent, table } from './format.js';

type Output = 'table' | 'json';
interface GlobalOptions { apiSocket?: string; output: Output }

/** --api-socket, else CAIRN_API_SOCKET, else ./.cairn (the quick start's), else the DaemonSet default. */
function defaultSocket(): string {
  if (process.env.CAIRN_API_SOCKET) return process.env.CAIRN_API_SOCKET;
  const local = resolve('.cairn/cairnd.sock');
  return existsSync(local) ? local : '/var/lib/cairn/cairnd.sock';
}

function print(output: Output, json: unknown, human: () => string): void {
  console.log(output === 'json' ? JSON.stringify(json, null, 2) : human());
}

function volumeRows(volumes: VolumeMessage[]): string {
  return table(['NAME', 'SIZE', 'ALLOCATED', 'STATE', 'HEALTH', 'REPLICAS', 'EXPORT'], volumes.map((v) => [
    v.name, formatBytes(v.sizeBytes), formatBytes(v.allocatedBytes), v.state, v.health, String(v.replicas.length), v.export ? v.export.uri : '-',
  ]));
}

function volumeDetail(v: VolumeMessage): string {
  const head = keyValues([
    ['Name', v.name], ['ID', v.id], ['Size', `${formatBytes(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ['Allocated', `${formatBytes(v.allocatedBytes)} (${percent(v.allocatedBytes, v.sizeBytes)})`],
    ['State', v.state], ['Health', v.health], ['Epoch', String(v.epoch)], ['Created', v.createdAt],
    ['Export', v.export ? `${v.export.uri} (${v.export.connectionCount} client(s))` : 'not exported'],
  ]);
  const replicas = table(['REPLICA', 'NODE', 'STATE', 'ALLOCATED'], v.replicas.map((r) => [r.id, r.nodeName, r.state, formatBytes(r.allocatedBytes)]));
  return `${head}\n\n${replicas}`;
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
    .action((name: string, opts: { size: string }) => withClient(g(), async (c) => {
      const v = await c.createVolume(name, parseSize(opts.size));
      print(g().output, v, () => `volume ${v.name} created (${formatBytes(v.sizeBytes)})`);
    }));
  volume.command('list').alias('ls').description('list volumes').action(() => withClient(g(), async (c) => {
    const vs = await c.listVolumes();
    print(g().output, vs, () => (vs.length ? volumeRows(vs) : 'no volumes'));
  }));
  volume.command('inspect <name>').description('show a volume with its replicas').action((name: string) => withClient(g(), async (c) => {
    const v = await c.getVolume(name);
    print(g().output, v, () => volumeDetail(v));
  }));
  volume.command('delete <name>').alias('rm').description('delete a volume and its data').option('--force', 'delete even while NBD clients are connected')
    .action((name: string, opts: { force?: boolean }) => withClient(g(), async (c) => {
      await c.deleteVolume(name, Boolean(opts.force));
      print(g().output, { deleted: name }, () => `volume ${name} deleted`);
    }));
  volume.command('export <name>').description('serve the volume over NBD and print its URI').action((name: string) => withClient(g(), async (c) => {
    const e = await c.exportVolume(name);
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
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    const code = err instanceof StorageError ? Code[err.code] : 'ERROR';
    console.error(`cairnctl: ${err instanceof Error ? err.message : String(err)} (${code})`);
    process.exitCode = 1;
  }
}
