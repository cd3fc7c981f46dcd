import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { resolveConfig } from '../../src/daemon/config.js';

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
