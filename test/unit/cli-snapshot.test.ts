/**
 * cairnctl snapshot create/list/inspect/delete/restore and volume clone against the real
 * API service (src/daemon/api-service.ts) over a unix socket, with a scripted volume API
 * and snapshot service behind it: the proto, the handlers' mapping, the client, the tables,
 * `-o json`, the restore's fill progress on stderr and the exit codes, end to end.
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SnapshotMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { CreateSnapshotInput, SnapshotRuleRecord, SnapshotService, SnapshotView } from '../../src/cluster/snapshot-types.js';
import type { CreateVolumeOptions, VolumeApi, VolumeView } from '../../src/cluster/volume-views.js';
import { apiHandlers, apiServiceDefinition } from '../../src/daemon/api-service.js';
import type { RuleSnapshots } from '../../src/snapshot/rule-snapshots.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
const T0 = '2025-03-01T00:00:00.000Z';

function snap(name: string, volume: string, extra: Partial<SnapshotView> = {}): SnapshotView {
  return {
    id: `snap-${name}` as SnapshotId, name, sourceVolumeId: `vol-${volume}` as VolumeId, sourceVolumeName: volume, sizeBytes: 10 * GiB,
    createdAt: T0, state: 'ready', readyToUse: true, copiesWanted: 3, pauseUs: 4200,
    copies: ['a', 'b', 'c'].map((n, i) => ({ nodeId: `node-${n}` as NodeId, replicaId: `rep-${i}` as ReplicaId, nodeUp: n !== 'c' })),
    ...extra,
  };
}

/** A snapshot service from fixtures: pgdata's snapshots, idempotent by name, NOT_FOUND for other volumes. */
class ScriptedSnapshots implements SnapshotService {
  readonly snaps = new Map<string, SnapshotView>([['before-upgrade', snap('before-upgrade', 'pgdata')], ['nightly', snap('nightly', 'logs', { readyToUse: false, state: 'creating', pauseUs: 0 })]]);
  creates: CreateSnapshotInput[] = [];
  deletes: string[] = [];
  async create(input: CreateSnapshotInput): Promise<SnapshotView> {
    this.creates.push(input);
    if (input.volume !== 'pgdata') throw new StorageError(Code.NOT_FOUND, `volume "${input.volume}" not found`);
    const found = this.snaps.get(input.name);
    if (found && found.sourceVolumeName !== input.volume) throw new StorageError(Code.ALREADY_EXISTS, `snapshot "${input.name}" exists for volume ${found.sourceVolumeName}: use another name`);
    const s = found ?? snap(input.name, input.volume, { pauseUs: 850 });
    this.snaps.set(s.name, s);
    return s;
  }
  async get(nameOrId: string): Promise<SnapshotView> {
    const s = [...this.snaps.values()].find((x) => x.name === nameOrId || x.id === nameOrId);
    if (!s) throw new StorageError(Code.NOT_FOUND, `snapshot "${nameOrId}" not found`);
    return s;
  }
  async list(filter?: { volume?: string }): Promise<SnapshotView[]> {
    return [...this.snaps.values()].filter((s) => !filter?.volume || s.sourceVolumeName === filter.volume);
  }
  async delete(nameOrId: string): Promise<void> {
    this.deletes.push(nameOrId);
    this.snaps.delete(nameOrId);
  }
}

function volume(name: string, states: ('in-sync' | 'rebuilding')[], doneBytes = 0): VolumeView {
  const pending = states.some((s) => s !== 'in-sync');
  return {
    id: `vol-${name}`, name, sizeBytes: 10 * GiB, state: 'ready', health: pending ? 'degraded' : 'healthy', epoch: 1, createdAt: T0,
    replicasWanted: states.length, engineNode: undefined, allocatedBytes: 0, export: undefined, published: [],
    replicas: states.map((state, i) => ({
      id: `rep-${i}`, nodeName: `node-${'abc'[i]}`, deviceId: `dev-${i}`, state, since: T0, allocatedBytes: 0, dirtyBytes: 0,
      ...(state === 'rebuilding' ? { rebuild: { doneBytes, totalBytes: GiB, bytesPerSecond: 100 * MiB } } : {}),
    })),
  };
}

