/**
 * cairnctl against the real API service (src/daemon/api-service.ts) over a unix socket,
 * with a scripted VolumeApi behind it instead of a daemon: the proto, the handlers'
 * mapping, the client and the commands' output and exit codes, end to end.
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NodeMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { Code, STORE_UNAVAILABLE, StorageError } from '../../src/common/errors.js';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { NodeStatus } from '../../src/cluster/node-registry.js';
import type {
  ClusterStatusView, CreateVolumeOptions, ExportOptions, VerifyResult, VolumeApi, VolumeChanges, VolumePage, VolumeView,
} from '../../src/cluster/volume-views.js';
import { apiHandlers, apiServiceDefinition } from '../../src/daemon/api-service.js';
import type { ExportInfo } from '../../src/engine/export-manager.js';
import type { KernelAttacher } from '../../src/engine/kernel-attach.js';
import type { StagedVolumeRecord } from '../../src/store/staged-volume-record.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

function view(name: string, replicasWanted: number, options: CreateVolumeOptions = {}): VolumeView {
  const nodes = ['node-a', 'node-b', 'node-c'].slice(0, options.replicas ?? replicasWanted);
  return {
    id: `vol-${name}`, name, sizeBytes: 10 * GiB, state: 'ready', health: 'healthy', epoch: 3, createdAt: '2025-03-01T00:00:00.000Z',
    replicasWanted: options.replicas ?? replicasWanted, engineNode: undefined, allocatedBytes: 0, export: undefined, published: [],
    replicas: nodes.map((n, i) => ({ id: `rep-${i}`, nodeName: n, deviceId: `dev-${i}`, state: 'in-sync' as const, since: '2025-03-01T00:00:00.000Z', allocatedBytes: 0, dirtyBytes: 0 })),
  };
}

const DEGRADED: VolumeView = {
  ...view('pgdata', 3), health: 'degraded', engineNode: 'node-a', allocatedBytes: 2 * MiB,
  replicas: [
    { id: 'rep-0', nodeName: 'node-a', deviceId: 'dev-0', state: 'in-sync', since: '2025-03-01T00:00:00.000Z', allocatedBytes: 2 * MiB, dirtyBytes: 0 },
    {
      id: 'rep-1', nodeName: 'node-b', deviceId: 'dev-1', state: 'rebuilding', since: '2025-03-01T00:01:00.000Z', reason: 'node-b restarted',
      allocatedBytes: MiB, dirtyBytes: 0, rebuild: { doneBytes: GiB, totalBytes: 4 * GiB, bytesPerSecond: 100.6 * MiB },
    },
    { id: 'rep-2', nodeName: 'node-c', deviceId: 'dev-2', state: 'faulted', since: '2025-03-01T00:02:00.000Z', reason: 'write timed out', allocatedBytes: 0, dirtyBytes: 64 * MiB },
  ],
};

const NODES: NodeStatus[] = [
  { nodeId: 'n-a' as NodeId, name: 'node-a', peerAddress: '10.0.0.1:9471', zone: 'z1', labels: { disk: 'nvme' }, capacity: { totalBytes: 100 * GiB, freeBytes: 60 * GiB }, version: '0.1.0', heartbeatAt: '2025-03-01T00:00:00.000Z', up: true },
  { nodeId: 'n-b' as NodeId, name: 'node-b', peerAddress: '10.0.0.2:9471', labels: {}, capacity: { totalBytes: 50 * GiB, freeBytes: 50 * GiB }, version: '0.1.0', heartbeatAt: '2025-03-01T00:00:00.000Z', up: false },
];

/** A VolumeApi that answers from fixtures and records what it was asked. */
class ScriptedVolumes implements VolumeApi {
  creates: [string, number, CreateVolumeOptions | undefined][] = [];
  exports: [string, ExportOptions | undefined][] = [];
  verifyResult: VerifyResult = { volume: 'pgdata', replicas: ['rep-0', 'rep-1'], regionBytes: MiB, regionsCompared: 10240, mismatches: [] };

