// Device-mapper calls. On a kernel without device-mapper (this project's dev machines)
// every call must fail with DeviceMapperUnavailableError; on one with it (the qemu guest
// of notes/kernel-vm.md), a round trip on a `zero` target.
import test from 'ava';
import { Code, StorageError, SystemError } from '../../src/common/errors.js';
import {
  DeviceMapperUnavailableError,
  dmCreate,
  dmList,
  dmLoadTable,
  dmMessage,
  dmRemove,
  dmResume,
  dmStatus,
  dmSuspend,
  dmVersion,
  isDeviceMapperAvailable,
} from '../../src/native/index.js';
import { missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';

const MESSAGE = 'device-mapper is not available in this kernel: load dm_mod (modprobe dm_mod) or use the file pool backend';
const available = await isDeviceMapperAvailable().catch(() => false);
// Exactly one of the two applies to a kernel; neither is a missing prerequisite. On the
// dev machines and CI hosts (no device-mapper) the round trip runs in the kernel VM instead.
const withoutDm = onlyWhere(!available, 'this kernel has device-mapper', test);
const withDm = onlyWhere(available, 'this kernel has no device-mapper (the test above asserts what it answers); test/kernel/native-dm.test.ts runs this in the kernel VM',
  requiring(missingRoot('device-mapper ioctls'), test.serial));

withoutDm('every dm call fails with DeviceMapperUnavailableError', async (t) => {
  t.false(await isDeviceMapperAvailable());
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['version', () => dmVersion()],
    ['create', () => dmCreate('cairn-test', { uuid: 'CAIRN-test' })],
    ['load', () => dmLoadTable('cairn-test', [{ startSector: 0, lengthSectors: 8, type: 'zero', params: '' }])],
    ['suspend', () => dmSuspend('cairn-test', { noFlush: true, noLockfs: true })],
    ['resume', () => dmResume('cairn-test')],
    ['remove', () => dmRemove('cairn-test')],
    ['message', () => dmMessage('cairn-test', 'create_thin 0')],
    ['status', () => dmStatus('cairn-test', { table: true })],
    ['list', () => dmList()],
  ];
  for (const [name, call] of calls) {
    const err = await t.throwsAsync(call(), { instanceOf: DeviceMapperUnavailableError }, name);
    t.is(err?.message, MESSAGE, name);
    t.is(err?.code, Code.UNAVAILABLE, name);
    t.true(err instanceof SystemError, name);
    t.is(err?.syscall, 'open(/dev/mapper/control)', name);
    t.true(['ENOENT', 'ENODEV', 'ENXIO'].includes(err!.errnoName), name);
  }
});

test('bad dm arguments are INVALID_ARGUMENT before any ioctl', async (t) => {
  const cases: Array<[string, () => Promise<unknown>]> = [
    ['empty name', () => dmCreate('')],
    ['slash in name', () => dmCreate('a/b')],
    ['long name', () => dmCreate('x'.repeat(128))],
    ['long uuid', () => dmCreate('ok', { uuid: 'u'.repeat(129) })],
    ['long type', () => dmLoadTable('ok', [{ startSector: 0, lengthSectors: 8, type: 'x'.repeat(16), params: '' }])],
    ['negative length', () => dmLoadTable('ok', [{ startSector: 0, lengthSectors: -8, type: 'zero', params: '' }])],
    ['NUL in params', () => dmLoadTable('ok', [{ startSector: 0, lengthSectors: 8, type: 'zero', params: 'a\0b' }])],
    ['empty message', () => dmMessage('ok', '')],
  ];
  for (const [name, call] of cases) {
    const err = await t.throwsAsync(call(), { instanceOf: StorageError }, name);
    t.is(err?.code, Code.INVALID_ARGUMENT, name);
  }
});

withDm('create, load, resume, status, list, suspend, remove a zero target', async (t) => {
  const name = `cairn-test-${process.pid}`;
  const version = await dmVersion();
  t.is(version.major, 4);
  const created = await dmCreate(name, { uuid: `CAIRN-${name}` });
  try {
    t.true(created.major > 0);
    await dmLoadTable(name, [{ startSector: 0, lengthSectors: 2048, type: 'zero', params: '' }]);
    await dmResume(name);
    const table = await dmStatus(name, { table: true });
    t.deepEqual(table.targets, [{ startSector: 0, lengthSectors: 2048, type: 'zero', params: '' }]);
    t.true(table.activePresent);
    t.false(table.suspended);
    const listed = (await dmList()).find((d) => d.name === name);
    t.deepEqual(listed, { name, major: created.major, minor: created.minor });
    await dmSuspend(name, { noFlush: true });
    t.true((await dmStatus(name)).suspended);
    await dmResume(name);
  } finally {
    await dmRemove(name);
  }
  const gone = await t.throwsAsync(dmStatus(name), { instanceOf: SystemError });
  t.is(gone?.errnoName, 'ENXIO');
  t.is(gone?.code, Code.NOT_FOUND);
});