/** Only create and get matter here: a new volume fills over `fillPolls` GetVolume calls. */
class FillingVolumes {
  creates: [string, number, CreateVolumeOptions | undefined][] = [];
  polls = 0;
  constructor(private readonly fillPolls: number) {}
  async create(name: string, sizeBytes: number, options?: CreateVolumeOptions): Promise<VolumeView> {
    this.creates.push([name, sizeBytes, options]);
    if ((options as { source?: { snapshot?: string } } | undefined)?.source?.snapshot === 'nope') throw new StorageError(Code.NOT_FOUND, 'snapshot "nope" not found');
    return this.fillPolls === 0 ? volume(name, ['in-sync', 'in-sync']) : volume(name, ['in-sync', 'rebuilding'], 0);
  }
  async get(name: string): Promise<VolumeView> {
    this.polls += 1;
    if (this.polls >= this.fillPolls) return volume(name, ['in-sync', 'in-sync']);
    return volume(name, ['in-sync', 'rebuilding'], Math.round((GiB * this.polls) / this.fillPolls));
  }
}

interface Fixture {
  snapshots: ScriptedSnapshots;
  volumes: FillingVolumes;
  ctl: (args: string[]) => Promise<{ stdout: string; stderr: string; exitCode: number }>;
  /** The cairnctl process itself, to signal it. */
  spawn: (args: string[]) => ReturnType<typeof execa>;
}

const RULE: SnapshotRuleRecord = {
  name: 'postgres', ok: false, durationMs: 412,
  actions: [
    { action: 'checkpoint', phase: 'pre', kind: 'command', step: 'run', target: 'node-a', status: 'succeeded', exitCode: 0, durationMs: 380 },
    { action: 'pre[1]', phase: 'pre', kind: 'fsfreeze', step: 'freeze', target: '/var/lib/kubelet/staging/pgdata', status: 'succeeded', exitCode: null, durationMs: 4 },
    { action: 'pre[1]', phase: 'post', kind: 'fsfreeze', step: 'thaw', target: '/var/lib/kubelet/staging/pgdata', status: 'succeeded', exitCode: null, durationMs: 1 },
    {
      action: 'notify', phase: 'post', kind: 'command', step: 'run', target: 'node-a', status: 'failed', exitCode: 3, durationMs: 9,
      error: { code: 'FAILED_PRECONDITION', message: 'notify (curl hook) on node-a failed with exit code 3' }, outputTail: 'connection refused\n',
    },
  ],
};

/** Snapshots under a rule: records what it was asked, answers a snapshot carrying RULE. */
class ScriptedRuleSnapshots {
  creates: unknown[] = [];
  async create(input: { name: string; volume: string; rule: string }): Promise<SnapshotView> {
    this.creates.push(input);
    return snap(input.name, input.volume, { rule: RULE });
  }
}

