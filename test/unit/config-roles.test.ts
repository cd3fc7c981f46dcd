/**
 * --role and --csi-socket: defaults, the environment, bad values, and the controller role
 * refused on the embedded store (it needs the etcd the node daemons share).
 */
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { peerTlsConfig, resolveConfig, SETTINGS } from '../../src/daemon/config.js';

const ETCD = { etcdEndpoints: 'http://etcd-0:2379', peerInsecure: 'true' };

function refused(t: import('ava').ExecutionContext, flags: Record<string, string>, env: Record<string, string>, message: RegExp): void {
  const err = t.throws(() => resolveConfig(flags, env, false), { instanceOf: StorageError });
  t.is(err?.code, Code.INVALID_ARGUMENT);
  t.regex(err?.message ?? '', message);
}

test('the default role is all, with the CSI socket in the data directory', (t) => {
  const c = resolveConfig({ dataDir: '/srv/cairn' }, {}, false);
  t.is(c.role, 'all');
  t.is(c.csiSocket, '/srv/cairn/csi.sock');
});

test('node and controller roles default the CSI socket to the data directory too', (t) => {
  t.is(resolveConfig({ role: 'node', dataDir: '/d' }, {}, false).csiSocket, '/d/csi.sock');
  t.is(resolveConfig({ ...ETCD, role: 'controller', dataDir: '/d' }, {}, false).csiSocket, '/d/csi.sock');
});

test('CAIRN_ROLE and CAIRN_CSI_SOCKET set them; the flags win', (t) => {
  const env = { CAIRN_ROLE: 'node', CAIRN_CSI_SOCKET: '/var/lib/kubelet/plugins/csi.cairn.dev/csi.sock' };
  const fromEnv = resolveConfig({}, env, false);
  t.is(fromEnv.role, 'node');
  t.is(fromEnv.csiSocket, '/var/lib/kubelet/plugins/csi.cairn.dev/csi.sock');
  const fromFlags = resolveConfig({ role: 'all', csiSocket: '/run/csi/csi.sock' }, env, false);
  t.is(fromFlags.role, 'all');
  t.is(fromFlags.csiSocket, '/run/csi/csi.sock');
});

test('a relative CSI socket path is made absolute', (t) => {
  t.is(resolveConfig({ csiSocket: 'csi.sock' }, {}, false).csiSocket, `${process.cwd()}/csi.sock`);
});

test('an unknown role and a CSI socket path too long for a unix socket are refused, naming the flag and the variable', (t) => {
  refused(t, { role: 'master' }, {}, /--role \/ CAIRN_ROLE "master".*node, controller, all/);
  refused(t, {}, { CAIRN_ROLE: 'Controller' }, /--role \/ CAIRN_ROLE/);
  refused(t, { csiSocket: `/tmp/${'s'.repeat(120)}` }, {}, /--csi-socket \/ CAIRN_CSI_SOCKET.*107 bytes/);
});

test('the controller role on the embedded store is refused with what to do instead', (t) => {
  refused(t, { role: 'controller' }, {}, /--etcd-endpoints.*--role all/);
  refused(t, {}, { CAIRN_ROLE: 'controller' }, /--etcd-endpoints/);
});

test('the controller role runs no replica service but dials the nodes over peer TLS', (t) => {
  const c = resolveConfig({ ...ETCD, role: 'controller' }, {}, false);
  t.is(c.peerListen, '', 'no peer port by default');
  t.deepEqual(peerTlsConfig(c), { insecure: true });
  refused(t, { ...ETCD, role: 'controller', peerListen: '0.0.0.0:9471' }, {}, /--peer-listen.*controller role hosts no replicas/);
  refused(t, { etcdEndpoints: 'http://etcd-0:2379', role: 'controller' }, {}, /peer TLS is required/);
});

test('a node of an etcd cluster keeps today\'s peer port default', (t) => {
  t.is(resolveConfig({ ...ETCD, role: 'node' }, {}, false).peerListen, '0.0.0.0:9471');
});

test('both settings are in the settings table with a flag, a variable and a default', (t) => {
  const role = SETTINGS.find((s) => s.key === 'role');
  const socket = SETTINGS.find((s) => s.key === 'csiSocket');
  t.like(role, { flag: '--role <role>', env: 'CAIRN_ROLE', defaultText: 'all' });
  t.like(socket, { flag: '--csi-socket <path>', env: 'CAIRN_CSI_SOCKET', defaultText: '<data-dir>/csi.sock' });
});
