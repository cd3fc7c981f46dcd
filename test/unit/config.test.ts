import test from 'ava';
import { Command } from 'commander';
import { Code, StorageError } from '../../src/common/errors.js';
import { resolve } from 'node:path';
import { advertisedPeerAddress, flagsFromCommander, peersEnabled, peerTlsConfig, resolveConfig, SETTINGS, storeKind } from '../../src/daemon/config.js';

test('defaults derive from the data directory', (t) => {
  const c = resolveConfig({}, {}, false);
  t.is(c.dataDir, '/var/lib/cairn');
  t.is(c.apiSocket, '/var/lib/cairn/cairnd.sock');
  t.is(c.poolDir, '/var/lib/cairn/pool');
  t.is(c.nbdSocketDir, '/var/lib/cairn/nbd');
  t.is(c.logFormat, 'json', 'not a TTY: JSON logs');
  t.is(c.httpListen, '127.0.0.1:9470');
  t.true(Object.isFrozen(c));
  t.is(c.poolBackend, 'auto', 'dm where device-mapper is present, else file');
  t.deepEqual(c.poolDevices, []);
});

test('pool devices are a comma list', (t) => {
  const c = resolveConfig({ poolBackend: 'dm' }, { CAIRN_POOL_DEVICES: '/dev/sdb, /dev/sdc' }, false);
  t.is(c.poolBackend, 'dm');
  t.deepEqual(c.poolDevices, ['/dev/sdb', '/dev/sdc']);
});

test('flags win over the environment, which wins over defaults', (t) => {
  const env = { CAIRN_DATA_DIR: '/env/data', CAIRN_LOG_LEVEL: 'debug', CAIRN_POOL_CAPACITY: '100GiB' };
  const c = resolveConfig({ dataDir: '/flag/data' }, env, true);
  t.is(c.dataDir, '/flag/data');
  t.is(c.logLevel, 'debug');
  t.is(c.poolCapacityBytes, 100 * 1024 ** 3);
  t.is(c.logFormat, 'human', 'a TTY gets the human format');
});

test('bad settings name the flag and the variable', (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ logLevel: 'loud' }, /--log-level \/ CAIRN_LOG_LEVEL "loud"/],
    [{ poolCapacityBytes: 'lots' }, /--pool-capacity/],
    [{ httpListen: 'nonsense' }, /host:port/],
    [{ apiSocket: `/tmp/${'x'.repeat(120)}` }, /107 bytes/],
    [{ poolBackend: 'zfs' }, /use file, dm or auto/],
    [{ poolBackend: 'dm' }, /--pool-devices .*needs at least one block device/],
    [{ poolDevices: 'sdb' }, /absolute block device paths/],
  ];
  for (const [flags, message] of cases) {
    const err = t.throws(() => resolveConfig(flags, {}, false), { instanceOf: StorageError });
    t.is(err?.code, Code.INVALID_ARGUMENT);
    t.regex(err?.message ?? '', message);
  }
});

const TLS = { peerTlsCa: '/etc/cairn/ca.pem', peerTlsCert: '/etc/cairn/node.pem', peerTlsKey: '/etc/cairn/node-key.pem' };

test('single-node defaults: embedded store, no peers, one replica', (t) => {
  const c = resolveConfig({ nodeName: 'node-a' }, {}, false);
  t.is(c.clusterName, 'default');
  t.deepEqual(c.etcdEndpoints, []);
  t.is(storeKind(c), 'embedded');
  t.is(c.peerListen, '', 'a single node needs no replica service');
  t.is(c.peerAddress, '');
  t.false(peersEnabled(c));
  t.is(peerTlsConfig(c), undefined);
  t.false(c.peerInsecure);
  t.is(c.zone, '');
  t.deepEqual(c.nodeLabels, {});
  t.is(c.nodeTtlMs, 10_000);
  t.is(c.replicaTimeoutMs, 8000);
  t.is(c.rebuildRateBytes, 256 * 1024 ** 2);
  t.is(c.repairWaitMs, 300_000);
  t.is(c.defaultReplicas, 1);
  t.true(Object.isFrozen(c.nodeLabels) && Object.isFrozen(c.etcdEndpoints));
});