  async create(name: string, sizeBytes: number, options?: CreateVolumeOptions): Promise<VolumeView> {
    this.creates.push([name, sizeBytes, options]);
    if ((options?.replicas ?? 0) > 3) throw new StorageError(Code.INVALID_ARGUMENT, 'replicas must be 1-3');
    return view(name, 3, options);
  }
  async delete(): Promise<void> {}
  expands: [string, number][] = [];
  async expand(name: string, sizeBytes: number): Promise<VolumeView> {
    this.expands.push([name, sizeBytes]);
    if (name !== 'pgdata') throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`);
    return { ...DEGRADED, sizeBytes: Math.max(DEGRADED.sizeBytes, sizeBytes) };
  }
  modifies: [string, VolumeChanges][] = [];
  async modify(name: string, changes: VolumeChanges): Promise<VolumeView> {
    this.modifies.push([name, changes]);
    if (name !== 'pgdata') throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`);
    if ((changes.replicas ?? 0) > 3) throw new StorageError(Code.INVALID_ARGUMENT, 'replicas must be 1 to 3, got 4');
    return { ...DEGRADED, replicasWanted: changes.replicas ?? DEGRADED.replicasWanted };
  }
  async export(name: string, options?: ExportOptions): Promise<ExportInfo> {
    this.exports.push([name, options]);
    if (!options?.takeover) throw new StorageError(Code.FAILED_PRECONDITION, `volume "${name}" is running on node-b: use --takeover to fail it over`);
    return { name, socketPath: `/run/cairn/${name}.sock`, uri: `nbd+unix:///${name}?socket=/run/cairn/${name}.sock`, connectionCount: 0 };
  }
  async unexport(): Promise<void> {}
  async get(name: string): Promise<VolumeView> {
    if (name !== 'pgdata') throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`);
    return DEGRADED;
  }
  /** When set, list() throws it. */
  listError: StorageError | undefined;
  async list(): Promise<VolumeView[]> {
    if (this.listError) throw this.listError;
    return [DEGRADED, view('small', 1)];
  }
  async verify(name: string): Promise<VerifyResult> { return { ...this.verifyResult, volume: name }; }
  async capacity() { return { totalBytes: 100 * GiB, usedBytes: 2 * MiB, freeBytes: 60 * GiB, provisionedBytes: 20 * GiB }; }
  async clusterStatus(): Promise<ClusterStatusView> {
    return { cluster: 'prod', store: 'etcd', nodeName: 'node-a', repairLeader: undefined, nodes: { total: 2, up: 1 }, volumes: { total: 2, healthy: 1, degraded: 1, faulted: 0 } };
  }
  async nodes(): Promise<NodeStatus[]> { return NODES; }
  async publish(): Promise<void> {}
  async unpublish(): Promise<void> {}
  async listPage(): Promise<VolumePage> { return { volumes: [] }; }
  async placeableBytes(): Promise<number> { return 0; }
}

interface Fixture { volumes: ScriptedVolumes; ctl: (args: string[]) => Promise<{ stdout: string; stderr: string; exitCode: number }> }

/** pgdata staged on node-a, as the stager records it. */
const STAGED_PGDATA: StagedVolumeRecord = {
  volume: 'pgdata', volumeId: 'vol-pgdata' as StagedVolumeRecord['volumeId'], stagingPath: '/var/lib/kubelet/staging/pgdata', accessType: 'mount',
  fsType: 'ext4', mountFlags: [], readonly: false, devicePath: '/dev/nbd0', attachMethod: 'nbd', attachState: {}, state: 'staged',
  updatedAt: '2025-03-01T00:03:00.000Z',
};

async function serve(t: import('ava').ExecutionContext, options: { staged?: (volume: string) => StagedVolumeRecord | undefined } = {}): Promise<Fixture> {
  const dir = mkdtempSync('/tmp/cairn-cli-');
  const socket = join(dir, 'api.sock');
  const volumes = new ScriptedVolumes();
  const server = new grpc.Server();
  server.addService(apiServiceDefinition(), apiHandlers({
    volumes, nodeName: 'node-a', poolKind: 'file', poolPath: '/pool', startedAt: Date.now(), connectionCount: () => 0,
    attacher: {} as KernelAttacher, log: silentLogger(), ...options,
  }));
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  t.teardown(() => {
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'cairnctl', ...process.argv.slice(1)]);`;
  const ctl = async (args: string[]) => {
    const r = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--api-socket', socket, ...args], { reject: false });
    return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 };
  };
  return { volumes, ctl };
}

