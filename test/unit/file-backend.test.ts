// The file pool backend on the host's temp filesystem (snapshots by full copy when it is
// ext4) and on a loop-mounted xfs with reflink=1 (snapshots by FICLONE).
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtemp, open, readFile, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Code, StorageError } from '../../src/common/errors.js';
import { asDeviceId, type DeviceId } from '../../src/common/ids.js';
import type { Logger } from '../../src/common/log.js';
import { FileBackend, type FileBackendOptions } from '../../src/pool/file-backend.js';
import { loopFsUnavailable, makeLoopFs } from '../helpers/loop-fs.js';
import { requiring } from '../helpers/prereq.js';

const MiB = 1024 * 1024;
const NO_REFLINK = 'pool filesystem cannot reflink; snapshots are full copies';
const tmpIsExt4 = (await statfs(tmpdir())).type === 0xef53;
const xfsMissing = await loopFsUnavailable('xfs');

interface LogLine {
  msg: string;
  level: number;
  [key: string]: unknown;
}

function capture(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}

async function withPool(
  fn: (pool: FileBackend, lines: LogLine[], dir: string) => Promise<void>,
  options: Partial<FileBackendOptions> = {},
  parent = tmpdir(),
): Promise<void> {
  const dir = await mkdtemp(join(parent, 'cairn-pool-'));
  const { log, lines } = capture();
  const pool = await FileBackend.open({ dir, log, ...options });
  try {
    await fn(pool, lines, dir);
  } finally {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const id = (s: string): DeviceId => asDeviceId(s);

async function writeAt(pool: FileBackend, device: DeviceId, offset: number, data: Buffer): Promise<void> {
  const dev = await pool.open(device);
  try {
    await dev.write(offset, data);
    await dev.flush();
  } finally {
    await dev.close();
  }
}

async function readAll(pool: FileBackend, device: DeviceId): Promise<Buffer> {
  return readFile((await pool.inspect(device)).path);
}

test('create makes a sparse device of the exact size; inspect and list report it', async (t) => {
  await withPool(async (pool) => {
    const info = await pool.create(id('a'), 64 * MiB);
    t.is(info.sizeBytes, 64 * MiB);
    t.is(info.allocatedBytes, 0);
    t.is(info.id, id('a'));
    t.deepEqual(await pool.inspect(id('a')), info);
    await pool.create(id('b'), MiB);
    t.deepEqual((await pool.list()).map((d) => [d.id, d.sizeBytes]), [[id('a'), 64 * MiB], [id('b'), MiB]]);
    t.true((await readAll(pool, id('b'))).equals(Buffer.alloc(MiB)));
  });
});

test('create is idempotent for the same size and ALREADY_EXISTS for another', async (t) => {
  await withPool(async (pool) => {
    const first = await pool.create(id('a'), MiB);
    await writeAt(pool, id('a'), 0, Buffer.alloc(4096, 9));
    const again = await pool.create(id('a'), MiB);
    t.is(again.sizeBytes, first.sizeBytes);
    t.is((await readAll(pool, id('a')))[0], 9, 'a repeated create must not wipe the device');
    const err = await t.throwsAsync(pool.create(id('a'), 2 * MiB), { instanceOf: StorageError });
    t.is(err?.code, Code.ALREADY_EXISTS);
    const [x, y] = await Promise.all([pool.create(id('c'), MiB), pool.create(id('c'), MiB)]);
    t.deepEqual(x, y);
  });
});

test('sizes must be positive multiples of 512', async (t) => {
  await withPool(async (pool) => {
    for (const size of [0, -512, 1000, 1.5 * 512, Number.NaN]) {
      const err = await t.throwsAsync(pool.create(id('a'), size), { instanceOf: StorageError });
      t.is(err?.code, Code.INVALID_ARGUMENT, String(size));
    }
  });
});

test('allocated bytes and capacity follow the writes truthfully', async (t) => {
  await withPool(async (pool, _lines, dir) => {
    await pool.create(id('a'), 16 * MiB);
    await pool.create(id('b'), 8 * MiB);
    await writeAt(pool, id('a'), 4 * MiB, Buffer.alloc(MiB, 1));
    await writeAt(pool, id('b'), 0, Buffer.alloc(2 * MiB, 2));
    const a = await pool.inspect(id('a'));
    const b = await pool.inspect(id('b'));
    t.is(a.allocatedBytes, MiB);
    t.is(b.allocatedBytes, 2 * MiB);
    const cap = await pool.capacity();
    const fs = await statfs(dir);
    t.is(cap.usedBytes, 3 * MiB);
    t.is(cap.provisionedBytes, 24 * MiB);
    t.is(cap.totalBytes, fs.blocks * fs.bsize);
    t.true(Math.abs(cap.freeBytes - fs.bavail * fs.bsize) < 64 * MiB);
    const dev = await pool.open(id('a'));
    await dev.trim(4 * MiB, MiB);
    await dev.close();
    t.is((await pool.inspect(id('a'))).allocatedBytes, 0);
  });
});

test('resize grows, refuses to shrink, and needs the device', async (t) => {
  await withPool(async (pool) => {
    await pool.create(id('a'), MiB);
    await writeAt(pool, id('a'), 0, Buffer.alloc(512, 7));
    const grown = await pool.resize(id('a'), 4 * MiB);
    t.is(grown.sizeBytes, 4 * MiB);
    const data = await readAll(pool, id('a'));
    t.is(data.length, 4 * MiB);
    t.is(data[0], 7);
    t.deepEqual(await pool.resize(id('a'), 4 * MiB), grown);
    const shrink = await t.throwsAsync(pool.resize(id('a'), MiB), { instanceOf: StorageError });
    t.is(shrink?.code, Code.INVALID_ARGUMENT);
    const missing = await t.throwsAsync(pool.resize(id('nope'), MiB), { instanceOf: StorageError });
    t.is(missing?.code, Code.NOT_FOUND);
  });
});

test('delete is idempotent; inspect and open then answer NOT_FOUND', async (t) => {
  await withPool(async (pool) => {
    await pool.create(id('a'), MiB);
    await pool.delete(id('a'));
    await pool.delete(id('a'));
    await pool.delete(id('never'));
    t.deepEqual(await pool.list(), []);
    t.is((await t.throwsAsync(pool.inspect(id('a')), { instanceOf: StorageError }))?.code, Code.NOT_FOUND);
    t.is((await t.throwsAsync(pool.open(id('a')), { instanceOf: StorageError }))?.code, Code.NOT_FOUND);
  });
});

/** The snapshot holds the source's bytes at snapshot time and ignores later writes. */
async function checkSnapshot(t: import('ava').ExecutionContext, pool: FileBackend): Promise<void> {
  await pool.create(id('src'), 32 * MiB);
  await writeAt(pool, id('src'), 0, Buffer.alloc(MiB, 0xa1));
  await writeAt(pool, id('src'), 20 * MiB, Buffer.alloc(MiB, 0xa2));
  const before = await readAll(pool, id('src'));
  const snap = await pool.snapshot(id('src'), id('snap'));
  t.is(snap.sizeBytes, 32 * MiB);
  t.true((await readAll(pool, id('snap'))).equals(before));
  t.true(snap.allocatedBytes <= 4 * MiB, `snapshot allocated ${snap.allocatedBytes}: holes were filled`);
  await writeAt(pool, id('src'), 0, Buffer.alloc(MiB, 0xb1));
  await writeAt(pool, id('src'), 10 * MiB, Buffer.alloc(MiB, 0xb2));
  t.true((await readAll(pool, id('snap'))).equals(before));
  t.deepEqual(await pool.snapshot(id('src'), id('snap')), await pool.inspect(id('snap')));
  t.is((await t.throwsAsync(pool.snapshot(id('gone'), id('s2')), { instanceOf: StorageError }))?.code, Code.NOT_FOUND);
}

requiring(tmpIsExt4 ? undefined : `needs ${tmpdir()} on ext4 (it is not): set TMPDIR to a directory on ext4`, test)(
  'snapshot on ext4 is a full sparse copy with one warning',
  async (t) => {
    await withPool(async (pool, lines) => {
      await checkSnapshot(t, pool);
      await pool.snapshot(id('src'), id('snap2'));
      t.is(lines.filter((l) => l.msg === NO_REFLINK).length, 1);
    });
  },
);

requiring(xfsMissing, test.serial)(
  'snapshot on xfs with reflink=1 uses FICLONE',
  async (t) => {
    const fs = await makeLoopFs('xfs');
    try {
      await withPool(async (pool, lines) => {
        await checkSnapshot(t, pool);
        t.is(lines.filter((l) => l.msg === NO_REFLINK).length, 0);
      }, {}, fs.mountPoint);
    } finally {
      await fs.dispose();
    }
  },
);

test('open removes temp files of interrupted calls and keeps devices', async (t) => {
  await withPool(async (pool, _lines, dir) => {
    await pool.create(id('keep'), MiB);
    await writeFile(join(dir, 'devices', '.half.0a1b2c.tmp'), Buffer.alloc(4096, 1));
    const { log, lines } = capture();
    const reopened = await FileBackend.open({ dir, log });
    t.deepEqual(await readdir(join(dir, 'devices')), ['keep.img']);
    t.deepEqual((await reopened.list()).map((d) => d.id), [id('keep')]);
    t.deepEqual(lines.filter((l) => l.msg === 'stale temp file removed').map((l) => l.file), ['.half.0a1b2c.tmp']);
  });
});

test('RESOURCE_EXHAUSTED past capacityBytes times the overcommit ratio', async (t) => {
  await withPool(async (pool, _lines, dir) => {
    t.is((await pool.capacity()).totalBytes, 4 * MiB);
    await pool.create(id('a'), 3 * MiB);
    const over = await t.throwsAsync(pool.create(id('b'), 2 * MiB), { instanceOf: StorageError });
    t.is(over?.code, Code.RESOURCE_EXHAUSTED);
    t.is((await t.throwsAsync(pool.resize(id('a'), 5 * MiB), { instanceOf: StorageError }))?.code, Code.RESOURCE_EXHAUSTED);
    t.is((await t.throwsAsync(pool.snapshot(id('a'), id('s')), { instanceOf: StorageError }))?.code, Code.RESOURCE_EXHAUSTED);
    await pool.resize(id('a'), 4 * MiB);
    await pool.delete(id('a'));
    const both = await Promise.allSettled([pool.create(id('x'), 3 * MiB), pool.create(id('y'), 3 * MiB)]);
    t.is(both.filter((r) => r.status === 'fulfilled').length, 1, 'concurrent creates must see each other');
    t.is((await readdir(join(dir, 'devices'))).length, 1, 'the refused create must leave no file behind');
  }, { capacityBytes: 4 * MiB });
  await withPool(async (pool) => {
    await pool.create(id('a'), 3 * MiB);
    await pool.create(id('b'), 3 * MiB);
    t.is((await t.throwsAsync(pool.create(id('c'), 3 * MiB), { instanceOf: StorageError }))?.code, Code.RESOURCE_EXHAUSTED);
  }, { capacityBytes: 4 * MiB, overcommitRatio: 2 });
});

test('kill -9 during a snapshot leaves no device that looks real', async (t) => {
  await withPool(async (pool, _lines, dir) => {
    await pool.create(id('big'), 512 * MiB);
    const fh = await open((await pool.inspect(id('big'))).path, 'r+');
    for (let at = 0; at < 256 * MiB; at += 8 * MiB) await fh.write(Buffer.alloc(8 * MiB, 0x5c), 0, 8 * MiB, at);
    await fh.close();
    const modulePath = fileURLToPath(new URL('../../src/pool/file-backend.ts', import.meta.url));
    const script = `import { FileBackend } from ${JSON.stringify(modulePath)};
      import { silentLogger } from ${JSON.stringify(fileURLToPath(new URL('../../src/common/log.ts', import.meta.url)))};
      const pool = await FileBackend.open({ dir: ${JSON.stringify(dir)}, log: silentLogger() });
      await pool.snapshot('big', 'snap');`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: 'ignore' });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    let sawTemp = false;
    for (let i = 0; i < 400 && !sawTemp && child.exitCode === null; i++) {
      sawTemp = (await readdir(join(dir, 'devices'))).some((n) => n.endsWith('.tmp'));
      if (!sawTemp) await new Promise((r) => setTimeout(r, 10));
    }
    child.kill('SIGKILL');
    await exited;
    t.true(sawTemp, 'the child never started the snapshot');
    const reopened = await FileBackend.open({ dir, log: capture().log });
    const ids = (await reopened.list()).map((d) => d.id);
    t.true(ids.length === 1 || (await reopened.inspect(id('snap'))).sizeBytes === 512 * MiB, ids.join());
    t.deepEqual((await readdir(join(dir, 'devices'))).filter((n) => n.endsWith('.tmp')), []);
  });
});