test('multi-node defaults: etcd, the peer port on all interfaces, three replicas', (t) => {
  const c = resolveConfig({ nodeName: 'node-a', etcdEndpoints: 'http://etcd-0:2379, https://10.0.0.5:2379/', ...TLS }, {}, false);
  t.deepEqual(c.etcdEndpoints, ['http://etcd-0:2379', 'https://10.0.0.5:2379']);
  t.is(storeKind(c), 'etcd');
  t.is(c.peerListen, '0.0.0.0:9471');
  t.is(c.peerAddress, 'node-a:9471', 'others dial the node name at the listen port');
  t.true(peersEnabled(c));
  t.is(c.defaultReplicas, 3);
  t.deepEqual(peerTlsConfig(c), { caFile: TLS.peerTlsCa, certFile: TLS.peerTlsCert, keyFile: TLS.peerTlsKey });
});

test('the peer address is explicit, derived from the listen port, or left to run time for port 0', (t) => {
  const base = { nodeName: 'node-a', etcdEndpoints: 'http://127.0.0.1:2379', peerInsecure: 'true' };
  t.is(resolveConfig({ ...base, peerListen: '127.0.0.1:7000' }, {}, false).peerAddress, 'node-a:7000');
  t.is(resolveConfig({ ...base, peerListen: '127.0.0.1:7000', peerAddress: '10.1.2.3:7000' }, {}, false).peerAddress, '10.1.2.3:7000');
  const ephemeral = resolveConfig({ ...base, peerListen: '127.0.0.1:0' }, {}, false);
  t.is(ephemeral.peerAddress, '', 'derived once the port is bound');
  t.is(advertisedPeerAddress(ephemeral, 41234), 'node-a:41234');
  t.is(advertisedPeerAddress(resolveConfig({ ...base, peerAddress: 'a.example:9471' }, {}, false), 41234), 'a.example:9471');
  t.is(resolveConfig({ ...base, peerListen: '[::]:9471' }, {}, false).peerListen, '[::]:9471');
});