test('volume expand takes a human size, prints the new one, and keeps the daemon\'s error code', async (t) => {
  const { volumes, ctl } = await serve(t);
  const r = await ctl(['volume', 'expand', 'pgdata', '20GiB']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'volume pgdata is 20 GiB; clients that connect from now on see the new size');
  const json = await ctl(['-o', 'json', 'volume', 'expand', 'pgdata', '30GiB']);
  t.is((JSON.parse(json.stdout) as VolumeMessage).sizeBytes, 30 * GiB);
  t.deepEqual(volumes.expands, [['pgdata', 20 * GiB], ['pgdata', 30 * GiB]]);
  const missing = await ctl(['volume', 'expand', 'nope', '1GiB']);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /volume "nope" not found \(NOT_FOUND\)/);
});

test('volume create passes replicas and the preferred node; unset means the cluster default', async (t) => {
  const { volumes, ctl } = await serve(t);
  const r = await ctl(['volume', 'create', 'db', '--size', '10GiB', '--replicas', '2', '--prefer-node', 'node-b']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'volume db created (10 GiB, 2 replica(s) on node-a, node-b)');
  const plain = await ctl(['-o', 'json', 'volume', 'create', 'logs', '--size', '1GiB']);
  t.is(plain.exitCode, 0, plain.stderr);
  t.is((JSON.parse(plain.stdout) as VolumeMessage).replicasWanted, 3);
  t.deepEqual(volumes.creates, [['db', 10 * GiB, { replicas: 2, preferredNode: 'node-b' }], ['logs', GiB, {}]]);

  const bad = await ctl(['volume', 'create', 'x', '--size', '1GiB', '--replicas', 'two']);
  t.is(bad.exitCode, 1);
  t.regex(bad.stderr, /--replicas "two": write a whole number from 1 to 3 \(INVALID_ARGUMENT\)/);
  const many = await ctl(['volume', 'create', 'x', '--size', '1GiB', '--replicas', '5']);
  t.regex(many.stderr, /replicas must be 1-3 \(INVALID_ARGUMENT\)/, 'the daemon decides the range');
});

test('volume modify passes the replica count and prints what is not yet in sync; errors keep their codes', async (t) => {
  const { volumes, ctl } = await serve(t);
  const r = await ctl(['volume', 'modify', 'pgdata', '--replicas', '2']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'volume pgdata now wants 2 replica(s): 3 listed, 2 not yet in sync (see cairnctl volume inspect pgdata)');
  const json = await ctl(['-o', 'json', 'volume', 'modify', 'pgdata', '--replicas', '3']);
  t.is((JSON.parse(json.stdout) as VolumeMessage).replicasWanted, 3);
  t.deepEqual(volumes.modifies, [['pgdata', { replicas: 2 }], ['pgdata', { replicas: 3 }]]);

  const missing = await ctl(['volume', 'modify', 'nope', '--replicas', '2']);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /volume "nope" not found \(NOT_FOUND\)/);
  t.regex((await ctl(['volume', 'modify', 'pgdata', '--replicas', '4'])).stderr, /replicas must be 1 to 3, got 4 \(INVALID_ARGUMENT\)/);
  const noCount = await ctl(['volume', 'modify', 'pgdata']);
  t.is(noCount.exitCode, 1, 'the count is required');
  t.is(volumes.modifies.length, 4, 'a command without --replicas reaches no daemon');
});

