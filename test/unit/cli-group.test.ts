/**
 * cairnctl snapshot group create/list/inspect/delete against the real API service
 * (src/daemon/api-service.ts, group-api.ts) over a unix socket, with a scripted coordinator
 * behind it: the proto, the handlers' mapping, the client, the tables, `-o json` and the
 * exit codes, end to end.
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { GroupSnapshotMessage } from '../../src/cli/api-client.js';
import { Code, StorageError } from '../../src/common/errors.js';
import type { SnapshotId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { VolumeApi } from '../../src/cluster/volume-views.js';
import { apiHandlers, apiServiceDefinition } from '../../src/daemon/api-service.js';
import type { CreateGroupInput, GroupCoordinator } from '../../src/snapshot/group-coordinator.js';
import type { GroupSnapshotDoc } from '../../src/snapshot/group-doc.js';

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
const T0 = '2025-03-01T00:00:00.000Z';

function group(name: string, volumes: string[]): GroupSnapshotDoc {
  return {
    id: `grp-${name}`, name, state: 'ready', readyToUse: true, createdAt: T0,
    members: volumes.map((v, i) => ({ volumeId: `vol-${v}` as VolumeId, volumeName: v, snapshotId: `snap-${v}` as SnapshotId, snapshotName: `${name}-${v}`, pauseUs: 1500 * (i + 1), drainMs: 0.5 })),
    phases: { preMs: 0, pauseMs: 2.5, cutMs: 3, resumeMs: 1, finishMs: 4, totalMs: 12.5 },
  };
}

class ScriptedGroups {
  readonly groups = new Map<string, GroupSnapshotDoc>();
  deletes: string[] = [];
  async create(input: CreateGroupInput): Promise<GroupSnapshotDoc> {
    const found = this.groups.get(input.name);
    if (found && found.members.map((m) => m.volumeName).join() !== input.volumes.join()) {
      throw new StorageError(Code.ALREADY_EXISTS, `group snapshot "${input.name}" already exists for volumes ${found.members.map((m) => m.volumeName).join(',')}: choose another name`);
    }
    const g = found ?? group(input.name, input.volumes);
    this.groups.set(g.name, g);
    return g;
  }
  async get(name: string): Promise<GroupSnapshotDoc> {
    const g = this.groups.get(name);
    if (!g) throw new StorageError(Code.NOT_FOUND, `group snapshot "${name}" not found`);
    return g;
  }
  async list(): Promise<GroupSnapshotDoc[]> {
    return [...this.groups.values()];
  }
  async delete(name: string): Promise<void> {
    this.deletes.push(name);
    this.groups.delete(name);
  }
}

async function serve(t: import('ava').ExecutionContext) {
  const dir = mkdtempSync('/tmp/cairn-cli-');
  const socket = join(dir, 'api.sock');
  const groups = new ScriptedGroups();
  const server = new grpc.Server();
  server.addService(apiServiceDefinition(), apiHandlers({
    volumes: {} as VolumeApi, nodeName: 'node-a', poolKind: 'file', poolPath: '/pool', startedAt: Date.now(), connectionCount: () => 0,
    attacher: undefined, log: silentLogger(), groups: groups as unknown as GroupCoordinator,
  }));
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  t.teardown(() => {
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'cairnctl', ...process.argv.slice(1)]);`;
  const ctl = async (args: string[]) => {
    const r = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--api-socket', socket, ...args], { reject: false });
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  };
  return { groups, ctl };
}

test('snapshot group create, list, inspect (phases and each member\'s pause), -o json, delete; a reused name keeps ALREADY_EXISTS', async (t) => {
  const { groups, ctl } = await serve(t);
  const created = await ctl(['snapshot', 'group', 'create', 'ring', '--volumes', 'c1,c2,c3']);
  t.is(created.exitCode, 0, created.stderr);
  t.is(created.stdout, 'group snapshot ring ready (3 members, longest pause 4.5ms, total 12.5 ms)');
  const json = JSON.parse((await ctl(['-o', 'json', 'snapshot', 'group', 'inspect', 'ring'])).stdout) as GroupSnapshotMessage;
  t.like(json, { id: 'grp-ring', name: 'ring', state: 'ready', readyToUse: true, createdAt: T0 });
  t.deepEqual(json.members.map((m) => [m.volumeName, m.snapshotName, Number(m.pauseUs)]), [['c1', 'ring-c1', 1500], ['c2', 'ring-c2', 3000], ['c3', 'ring-c3', 4500]]);
  t.is(json.phases?.totalMs, 12.5);
  const inspect = await ctl(['snapshot', 'group', 'inspect', 'ring']);
  t.regex(inspect.stdout, /Phases:\s+pre 0\.0 ms, pause 2\.5 ms, cut 3\.0 ms, resume 1\.0 ms, finish 4\.0 ms/);
  t.regex(inspect.stdout, /c2\s+ring-c2\s+3\.0ms/);
  const list = await ctl(['snapshot', 'group', 'list']);
  t.regex(list.stdout, /^NAME\s+STATE\s+MEMBERS\s+LONGEST PAUSE/);
  t.regex(list.stdout, /ring\s+ready\s+3\s+4\.5ms/);
  const reused = await ctl(['snapshot', 'group', 'create', 'ring', '--volumes', 'c1']);
  t.is(reused.exitCode, 1);
  t.regex(reused.stderr, /already exists for volumes c1,c2,c3.*\(ALREADY_EXISTS\)/);
  const deleted = await ctl(['snapshot', 'group', 'delete', 'ring']);
  t.is(deleted.stdout, 'group snapshot ring deleted');
  t.deepEqual(groups.deletes, ['ring']);
  t.is((await ctl(['snapshot', 'group', 'list'])).stdout, 'no group snapshots');
  const missing = await ctl(['snapshot', 'group', 'inspect', 'ring']);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /NOT_FOUND/);
});
