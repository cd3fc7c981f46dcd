/**
 * cairnd + cairnctl as an operator uses them: real processes, the real gRPC API on a unix
 * socket, real NBD clients on the exported volumes.
 */
import test from 'ava';
import { join } from 'node:path';
import { Daemon } from '../helpers/daemon.js';
import { run } from '../helpers/run.js';
import type { ExportMessage, NodeStatusMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { createVolumeDoc, updateVolumeDoc } from '../../src/cluster/volume-doc.js';
import { silentLogger } from '../../src/common/log.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';

const GiB = 1024 ** 3;

test('create, list, inspect, export and delete a volume with cairnctl', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());

  const created = await d.ctlJson<VolumeMessage>(['volume', 'create', 'pgdata', '--size', '10GiB']);
  t.is(created.name, 'pgdata');
  t.is(created.sizeBytes, 10 * GiB);
  t.is(created.state, 'ready');
  t.is(created.health, 'healthy');
  t.is(created.replicas.length, 1);

  const again = await d.ctlJson<VolumeMessage>(['volume', 'create', 'pgdata', '--size', '10GiB']);
  t.is(again.id, created.id, 'creating the same volume again returns it');

  const clash = await d.ctl(['volume', 'create', 'pgdata', '--size', '5GiB']);
  t.is(clash.exitCode, 1);
  t.regex(clash.stderr, /already exists with size 10 GiB.*ALREADY_EXISTS/);

  const table = await d.ctl(['volume', 'list']);
  t.regex(table.stdout, /^NAME\s+SIZE\s+ALLOCATED\s+STATE\s+HEALTH/m);
  t.regex(table.stdout, /pgdata\s+10 GiB\s+0 B\s+ready\s+healthy/);

  const exported = await d.ctl(['volume', 'export', 'pgdata']);
  t.is(exported.exitCode, 0, exported.stderr);
  const uri = exported.stdout.trim();
  t.regex(uri, /^nbd\+unix:\/\/\/pgdata\?socket=\/.+\.sock$/);

  const info = JSON.parse(await run('nbdinfo', ['--json', uri])) as { exports: { 'export-size': number; 'block_size_minimum': number; 'block_size_preferred': number; 'block_size_maximum': number }[] };
  t.is(info.exports[0]?.['export-size'], 10 * GiB);
  t.is(info.exports[0]?.['block_size_minimum'], 512);
  t.is(info.exports[0]?.['block_size_preferred'], 4096);
  t.is(info.exports[0]?.['block_size_maximum'], 32 * 1024 * 1024);

  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 1M 3M', '-c', 'flush', uri]);
  const readBack = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5c 1M 3M', '-c', 'read -P 0 0 1M', uri]);
  t.notRegex(readBack, /Pattern verification failed/);

  const inspected = await d.ctlJson<VolumeMessage>(['volume', 'inspect', 'pgdata']);
  t.is(inspected.export?.uri, uri);
  t.true(inspected.allocatedBytes >= 3 * 1024 * 1024, 'the written 3 MiB are allocated');
  t.true(inspected.allocatedBytes < 10 * 1024 * 1024, 'a thin volume allocates only what was written');

  const human = await d.ctl(['volume', 'inspect', 'pgdata']);
  t.regex(human.stdout, /Health:\s+healthy/);
  t.regex(human.stdout, /REPLICA\s+NODE\s+STATE/);

  const status = await d.ctlJson<NodeStatusMessage>(['status']);
  t.is(status.volumeCount, 1);
  t.is(status.exportedCount, 1);
  t.is(status.pool.backend, 'file');
  t.true(status.pool.totalBytes > 0 && status.pool.freeBytes > 0 && status.pool.freeBytes <= status.pool.totalBytes);
  t.is(status.pool.provisionedBytes, 10 * GiB);

  t.is((await d.ctl(['volume', 'delete', 'pgdata'])).exitCode, 0);
  t.is((await d.ctl(['volume', 'delete', 'pgdata'])).exitCode, 0, 'deleting a missing volume is not an error');
  const missing = await d.ctl(['volume', 'inspect', 'pgdata']);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /volume "pgdata" not found \(NOT_FOUND\)/);
  t.is((await d.ctlJson<NodeStatusMessage>(['status'])).pool.provisionedBytes, 0);
});

test('cairnctl explains bad input and an unreachable daemon', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  const badName = await d.ctl(['volume', 'create', 'Bad_Name', '--size', '1GiB']);
  t.is(badName.exitCode, 1);
  t.regex(badName.stderr, /volume name "Bad_Name" is not valid.*INVALID_ARGUMENT/);
  const badSize = await d.ctl(['volume', 'create', 'ok', '--size', 'huge']);
  t.regex(badSize.stderr, /cannot read size "huge"/);
  const tooBig = await d.ctl(['volume', 'create', 'ok', '--size', '2PiB']);
  t.regex(tooBig.stderr, /over the limit.*OUT_OF_RANGE/);
  const nowhere = await d.ctl(['--api-socket', join(d.dataDir, 'nope.sock'), 'status']);
  t.is(nowhere.exitCode, 1);
  t.regex(nowhere.stderr, /cannot reach cairnd at .*nope\.sock: is it running\?/);
});