test('volume inspect carries the new replica fields through the API', async (t) => {
  const { ctl } = await serve(t);
  const r = await ctl(['-o', 'json', 'volume', 'inspect', 'pgdata']);
  t.is(r.exitCode, 0, r.stderr);
  const v = JSON.parse(r.stdout) as VolumeMessage;
  t.is(v.replicasWanted, 3);
  t.is(v.engineNode, 'node-a');
  t.deepEqual(v.replicas.map((x) => [x.id, x.state, x.reason, x.dirtyBytes]), [
    ['rep-0', 'in-sync', '', 0], ['rep-1', 'rebuilding', 'node-b restarted', 0], ['rep-2', 'faulted', 'write timed out', 64 * MiB],
  ]);
  t.is(v.replicas[0]!.rebuild, null);
  t.deepEqual(v.replicas[1]!.rebuild, { doneBytes: GiB, totalBytes: 4 * GiB, bytesPerSecond: Math.round(100.6 * MiB) });
  t.is(v.replicas[1]!.since, '2025-03-01T00:01:00.000Z');

  const human = await ctl(['volume', 'inspect', 'pgdata']);
  t.regex(human.stdout, /^Replicas:\s+1\/3 in sync$/m);
  t.regex(human.stdout, /^rep-1\s+node-b\s+rebuilding\s+\S+ ago\s+1 MiB\s+\[#####---------------\] 25\.0% 1 GiB\/4 GiB 100\.6 MiB\/s ETA 31s$/m);
  t.regex(human.stdout, /^rep-2 on node-c is faulted: write timed out; 64 MiB to resync$/m);

  const missing = await ctl(['volume', 'inspect', 'nope']);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /volume "nope" not found \(NOT_FOUND\)/);
});

test('volume modify and expand show this node\'s staging of the volume, as inspect does', async (t) => {
  const { ctl } = await serve(t, { staged: (volume) => (volume === 'pgdata' ? STAGED_PGDATA : undefined) });
  const staging = { nodeName: 'node-a', state: 'staged', stagingPath: STAGED_PGDATA.stagingPath, devicePath: '/dev/nbd0', attachMethod: 'nbd', accessType: 'mount', fsType: 'ext4', readonly: false, updatedAt: STAGED_PGDATA.updatedAt };
  for (const args of [['volume', 'inspect', 'pgdata'], ['volume', 'modify', 'pgdata', '--replicas', '2'], ['volume', 'expand', 'pgdata', '20GiB']]) {
    const r = await ctl(['-o', 'json', ...args]);
    t.is(r.exitCode, 0, r.stderr);
    t.deepEqual((JSON.parse(r.stdout) as VolumeMessage).staging, staging, args.join(' '));
  }
});

test('volume list shows in-sync/total replicas', async (t) => {
  const { ctl } = await serve(t);
  const r = await ctl(['volume', 'list']);
  // EXPORT, PUBLISHED and STAGED: none here.
  t.regex(r.stdout, /^pgdata\s+10 GiB\s+2 MiB\s+ready\s+degraded\s+1\/3\s+-\s+-\s+-$/m);
  t.regex(r.stdout, /^small\s+10 GiB\s+0 B\s+ready\s+healthy\s+1\/1\s+-\s+-\s+-$/m);
});

test('volume verify exits 0 when the replicas agree and 1 when they differ', async (t) => {
  const { volumes, ctl } = await serve(t);
  const ok = await ctl(['volume', 'verify', 'pgdata']);
  t.is(ok.exitCode, 0, ok.stderr);
  t.is(ok.stdout, 'replicas of pgdata agree: 10240 regions of 1 MiB compared');

  volumes.verifyResult = { ...volumes.verifyResult, mismatches: [{ offset: 5 * MiB, lengthBytes: 2 * MiB, replicas: ['rep-1'] }] };
  const bad = await ctl(['volume', 'verify', 'pgdata']);
  t.is(bad.exitCode, 1);
  t.regex(bad.stdout, /^5242880\s+5 MiB\s+2 MiB\s+rep-1$/m);
  t.regex(bad.stderr, /replicas of pgdata differ in 2 regions \(DATA_LOSS\)/);
  const json = await ctl(['-o', 'json', 'volume', 'verify', 'pgdata']);
  t.is(json.exitCode, 1);
  t.deepEqual(JSON.parse(json.stdout), { volume: 'pgdata', replicas: ['rep-0', 'rep-1'], regionBytes: MiB, regionsCompared: 10240, mismatches: [{ offset: 5 * MiB, lengthBytes: 2 * MiB, replicas: ['rep-1'] }] });
});

test('volume export passes takeover and force; force implies takeover', async (t) => {
  const { volumes, ctl } = await serve(t);
  const refused = await ctl(['volume', 'export', 'pgdata']);
  t.is(refused.exitCode, 1);
  t.regex(refused.stderr, /running on node-b: use --takeover.*\(FAILED_PRECONDITION\)/);
  const taken = await ctl(['volume', 'export', 'pgdata', '--takeover']);
  t.is(taken.exitCode, 0, taken.stderr);
  t.is(taken.stdout, 'nbd+unix:///pgdata?socket=/run/cairn/pgdata.sock');
  t.is((await ctl(['volume', 'export', 'pgdata', '--force'])).exitCode, 0);
  t.deepEqual(volumes.exports, [['pgdata', {}], ['pgdata', { takeover: true }], ['pgdata', { takeover: true, force: true }]]);
});

test('cluster status, node list and status', async (t) => {
  const { ctl } = await serve(t);
  const cluster = await ctl(['cluster', 'status']);
  t.is(cluster.exitCode, 0, cluster.stderr);
  t.regex(cluster.stdout, /^Nodes:\s+1\/2 up$/m);
  t.regex(cluster.stdout, /^Repair leader:\s+none$/m);
  t.regex(cluster.stdout, /^Volumes:\s+2 \(1 healthy, 1 degraded, 0 faulted\)$/m);
  t.deepEqual(JSON.parse((await ctl(['-o', 'json', 'cluster', 'status'])).stdout), {
    cluster: 'prod', store: 'etcd', nodeName: 'node-a', repairLeader: '', nodes: { total: 2, up: 1 }, volumes: { total: 2, healthy: 1, degraded: 1, faulted: 0 },
  });

  const nodes = await ctl(['node', 'list']);
  t.regex(nodes.stdout, /^node-a\s+10\.0\.0\.1:9471\s+z1\s+up\s+60 GiB\s+100 GiB\s+0\.1\.0$/m);
  t.regex(nodes.stdout, /^node-b\s+10\.0\.0\.2:9471\s+-\s+down\s+50 GiB\s+50 GiB\s+0\.1\.0$/m);
  const json = JSON.parse((await ctl(['-o', 'json', 'node', 'list'])).stdout) as NodeMessage[];
  t.deepEqual(json[0], {
    name: 'node-a', nodeId: 'n-a', peerAddress: '10.0.0.1:9471', zone: 'z1', labels: { disk: 'nvme' }, up: true,
    totalBytes: 100 * GiB, freeBytes: 60 * GiB, version: '0.1.0', heartbeatAt: '2025-03-01T00:00:00.000Z',
  });
  t.is(json[1]!.zone, '');

  const status = await ctl(['-o', 'json', 'status']);
  t.is(status.exitCode, 0, status.stderr);
  t.like(JSON.parse(status.stdout), { nodeName: 'node-a', volumeCount: 2, exportedCount: 0, pool: { backend: 'file', provisionedBytes: 20 * GiB } });
});

test('an UNAVAILABLE sent by cairnd is its error, not "cannot reach cairnd"; the store reason gets the etcd hint', async (t) => {
  const { volumes, ctl } = await serve(t);
  volumes.listError = new StorageError(Code.UNAVAILABLE, 'volume "db" is still being created; try again (connect ECONNREFUSED)');
  const busy = await ctl(['volume', 'list']);
  t.is(busy.exitCode, 1);
  t.is(busy.stderr, 'cairnctl: volume "db" is still being created; try again (connect ECONNREFUSED) (UNAVAILABLE)');

  volumes.listError = new StorageError(Code.UNAVAILABLE, 'list volumes: etcd is unavailable: No connection established', { details: { reason: STORE_UNAVAILABLE } });
  const store = await ctl(['volume', 'list']);
  t.is(store.exitCode, 1);
  t.regex(store.stderr, /^cairnctl: the cluster store \(etcd\) is unavailable \(UNAVAILABLE\)$/m);
  t.regex(store.stderr, /^ {2}cairnd said: list volumes: etcd is unavailable: No connection established$/m);
  t.regex(store.stderr, /^hint: cairnd is running but cannot reach etcd/m);
  t.notRegex(store.stderr, /cannot reach cairnd/);
});

test('no daemon on the socket: "cannot reach cairnd"', async (t) => {
  const dir = mkdtempSync('/tmp/cairn-cli-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'api.sock');
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'cairnctl', ...process.argv.slice(1)]);`;
  const r = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--api-socket', socket, 'volume', 'list'], { reject: false });
  t.is(r.exitCode, 1);
  t.is(r.stderr, `cairnctl: cannot reach cairnd at ${socket}: is it running? (no socket there; set --api-socket or CAIRN_API_SOCKET) (UNAVAILABLE)`);
});