test('the data channel listens beside the replica service: 9472 by default, port 0 with a port-0 peer, off without peers', (t) => {
  const base = { nodeName: 'node-a', etcdEndpoints: 'http://127.0.0.1:2379', peerInsecure: 'true' };
  const c = resolveConfig(base, {}, false);
  t.is(c.dataListen, '0.0.0.0:9472');
  t.is(c.replicaTransport, 'channel');
  t.is(resolveConfig({ ...base, peerListen: '127.0.0.1:0' }, {}, false).dataListen, '127.0.0.1:0');
  t.is(resolveConfig({ ...base, peerListen: '10.0.0.1:7000', dataListen: '10.0.0.1:7001' }, {}, false).dataListen, '10.0.0.1:7001');
  t.is(resolveConfig({ ...base, dataListen: '' }, {}, false).dataListen, '', 'empty turns it off');
  t.is(resolveConfig({ nodeName: 'solo' }, {}, false).dataListen, '', 'a single node without peers serves none');
  t.is(resolveConfig({ ...base, replicaTransport: 'grpc' }, {}, false).replicaTransport, 'grpc');
  const refused = (flags: Record<string, string>, message: RegExp): void => {
    const err = t.throws(() => resolveConfig({ ...base, ...flags }, {}, false), { instanceOf: StorageError });
    t.is(err?.code, Code.INVALID_ARGUMENT);
    t.regex(err?.message ?? '', message);
  };
  refused({ dataListen: 'nowhere' }, /--data-listen/);
  refused({ peerListen: '0.0.0.0:7000', dataListen: '0.0.0.0:7000' }, /replica service's/);
  refused({ replicaTransport: 'nbd' }, /channel, grpc/);
  const err = t.throws(() => resolveConfig({ nodeName: 'solo', dataListen: '127.0.0.1:0' }, {}, false), { instanceOf: StorageError });
  t.regex(err?.message ?? '', /--peer-listen/);
});

test('a single node may run the replica service when asked, with TLS', (t) => {
  const c = resolveConfig({ nodeName: 'solo', peerListen: '127.0.0.1:0' }, { CAIRN_PEER_INSECURE: '1' }, false);
  t.is(c.peerListen, '127.0.0.1:0');
  t.true(peersEnabled(c));
  t.deepEqual(peerTlsConfig(c), { insecure: true });
  t.is(c.defaultReplicas, 1);
});

test('an etcd cluster may switch its replica service off, but still needs peer TLS to dial others', (t) => {
  const c = resolveConfig({ etcdEndpoints: 'http://etcd:2379', peerListen: '', peerInsecure: 'true' }, {}, false);
  t.is(c.peerListen, '');
  t.is(c.peerAddress, '');
  t.true(peersEnabled(c));
  const err = t.throws(() => resolveConfig({ etcdEndpoints: 'http://etcd:2379', peerListen: '' }, {}, false), { instanceOf: StorageError });
  t.regex(err?.message ?? '', /peer TLS is required/);
});

test('booleans: the bare flag, true/false/1/0 in the environment, and flag over environment', (t) => {
  const peers = { nodeName: 'n', peerListen: '127.0.0.1:0' };
  t.true(resolveConfig({ ...peers, peerInsecure: 'true' }, {}, false).peerInsecure, 'what flagsFromCommander makes of the bare flag');
  t.true(resolveConfig({ ...peers }, { CAIRN_PEER_INSECURE: 'TRUE' }, false).peerInsecure);
  t.true(resolveConfig({ ...peers }, { CAIRN_PEER_INSECURE: '1' }, false).peerInsecure);
  t.false(resolveConfig({ nodeName: 'n' }, { CAIRN_PEER_INSECURE: 'false' }, false).peerInsecure);
  t.false(resolveConfig({ nodeName: 'n' }, { CAIRN_PEER_INSECURE: '0' }, false).peerInsecure);
  t.false(resolveConfig({ nodeName: 'n' }, { CAIRN_PEER_INSECURE: '' }, false).peerInsecure, 'an empty variable is unset');
  t.false(resolveConfig({ nodeName: 'n', peerInsecure: 'false' }, { CAIRN_PEER_INSECURE: 'true' }, false).peerInsecure, 'the flag wins');
  // main.ts passing commander's `true` straight through still works.
  t.true(resolveConfig({ ...peers, peerInsecure: true as unknown as string }, {}, false).peerInsecure);
  const err = t.throws(() => resolveConfig({ nodeName: 'n' }, { CAIRN_PEER_INSECURE: 'yes please' }, false), { instanceOf: StorageError });
  t.regex(err?.message ?? '', /invalid --peer-insecure \/ CAIRN_PEER_INSECURE "yes please": write true or false/);
});

test('flagsFromCommander turns commander options into raw settings', (t) => {
  const flags = flagsFromCommander({ peerInsecure: true, peerTlsCa: '/ca.pem', rebuildRate: '100MiB', nodeTtlMs: '3000', version: undefined, unrelated: 'x' });
  t.deepEqual(flags, { peerInsecure: 'true', peerTlsCa: '/ca.pem', rebuildRateBytes: '100MiB', nodeTtlMs: '3000' });
  for (const s of SETTINGS) t.true(s.flag.startsWith(`--`) && s.env.startsWith('CAIRN_') && s.defaultText.length > 0, s.key);
  t.is(SETTINGS.filter((s) => s.boolean).map((s) => s.flag).join(), '--peer-insecure', 'a boolean flag takes no value');
  t.is(new Set(SETTINGS.map((s) => s.key)).size, SETTINGS.length);
});

test('cluster and tuning settings: environment, flags over it, and units', (t) => {
  const env = {
    CAIRN_CLUSTER_NAME: 'prod-eu', CAIRN_ZONE: 'eu-west-1a', CAIRN_NODE_LABELS: 'disk=nvme, topology.kubernetes.io/rack=r12,empty=',
    CAIRN_NODE_TTL_MS: '2000', CAIRN_REPLICA_TIMEOUT_MS: '500', CAIRN_REBUILD_RATE: '200MiB/s', CAIRN_REPAIR_WAIT_MS: '0',
    CAIRN_DEFAULT_REPLICAS: '2', CAIRN_ETCD_ENDPOINTS: 'http://etcd:2379', CAIRN_PEER_INSECURE: 'true',
  };
  const c = resolveConfig({ nodeName: 'n', replicaTimeoutMs: '750', rebuildRateBytes: '0' }, env, false);
  t.is(c.clusterName, 'prod-eu');
  t.is(c.zone, 'eu-west-1a');
  t.deepEqual(c.nodeLabels, { disk: 'nvme', 'topology.kubernetes.io/rack': 'r12', empty: '' });
  t.is(c.nodeTtlMs, 2000);
  t.is(c.replicaTimeoutMs, 750, 'the flag wins');
  t.is(c.rebuildRateBytes, 0, '0 = unlimited');
  t.is(c.repairWaitMs, 0);
  t.is(c.defaultReplicas, 2);
  t.is(resolveConfig({ nodeName: 'n' }, { ...env, CAIRN_REBUILD_RATE: '200MiB/s' }, false).rebuildRateBytes, 200 * 1024 ** 2);
});

test('the attach reconnect window: 120 s by default, from the environment or the flag, at least a second', (t) => {
  t.is(resolveConfig({ nodeName: 'n' }, {}, false).attachReconnectMs, 120_000);
  t.is(resolveConfig({ nodeName: 'n' }, { CAIRN_ATTACH_RECONNECT_MS: '300000' }, false).attachReconnectMs, 300_000);
  t.is(resolveConfig({ nodeName: 'n', attachReconnectMs: '5000' }, { CAIRN_ATTACH_RECONNECT_MS: '300000' }, false).attachReconnectMs, 5000);
  t.throws(() => resolveConfig({ nodeName: 'n', attachReconnectMs: '999' }, {}, false), { message: /invalid --attach-reconnect-ms \/ CAIRN_ATTACH_RECONNECT_MS "999": .*at least 1000/ });
});

test('bad cluster, peer and tuning settings say what to write', (t) => {
  const etcd = { etcdEndpoints: 'http://etcd:2379' };
  const insecure = { peerInsecure: 'true' };
  const cases: [Record<string, string>, RegExp][] = [
    [{ clusterName: 'Prod' }, /invalid --cluster-name \/ CAIRN_CLUSTER_NAME "Prod": use 1-63 lower-case letters, digits or "-"/],
    [{ clusterName: `c${'x'.repeat(63)}` }, /--cluster-name .*1-63/],
    [{ clusterName: 'edge-' }, /--cluster-name/],
    [{ etcdEndpoints: 'etcd:2379' }, /invalid --etcd-endpoints \/ CAIRN_ETCD_ENDPOINTS "etcd:2379": "etcd:2379" is not an etcd client URL: write http:\/\/host:port/],
    [{ etcdEndpoints: 'http://etcd' }, /not an etcd client URL/],
    [{ etcdEndpoints: 'http://a:2379,ftp://b:2379' }, /"ftp:\/\/b:2379" is not an etcd client URL/],
    [{ etcdEndpoints: 'http://a:99999' }, /not an etcd client URL/],
    [{ ...etcd }, /^peer TLS is required: give --peer-tls-ca, --peer-tls-cert and --peer-tls-key, or --peer-insecure for development$/],
    [{ peerListen: '0.0.0.0:9471' }, /^peer TLS is required/],
    [{ ...etcd, peerTlsCa: '/ca.pem', peerTlsCert: '/c.pem' }, /peer TLS is required.*\(missing: --peer-tls-key\)/],
    [{ ...etcd, ...TLS, ...insecure }, /either the peer TLS files .* or --peer-insecure, not both/],
    [{ ...etcd, ...insecure, peerListen: '9471' }, /invalid --peer-listen \/ CAIRN_PEER_LISTEN "9471": write host:port/],
    [{ ...etcd, ...insecure, peerListen: 'host:70000' }, /--peer-listen/],
    [{ ...etcd, ...insecure, peerAddress: 'node-a' }, /invalid --peer-address .*write the host:port other nodes dial/],
    [{ ...etcd, ...insecure, peerAddress: 'node-a:0' }, /--peer-address .*not 0/],
    [{ peerAddress: 'node-a:9471' }, /--peer-address .*set --peer-listen too/],
    [{ zone: 'eu west' }, /invalid --zone \/ CAIRN_ZONE "eu west"/],
    [{ nodeLabels: 'disk' }, /invalid --node-labels .*"disk" is not a label: write key=value pairs/],
    [{ nodeLabels: 'Bad Key=x' }, /"Bad Key=x" is not a label/],
    [{ nodeLabels: 'UPPER.example/x=1' }, /is not a label/],
    [{ nodeLabels: 'disk=-nvme' }, /the value of "disk" is not valid/],
    [{ nodeLabels: `disk=${'n'.repeat(64)}` }, /the value of "disk" is not valid/],
    [{ nodeLabels: 'a=1,a=2' }, /label "a" is given twice/],
    [{ nodeTtlMs: '1999' }, /invalid --node-ttl-ms \/ CAIRN_NODE_TTL_MS "1999": a whole number of milliseconds, at least 2000/],
    [{ nodeTtlMs: '5s' }, /--node-ttl-ms/],
    [{ replicaTimeoutMs: '0' }, /invalid --replica-timeout-ms .*positive whole number/],
    [{ replicaTimeoutMs: '-5' }, /--replica-timeout-ms/],
    [{ repairWaitMs: 'soon' }, /invalid --repair-wait-ms .*whole number of milliseconds/],
    [{ rebuildRateBytes: 'fast' }, /invalid --rebuild-rate \/ CAIRN_REBUILD_RATE "fast": write bytes per second such as 200MiB, or 0 for unlimited/],
    [{ defaultReplicas: '2' }, /invalid --default-replicas .*the embedded store is a single node.*give --etcd-endpoints/],
    [{ ...etcd, ...insecure, defaultReplicas: '4' }, /--default-replicas .*from 1 to 3/],
    [{ ...etcd, ...insecure, defaultReplicas: '0' }, /--default-replicas .*from 1 to 3/],
  ];
  for (const [flags, message] of cases) {
    const err = t.throws(() => resolveConfig({ nodeName: 'node-a', ...flags }, {}, false), { instanceOf: StorageError }, JSON.stringify(flags));
    t.is(err?.code, Code.INVALID_ARGUMENT);
    t.regex(err?.message ?? '', message, JSON.stringify(flags));
  }
});

test('peer TLS files are made absolute', (t) => {
  const c = resolveConfig({ nodeName: 'n', peerListen: '127.0.0.1:0', peerTlsCa: 'ca.pem', peerTlsCert: 'node.pem', peerTlsKey: 'node-key.pem' }, {}, false);
  t.is(c.peerTlsCa, resolve('ca.pem'));
  t.deepEqual(peerTlsConfig(c), { caFile: resolve('ca.pem'), certFile: resolve('node.pem'), keyFile: resolve('node-key.pem') });
});

test('every setting parses through commander as cairnd declares them', (t) => {
  const program = new Command('cairnd').exitOverride();
  for (const s of SETTINGS) program.option(s.flag, s.description);
  program.parse(['--peer-insecure', '--peer-listen', '127.0.0.1:0', '--node-labels', 'a=b', '--rebuild-rate', '1MiB', '--node-name', 'n'], { from: 'user' });
  const c = resolveConfig(flagsFromCommander(program.opts()), {}, false);
  t.true(c.peerInsecure);
  t.is(c.peerListen, '127.0.0.1:0');
  t.deepEqual(c.nodeLabels, { a: 'b' });
  t.is(c.rebuildRateBytes, 1024 ** 2);
  t.is(c.nodeName, 'n');
});

test('TLS files without peers are accepted and unused', (t) => {
  const c = resolveConfig({ nodeName: 'n', ...TLS }, {}, false);
  t.false(peersEnabled(c));
  t.is(peerTlsConfig(c), undefined);
});

test('in a Kubernetes pod the service account reaches the API (exec actions); outside, nothing does', (t) => {
  t.is(resolveConfig({}, {}, false).kubernetes, undefined);
  const k = resolveConfig({}, { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }, false).kubernetes;
  t.is(k?.server, 'https://10.96.0.1:443');
  t.is(k?.tokenFile, '/var/run/secrets/kubernetes.io/serviceaccount/token');
  t.is(k?.caFile, '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt');
});
