/**
 * cairnd --role controller on a real etcd, next to two node daemons: it serves the cairnctl
 * API for create, list and delete with no data plane of its own (no pool directory, no
 * node store, no replica service), the replicas land on the node daemons, and it answers
 * the CSI Identity service on its CSI socket. A single-node `all` daemon (the default)
 * answers Identity on `<data-dir>/csi.sock`, and a controller without etcd does not start.
 */
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { VolumeMessage } from '../../src/cli/api-client.js';
import { csiServiceClient } from '../../src/csi/csi-proto.js';
import { Cluster } from '../helpers/cluster.js';
import { Daemon } from '../helpers/daemon.js';
import { etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

/** One unary CSI call over a unix socket. */
async function csiCall<T>(socketPath: string, service: 'Identity', method: string, request: object): Promise<T> {
  const Client = csiServiceClient(service);
  const client = new Client(`unix:${socketPath}`, grpc.credentials.createInsecure());
  try {
    return await new Promise<T>((resolve, reject) => {
      (client as unknown as Record<string, (req: object, cb: (err: grpc.ServiceError | null, res: T) => void) => void>)[method]!
        .call(client, request, (err, res) => (err ? reject(err) : resolve(res)));
    });
  } finally {
    client.close();
  }
}

if (prerequisitesMet('the controller role on etcd', await etcdMissingReason())) {
  test.serial('a controller-role cairnd creates, lists and deletes volumes on the node daemons with no pool of its own, and serves CSI Identity', async (t) => {
    const cluster = await Cluster.start({ nodes: 2, tls: 'insecure', extraArgs: ['--role', 'node'] });
    let failed = true;
    t.teardown(() => cluster.destroy({ failed }));
    const dataDir = mkdtempSync('/tmp/cairn-ctrl-');
    const controller = await Daemon.start({
      dataDir,
      extraArgs: ['--role', 'controller', '--node-name', 'controller-0', '--cluster-name', cluster.name, '--etcd-endpoints', cluster.etcd.endpoint,
        '--peer-insecure', '--default-replicas', '2'],
    });
    t.teardown(() => controller.destroy());

    const created = await controller.ctlJson<VolumeMessage>(['volume', 'create', 'pgdata', '--size', '16MiB']);
    t.is(created.state, 'ready');
    t.deepEqual(created.replicas.map((r) => r.nodeName).sort(), ['node-0', 'node-1'], 'the replicas live on the node daemons');
    const listed = await controller.ctlJson<VolumeMessage[] | { volumes: VolumeMessage[] }>(['volume', 'list']);
    const names = (Array.isArray(listed) ? listed : listed.volumes).map((v) => v.name);
    t.deepEqual(names, ['pgdata']);
    // A node daemon sees the same volume, with both replicas answering (allocated bytes come from their nodes).
    const fromNode = await cluster.ctlJson<VolumeMessage>(0, ['volume', 'inspect', 'pgdata']);
    t.is(fromNode.id, created.id);

    const exported = await controller.ctl(['volume', 'export', 'pgdata']);
    t.not(exported.exitCode, 0, 'export is a node daemon\'s work');

    // A rule with fsfreeze acts where the volume is staged: staged nowhere, the controller refuses it before anything runs.
    const ruleFile = join(dataDir, 'rule.yaml');
    writeFileSync(ruleFile, 'apiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata:\n  name: freeze\nspec:\n  pre: [{kind: fsfreeze}]\n');
    t.is((await controller.ctl(['rule', 'apply', '-f', ruleFile])).exitCode, 0);
    const underRule = await controller.ctl(['snapshot', 'create', 'pg-snap', '--volume', 'pgdata', '--rule', 'freeze']);
    t.is(underRule.exitCode, 1);
    t.regex(underRule.stderr, /not staged on any node.*FAILED_PRECONDITION\)$/s);
    t.deepEqual(await controller.ctlJson<unknown[]>(['snapshot', 'list']), [], 'no snapshot taken');

    const deleted = await controller.ctl(['volume', 'delete', 'pgdata']);
    t.is(deleted.exitCode, 0, deleted.stderr);
    const after = await cluster.ctlJson<VolumeMessage[] | { volumes: VolumeMessage[] }>(0, ['volume', 'list']);
    t.deepEqual(Array.isArray(after) ? after : after.volumes, []);

    t.false(existsSync(join(dataDir, 'pool')), 'no pool directory');
    t.false(existsSync(join(dataDir, 'node.db')), 'no node store');
    t.false(existsSync(join(dataDir, 'nbd')), 'no NBD socket directory');

    const info = await csiCall<{ name: string; vendorVersion: string }>(join(dataDir, 'csi.sock'), 'Identity', 'GetPluginInfo', {});
    t.is(info.name, 'csi.cairn.dev');
    t.regex(info.vendorVersion, /^\d+\.\d+\.\d+/);
    const probe = await csiCall<{ ready: { value: boolean } | null }>(join(dataDir, 'csi.sock'), 'Identity', 'Probe', {});
    t.true(probe.ready?.value, 'the controller is ready while etcd answers');
    // A node-role daemon serves Identity on its own socket too, ready once its data plane is up.
    const nodeProbe = await csiCall<{ ready: { value: boolean } | null }>(join(cluster.node(0).dataDir, 'csi.sock'), 'Identity', 'Probe', {});
    t.true(nodeProbe.ready?.value);
    // The plugin's capabilities are one answer per version (CSI GetPluginCapabilities): the node
    // daemon, which serves no Controller, advertises the one the controller Deployment runs.
    type Caps = { capabilities: { service?: { type: string } | null; volumeExpansion?: { type: string } | null }[] };
    const fromController = await csiCall<Caps>(join(dataDir, 'csi.sock'), 'Identity', 'GetPluginCapabilities', {});
    const fromNodeDaemon = await csiCall<Caps>(join(cluster.node(0).dataDir, 'csi.sock'), 'Identity', 'GetPluginCapabilities', {});
    t.deepEqual(fromNodeDaemon, fromController);
    t.true(fromNodeDaemon.capabilities.some((c) => c.service?.type === 'CONTROLLER_SERVICE'));
    failed = false;
  });
}

test.serial('the default role (all, embedded store) serves CSI Identity on <data-dir>/csi.sock, ready once started', async (t) => {
  const d = await Daemon.start({ extraArgs: ['--node-name', 'solo'] });
  t.teardown(() => d.destroy());
  const socket = join(d.dataDir, 'csi.sock');
  t.is((await csiCall<{ name: string }>(socket, 'Identity', 'GetPluginInfo', {})).name, 'csi.cairn.dev');
  t.true((await csiCall<{ ready: { value: boolean } | null }>(socket, 'Identity', 'Probe', {})).ready?.value);
  const created = await d.ctl(['volume', 'create', 'local', '--size', '8MiB']);
  t.is(created.exitCode, 0, created.stderr);
});

test('cairnd --role controller without etcd stops at start with exit code 2 and says what to do', async (t) => {
  const { execa } = await import('execa');
  const dataDir = mkdtempSync('/tmp/cairn-ctrl-');
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const r = await execa('node', ['bin/cairnd.js', '--role', 'controller', '--data-dir', dataDir], { reject: false });
  t.is(r.exitCode, 2);
  t.regex(r.stderr, /--role \/ CAIRN_ROLE "controller".*--etcd-endpoints/);
  t.false(existsSync(join(dataDir, 'pool')));
});