test('a volume with NBD clients connected is not deleted without --force', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  await d.ctl(['volume', 'create', 'busy', '--size', '64MiB']);
  const exp = await d.ctlJson<ExportMessage>(['volume', 'export', 'busy']);
  // nbdsh-free way to hold a connection open: qemu-io reading from stdin keeps it connected.
  const { execa } = await import('execa');
  const holder = execa('qemu-io', ['-f', 'raw', exp.uri], { input: undefined, stdin: 'pipe', reject: false });
  let connected = 0;
  for (let i = 0; i < 50 && connected === 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    connected = (await d.ctlJson<VolumeMessage>(['volume', 'inspect', 'busy'])).export?.connectionCount ?? 0;
  }
  t.is(connected, 1);
  const refused = await d.ctl(['volume', 'delete', 'busy']);
  t.is(refused.exitCode, 1);
  t.regex(refused.stderr, /1 NBD client\(s\) connected.*--force.*FAILED_PRECONDITION/);
  t.is((await d.ctl(['volume', 'delete', 'busy', '--force'])).exitCode, 0);
  holder.stdin?.end('quit\n');
  await holder;
  t.is((await d.ctlJson<VolumeMessage[]>(['volume', 'list'])).length, 0);
});

test('a second cairnd on the same data directory is refused', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  const { execa } = await import('execa');
  const second = await execa('node', ['bin/cairnd.js', '--data-dir', d.dataDir, '--api-socket', join(d.dataDir, 'other.sock'), '--http-listen', '', '--log-format', 'json'], { reject: false, timeout: 30_000 });
  t.is(second.exitCode, 1);
  t.regex(second.stdout, /another cairnd \(pid \d+\) is using this data directory/);
  t.is((await d.ctl(['status'])).exitCode, 0, 'the first daemon is unharmed');
});

test('bad flags stop cairnd with a clear message and exit code 2', async (t) => {
  const { execa } = await import('execa');
  const r = await execa('node', ['bin/cairnd.js', '--log-level', 'shouty'], { reject: false });
  t.is(r.exitCode, 2);
  t.regex(r.stderr, /invalid --log-level \/ CAIRN_LOG_LEVEL "shouty": use one of trace/);
});

test('cairnd finishes a creation and a deletion that a crash interrupted', async (t) => {
  const d = await Daemon.start({ extraArgs: ['--node-name', 'solo'] });
  t.teardown(() => d.destroy());
  await d.ctl(['volume', 'create', 'doomed', '--size', '8MiB']);
  await d.stop();

  // What the cluster store holds after a kill -9 in the middle of each operation.
  const store = EmbeddedStore.open({ path: join(d.dataDir, 'cluster.db'), cluster: 'default', log: silentLogger() });
  const longAgo = new Date(Date.now() - 60_000).toISOString();
  t.true(await createVolumeDoc(store, {
    id: 'vol-half' as VolumeId, name: 'half-made', sizeBytes: 16 << 20, createdAt: longAgo, state: 'creating', replicasWanted: 1,
    regionBytes: 1 << 20, epoch: 1, engine: null, replicas: [{ id: 'rep-half' as ReplicaId, nodeId: 'solo' as NodeId, state: 'in-sync', since: longAgo }],
  }));
  await updateVolumeDoc(store, 'doomed', (doc) => ({ ...doc, state: 'deleting', epoch: doc.epoch + 1 }));
  await store.close();

  await d.launch();
  let volumes: VolumeMessage[] = [];
  for (let i = 0; i < 100; i++) {
    volumes = await d.ctlJson<VolumeMessage[]>(['volume', 'list']);
    if (volumes.length === 1 && volumes[0]!.state === 'ready') break;
    await new Promise((r) => setTimeout(r, 200));
  }
  t.deepEqual(volumes.map((v) => [v.name, v.state, v.health]), [['half-made', 'ready', 'healthy']]);
  const status = await d.ctlJson<NodeStatusMessage>(['status']);
  t.is(status.pool.provisionedBytes, 16 << 20, 'the doomed volume\'s device is gone and the half-made one exists');
});

test('/metrics, /healthz and /readyz answer', async (t) => {
  const d = await Daemon.start();
  t.teardown(() => d.destroy());
  await d.ctl(['volume', 'create', 'm', '--size', '1GiB']);
  const base = `http://127.0.0.1:${d.httpPort}`;
  t.is((await fetch(`${base}/healthz`)).status, 200);
  t.is((await fetch(`${base}/readyz`)).status, 200);
  // A node reports the volumes whose engine it runs (metrics.md): none until the export.
  t.notRegex(await (await fetch(`${base}/metrics`)).text(), /^cairn_volume_size_bytes\{/m);
  await d.ctl(['volume', 'export', 'm']);
  const metrics = await (await fetch(`${base}/metrics`)).text();
  t.regex(metrics, /^cairn_pool_total_bytes\{pool_kind="file",node="[^"]+"\} \d+$/m);
  t.regex(metrics, /^cairn_volume_size_bytes\{volume="m",volume_id="vol-[^"]+",node="[^"]+"\} 1073741824$/m);
  t.regex(metrics, /^cairn_volume_health\{volume="m",volume_id="vol-[^"]+",health="healthy",node="[^"]+"\} 1$/m);
});
