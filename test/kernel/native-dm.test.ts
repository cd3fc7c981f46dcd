// The native device-mapper calls against a real kernel (VM only): a round trip, and bad
// input (missing devices, bad tables, bad messages) answered with typed errors and no
// half-made devices left behind.
import test from 'ava';
import { Code, SystemError } from '../../src/common/errors.js';
import { createLogger } from '../../src/common/log.js';
import { dmCreate, dmList, dmLoadTable, dmMessage, dmRemove, dmResume, dmStatus, dmSuspend, dmVersion } from '../../src/native/index.js';
import { ensureDevice } from '../../src/pool/dm-kernel.js';
import { MIB, makePool } from '../helpers/dm-pool.js';
import { makeLoopDevice } from '../helpers/loop-fs.js';

const log = createLogger({ level: 'silent', format: 'json' });
let n = 0;
const name = (what: string): string => `cairn-nt-${process.pid}-${what}-${++n}`;

async function names(): Promise<string[]> {
  return (await dmList()).map((d) => d.name);
}

test.serial('create, load, resume, status, list, suspend, message, remove', async (t) => {
  t.is((await dmVersion()).major, 4);
  const dm = name('zero');
  const created = await dmCreate(dm, { uuid: `CAIRN-${dm}` });
  t.teardown(() => dmRemove(dm).catch(() => undefined));
  t.true(created.major > 0);
  t.false(created.activePresent);
  await dmLoadTable(dm, [{ startSector: 0, lengthSectors: 2048, type: 'zero', params: '' }]);
  t.true((await dmStatus(dm)).inactivePresent);
  await dmResume(dm);
  const table = await dmStatus(dm, { table: true });
  t.deepEqual(table.targets, [{ startSector: 0, lengthSectors: 2048, type: 'zero', params: '' }]);
  t.true(table.activePresent);
  t.deepEqual((await dmList()).find((d) => d.name === dm), { name: dm, major: created.major, minor: created.minor });
  await dmSuspend(dm, { noFlush: true, noLockfs: true });
  t.true((await dmStatus(dm)).suspended);
  await dmResume(dm);
  t.false((await dmStatus(dm)).suspended);
  await dmRemove(dm);
  t.false((await names()).includes(dm));
});

test.serial('a missing device is NOT_FOUND (ENXIO) for every call that names one', async (t) => {
  const dm = name('missing');
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['status', () => dmStatus(dm)],
    ['load', () => dmLoadTable(dm, [{ startSector: 0, lengthSectors: 8, type: 'zero', params: '' }])],
    ['suspend', () => dmSuspend(dm)],
    ['resume', () => dmResume(dm)],
    ['message', () => dmMessage(dm, 'create_thin 0')],
    ['remove', () => dmRemove(dm)],
  ];
  for (const [what, call] of calls) {
    const err = await t.throwsAsync(call(), { instanceOf: SystemError }, what);
    t.is(err?.errnoName, 'ENXIO', what);
    t.is(err?.code, Code.NOT_FOUND, what);
  }
});

test.serial('a taken name or uuid is ALREADY_EXISTS (the kernel says EBUSY)', async (t) => {
  const dm = name('dup');
  await dmCreate(dm, { uuid: `CAIRN-${dm}` });
  t.teardown(() => dmRemove(dm).catch(() => undefined));
  const err = await t.throwsAsync(dmCreate(dm), { instanceOf: SystemError });
  t.is(err?.errnoName, 'EBUSY');
  t.is(err?.code, Code.ALREADY_EXISTS);
  const other = name('dup-uuid');
  const uuid = await t.throwsAsync(dmCreate(other, { uuid: `CAIRN-${dm}` }), { instanceOf: SystemError });
  t.is(uuid?.code, Code.ALREADY_EXISTS);
  t.false((await names()).includes(other));
});

test.serial('bad tables are INVALID_ARGUMENT and load nothing', async (t) => {
  const loop = await makeLoopDevice(4 * MIB);
  t.teardown(() => loop.dispose());
  const dm = name('badtable');
  await dmCreate(dm);
  t.teardown(() => dmRemove(dm).catch(() => undefined));
  const tables = {
    'unknown target type': [{ startSector: 0, lengthSectors: 8, type: 'no-such-target', params: '' }],
    'missing underlying device': [{ startSector: 0, lengthSectors: 8, type: 'linear', params: '/dev/cairn-no-such-disk 0' }],
    'linear past the end of its disk': [{ startSector: 0, lengthSectors: 16384, type: 'linear', params: `${loop.device} 0` }],
    'a gap between targets': [
      { startSector: 0, lengthSectors: 8, type: 'zero', params: '' },
      { startSector: 16, lengthSectors: 8, type: 'zero', params: '' },
    ],
    'garbage thin-pool parameters': [{ startSector: 0, lengthSectors: 128, type: 'thin-pool', params: 'not a pool line' }],
  };
  for (const [what, targets] of Object.entries(tables)) {
    const err = await t.throwsAsync(dmLoadTable(dm, targets), { instanceOf: SystemError }, what);
    t.true(['EINVAL', 'ENXIO', 'ENODEV', 'ENOENT'].includes(err!.errnoName), `${what}: ${err?.errnoName}`);
    const s = await dmStatus(dm);
    t.false(s.inactivePresent || s.activePresent, `${what}: no table loaded`);
  }
});

test.serial('ensureDevice with a bad table leaves no device behind', async (t) => {
  const dm = name('half');
  await t.throwsAsync(ensureDevice(dm, [{ startSector: 0, lengthSectors: 8, type: 'linear', params: '/dev/cairn-no-such-disk 0' }], log), { instanceOf: SystemError });
  t.false((await names()).includes(dm));
});

test.serial('thin-pool messages: unknown message, taken thin id, unknown thin id', async (t) => {
  const p = await makePool(t, [32 * MIB]);
  const pool = `cairn-${p.tag}-pool`;
  const bad = await t.throwsAsync(dmMessage(pool, 'no_such_message 1'), { instanceOf: SystemError });
  t.is(bad?.code, Code.INVALID_ARGUMENT);
  await dmMessage(pool, 'create_thin 900');
  const taken = await t.throwsAsync(dmMessage(pool, 'create_thin 900'), { instanceOf: SystemError });
  t.is(taken?.errnoName, 'EEXIST');
  await dmMessage(pool, 'delete 900');
  const unknown = await t.throwsAsync(dmMessage(pool, 'delete 900'), { instanceOf: SystemError });
  t.is(unknown?.errnoName, 'ENODATA');
  const zero = name('zero-msg');
  await dmCreate(zero);
  t.teardown(() => dmRemove(zero).catch(() => undefined));
  await dmLoadTable(zero, [{ startSector: 0, lengthSectors: 8, type: 'zero', params: '' }]);
  await dmResume(zero);
  const notPool = await t.throwsAsync(dmMessage(zero, 'create_thin 1'), { instanceOf: SystemError });
  t.is(notPool?.code, Code.INVALID_ARGUMENT);
});