async function serve(t: import('ava').ExecutionContext, options: { fillPolls?: number; noSnapshots?: boolean; ruleSnapshots?: ScriptedRuleSnapshots } = {}): Promise<Fixture> {
  const dir = mkdtempSync('/tmp/cairn-cli-');
  const socket = join(dir, 'api.sock');
  const snapshots = new ScriptedSnapshots();
  const volumes = new FillingVolumes(options.fillPolls ?? 0);
  const server = new grpc.Server();
  server.addService(apiServiceDefinition(), apiHandlers({
    volumes: volumes as unknown as VolumeApi, nodeName: 'node-a', poolKind: 'file', poolPath: '/pool', startedAt: Date.now(), connectionCount: () => 0,
    attacher: undefined, log: silentLogger(), ...(options.noSnapshots ? {} : { snapshots }),
    ...(options.ruleSnapshots ? { ruleSnapshots: options.ruleSnapshots as unknown as RuleSnapshots } : {}),
  }));
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  t.teardown(() => {
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'cairnctl', ...process.argv.slice(1)]);`;
  const spawn = (args: string[]) => execa('node', ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--api-socket', socket, ...args], { reject: false });
  const ctl = async (args: string[]) => {
    const r = await spawn(args);
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  };
  return { snapshots, volumes, ctl, spawn };
}

test('snapshot create prints the snapshot, -o json carries every field; a reused name and an unknown volume keep their codes', async (t) => {
  const { snapshots, ctl } = await serve(t);
  const r = await ctl(['snapshot', 'create', 'pre-migration', '--volume', 'pgdata']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'snapshot pre-migration of pgdata ready (10 GiB, copies 2/3 (+1 on a down node), writes paused 850us)');
  const json = await ctl(['-o', 'json', 'snapshot', 'create', 'pre-migration', '--volume', 'pgdata']);
  const s = JSON.parse(json.stdout) as SnapshotMessage;
  t.like(s, { id: 'snap-pre-migration', name: 'pre-migration', sourceVolumeId: 'vol-pgdata', sourceVolumeName: 'pgdata', sizeBytes: 10 * GiB, createdAt: T0, state: 'ready', readyToUse: true, copiesWanted: 3, pauseUs: 850 });
  t.deepEqual(s.copies[2], { nodeId: 'node-c', replicaId: 'rep-2', nodeUp: false });
  t.deepEqual(snapshots.creates, [{ name: 'pre-migration', volume: 'pgdata' }, { name: 'pre-migration', volume: 'pgdata' }]);

  const reused = await ctl(['snapshot', 'create', 'nightly', '--volume', 'pgdata']);
  t.is(reused.exitCode, 1);
  t.is(reused.stderr, 'cairnctl: snapshot "nightly" exists for volume logs: use another name (ALREADY_EXISTS)');
  const unknown = await ctl(['snapshot', 'create', 'x', '--volume', 'nope']);
  t.is(unknown.exitCode, 1);
  t.regex(unknown.stderr, /volume "nope" not found \(NOT_FOUND\)/);
  t.is((await ctl(['snapshot', 'create', 'x'])).exitCode, 1, '--volume is required');
});

test('snapshot list is a table with copies present/wanted, readiness and the pause; --volume filters; inspect and delete', async (t) => {
  const { snapshots, ctl } = await serve(t);
  const r = await ctl(['snapshot', 'list']);
  t.is(r.exitCode, 0, r.stderr);
  const lines = r.stdout.split('\n');
  t.regex(lines[0]!, /^NAME\s+VOLUME\s+SIZE\s+READY\s+COPIES\s+CREATED\s+PAUSE$/);
  t.regex(lines[1]!, /^before-upgrade\s+pgdata\s+10 GiB\s+yes\s+2\/3 \(\+1 on a down node\)\s+\S+ ago\s+4\.2ms$/);
  t.regex(lines[2]!, /^nightly\s+logs\s+10 GiB\s+creating\s+2\/3 .*\s+-$/);
  const only = await ctl(['-o', 'json', 'snapshot', 'list', '--volume', 'logs']);
  t.deepEqual((JSON.parse(only.stdout) as SnapshotMessage[]).map((s) => s.name), ['nightly']);
  t.is((await ctl(['snapshot', 'list', '--volume', 'other'])).stdout, 'no snapshots of other');

  const inspect = await ctl(['snapshot', 'inspect', 'snap-before-upgrade']);
  t.is(inspect.exitCode, 0, inspect.stderr);
  t.regex(inspect.stdout, /^ID:\s+snap-before-upgrade$/m);
  t.regex(inspect.stdout, /^Source volume:\s+pgdata \(vol-pgdata\)$/m);
  t.regex(inspect.stdout, /^node-c\s+rep-2\s+down$/m);
  const missing = await ctl(['snapshot', 'inspect', 'gone']);
  t.is(missing.exitCode, 1);
  t.is(missing.stderr, 'cairnctl: snapshot "gone" not found (NOT_FOUND)');

  const del = await ctl(['snapshot', 'delete', 'before-upgrade']);
  t.is(del.stdout, 'snapshot before-upgrade deleted');
  t.deepEqual(snapshots.deletes, ['before-upgrade']);
  t.deepEqual((JSON.parse((await ctl(['-o', 'json', 'snapshot', 'list'])).stdout) as SnapshotMessage[]).map((s) => s.name), ['nightly']);
});

test('snapshot create --rule passes the rule; the reply, inspect and -o json show the rule\'s outcome step by step; a daemon without rule support is UNIMPLEMENTED', async (t) => {
  const ruleSnapshots = new ScriptedRuleSnapshots();
  const { snapshots, ctl } = await serve(t, { ruleSnapshots });
  const r = await ctl(['snapshot', 'create', 'pg-snap', '--volume', 'pgdata', '--rule', 'postgres']);
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(ruleSnapshots.creates, [{ name: 'pg-snap', volume: 'pgdata', rule: 'postgres' }]);
  t.deepEqual(snapshots.creates, [], 'the plain snapshot path was not taken');
  const lines = r.stdout.split('\n');
  t.is(lines[1], 'rule postgres FAILED in 412 ms (failed: notify run)');
  t.regex(r.stdout, /^ACTION\s+PHASE\s+KIND\s+STEP\s+TARGET\s+STATUS\s+EXIT\s+DURATION$/m);
  t.regex(r.stdout, /^checkpoint\s+pre\s+command\s+run\s+node-a\s+succeeded\s+0\s+380 ms$/m);
  t.regex(r.stdout, /^pre\[1\]\s+pre\s+fsfreeze\s+freeze\s+\S+\s+succeeded\s+-\s+4 ms$/m);
  t.regex(r.stdout, /^notify run: FAILED_PRECONDITION: notify \(curl hook\) on node-a failed with exit code 3\n {2}output: connection refused$/m);
  const json = JSON.parse((await ctl(['-o', 'json', 'snapshot', 'create', 'pg-snap', '--volume', 'pgdata', '--rule', 'postgres'])).stdout) as SnapshotMessage;
  t.like(json.rule, { name: 'postgres', ok: false, durationMs: 412 });
  t.deepEqual(json.rule!.actions[1], {
    action: 'pre[1]', phase: 'pre', kind: 'fsfreeze', step: 'freeze', target: '/var/lib/kubelet/staging/pgdata', status: 'succeeded', exited: false, exitCode: 0,
    durationMs: 4, errorCode: '', errorMessage: '', outputTail: '',
  });
  t.like(json.rule!.actions[3], { exited: true, exitCode: 3, errorCode: 'FAILED_PRECONDITION', outputTail: 'connection refused\n' });

  snapshots.snaps.set('with-rule', snap('with-rule', 'pgdata', { rule: { ...RULE, ok: true, actions: RULE.actions.slice(0, 3) } }));
  const inspect = await ctl(['snapshot', 'inspect', 'with-rule']);
  t.regex(inspect.stdout, /^rule postgres ok in 412 ms$/m);
  t.regex(inspect.stdout, /^pre\[1\]\s+post\s+fsfreeze\s+thaw\s+/m);
  t.is((JSON.parse((await ctl(['-o', 'json', 'snapshot', 'inspect', 'before-upgrade'])).stdout) as SnapshotMessage).rule, null, 'no rule: null');
  t.notRegex((await ctl(['snapshot', 'inspect', 'before-upgrade'])).stdout, /rule/);

  const { ctl: plain } = await serve(t);
  const refused = await plain(['snapshot', 'create', 'x', '--volume', 'pgdata', '--rule', 'postgres']);
  t.is(refused.exitCode, 1);
  t.regex(refused.stderr, /does not take snapshots under a rule.*\(UNIMPLEMENTED\)$/);
});

test('a daemon without the snapshot service answers UNIMPLEMENTED', async (t) => {
  const { ctl } = await serve(t, { noSnapshots: true });
  const r = await ctl(['snapshot', 'list']);
  t.is(r.exitCode, 1);
  t.regex(r.stderr, /does not serve snapshots.*\(UNIMPLEMENTED\)$/);
});

test('snapshot restore passes the source, size and placement, then follows the fill on stderr until every replica is in sync', async (t) => {
  const { volumes, ctl } = await serve(t, { fillPolls: 3 });
  const r = await ctl(['snapshot', 'restore', 'before-upgrade', 'pg-restored', '--size', '20GiB', '--replicas', '2', '--prefer-node', 'node-b', '--poll-ms', '20']);
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(volumes.creates, [['pg-restored', 20 * GiB, { replicas: 2, preferredNode: 'node-b', source: { snapshot: 'before-upgrade' } }]]);
  t.is(r.stdout, [
    'volume pg-restored restored from snapshot before-upgrade (10 GiB, 2 replica(s) on node-a, node-b)',
    'volume pg-restored is ready: 2 replica(s) in sync',
  ].join('\n'));
  // stderr is a pipe here: plain lines, not a redrawn bar; the first shows the fill starting, the last the end.
  const progress = r.stderr.split('\n');
  t.regex(progress[0]!, /^pg-restored: filling 1 replica\(s\) \[-{20}\] 0\.0% 0 B\/1 GiB 100 MiB\/s ETA \d+s$/);
  t.is(progress.at(-1), 'pg-restored: every replica in sync');
  t.is(volumes.polls, 3);
});

test('--on-node reaches the daemon as required nodes (comma-separated, blanks dropped)', async (t) => {
  const { volumes, ctl } = await serve(t, { fillPolls: 1 });
  const r = await ctl(['snapshot', 'restore', 'before-upgrade', 'pg-c', '--replicas', '1', '--on-node', 'node-c, node-d,', '--no-wait']);
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(volumes.creates, [['pg-c', 0, { replicas: 1, requisiteNodes: ['node-c', 'node-d'], source: { snapshot: 'before-upgrade' } }]]);
});

test('volume clone: --no-wait returns at once; -o json prints the volume; a missing source keeps its code', async (t) => {
  const { volumes, ctl } = await serve(t, { fillPolls: 50 });
  const r = await ctl(['volume', 'clone', 'pgdata', 'pg-test', '--no-wait']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'volume pg-test cloned from volume pgdata (10 GiB, 2 replica(s) on node-a, node-b); its replicas are filling: see cairnctl volume inspect pg-test');
  t.is(r.stderr, '');
  t.deepEqual(volumes.creates, [['pg-test', 0, { source: { volume: 'pgdata' } }]], 'no --size: 0, the source\'s size');
  t.is(volumes.polls, 0);
  const json = await ctl(['-o', 'json', 'volume', 'clone', 'pgdata', 'pg-test2', '--no-wait']);
  t.is((JSON.parse(json.stdout) as VolumeMessage).name, 'pg-test2');
  const missing = await ctl(['snapshot', 'restore', 'nope', 'x']);
  t.is(missing.exitCode, 1);
  t.is(missing.stderr, 'cairnctl: snapshot "nope" not found (NOT_FOUND)');
});

test('Ctrl-C while a restore fills stops the waiting only: exit 130 and how to follow the fill', async (t) => {
  const { volumes, spawn } = await serve(t, { fillPolls: 1_000_000 });
  const child = spawn(['snapshot', 'restore', 'before-upgrade', 'pg-r', '--poll-ms', '20']);
  // Interrupt once the fill is being followed (the first GetVolume arrived).
  while (volumes.polls === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  child.kill('SIGINT');
  const r = await child;
  t.is(r.exitCode, 130, String(r.stderr));
  t.regex(String(r.stderr), /stopped waiting; volume pg-r keeps filling: see cairnctl volume inspect pg-r$/);
  t.is(volumes.creates.length, 1);
});

test('CreateVolume takes at most one content source: both is INVALID_ARGUMENT naming them', async (t) => {
  const { contentSource } = await import('../../src/daemon/api-service.js');
  t.deepEqual(contentSource({ sourceSnapshot: 's1', sourceVolume: '' }), { snapshot: 's1' });
  t.deepEqual(contentSource({ sourceSnapshot: '', sourceVolume: 'v1' }), { volume: 'v1' });
  t.is(contentSource({ sourceSnapshot: '', sourceVolume: '' }), undefined);
  const err = t.throws(() => contentSource({ sourceSnapshot: 's1', sourceVolume: 'v1' }));
  t.is((err as StorageError).code, Code.INVALID_ARGUMENT);
  t.regex(err!.message, /both source_snapshot "s1" and source_volume "v1"/);
});
