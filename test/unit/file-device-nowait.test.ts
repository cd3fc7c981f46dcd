/**
 * preadv2(RWF_NOWAIT) where the filesystem does not support it (issue 9, item 5): the file
 * device falls back to the thread pool for good, once per device, with one log line, and
 * every read still succeeds.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { truncate, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { DeviceId } from '../../src/common/ids.js';
import { silentLogger, type Logger } from '../../src/common/log.js';
import { nativeIo, type NativeIo } from '../../src/native/io.js';
import { openFileDevice } from '../../src/pool/file-device.js';
import { makeTempDir, removeDir } from '../helpers/nbd-fixture.js';

const MiB = 1 << 20;

/** The real native I/O, except that preadv2(RWF_NOWAIT) answers `-errno`. */
function nowaitFails(errno: number): NativeIo & { nowaitCalls: number } {
  const real = nativeIo();
  const io = {
    nowaitCalls: 0,
    ioPreadNowait: () => {
      io.nowaitCalls++;
      return -errno;
    },
    ioPwrite: real.ioPwrite.bind(real),
    ioPwritev: real.ioPwritev.bind(real),
    ioDupFd: real.ioDupFd.bind(real),
    ioSubmit: real.ioSubmit.bind(real),
  };
  return io;
}

/** A logger that records the messages of its warn() calls. */
function recordingLogger(): { log: Logger; warnings: string[] } {
  const warnings: string[] = [];
  const base = silentLogger();
  const log = new Proxy(base, {
    get(target, prop, receiver) {
      if (prop === 'warn') return (_fields: unknown, msg: string) => void warnings.push(msg);
      if (prop === 'child') return () => log;
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
  return { log, warnings };
}

for (const name of ['EOPNOTSUPP', 'ENOSYS'] as const) {
  test(`preadv2(RWF_NOWAIT) answering ${name}: reads go to the thread pool for good, logged once`, async (t) => {
    const dir = await makeTempDir();
    t.teardown(() => removeDir(dir));
    const file = join(dir, 'dev.img');
    await writeFile(file, '');
    await truncate(file, 8 * MiB);
    const io = nowaitFails(osConstants.errno[name]);
    const { log, warnings } = recordingLogger();
    const dev = await openFileDevice(file, 'dev-1' as DeviceId, 8 * MiB, log, io);
    const data = randomBytes(3 * 4096);
    await dev.write(4096, data);
    t.true((await dev.read(4096, data.length)).equals(data));
    const a = Buffer.alloc(4096);
    const b = Buffer.alloc(8192);
    await dev.readInto!(4096, [a, b]);
    t.true(Buffer.concat([a, b]).equals(data));
    const one = Buffer.alloc(4096);
    await dev.readInto!(8192, [one]);
    t.true(one.equals(data.subarray(4096, 8192)));
    t.is(io.nowaitCalls, 1, 'RWF_NOWAIT is not tried again after the first refusal');
    t.deepEqual(warnings, ['preadv2(RWF_NOWAIT) is not supported here; reads use the thread pool']);
    await dev.close();
  });
}

test('preadv2(RWF_NOWAIT) answering EIO still fails the read', async (t) => {
  const dir = await makeTempDir();
  t.teardown(() => removeDir(dir));
  const file = join(dir, 'dev.img');
  await writeFile(file, '');
  await truncate(file, MiB);
  const dev = await openFileDevice(file, 'dev-1' as DeviceId, MiB, silentLogger(), nowaitFails(osConstants.errno.EIO));
  const err = await t.throwsAsync(dev.read(0, 4096));
  t.is((err as { errnoName?: string }).errnoName, 'EIO');
  await dev.close();
});

/** The real native I/O, with page-cache writes that take `slowMs` while `slow()` says so; counts thread-pool jobs. */
function slowWrites(slow: () => boolean, slowMs: number): NativeIo & { jobs: number } {
  const real = nativeIo();
  const wait = (): void => {
    if (!slow()) return;
    const until = performance.now() + slowMs;
    while (performance.now() < until) { /* the kernel holding the write */ }
  };
  const io = {
    jobs: 0,
    ioPreadNowait: real.ioPreadNowait.bind(real),
    ioPwrite: (fd: number, buf: Uint8Array, pos: number) => {
      wait();
      return real.ioPwrite(fd, buf, pos);
    },
    ioPwritev: (fd: number, bufs: readonly Uint8Array[], pos: number) => {
      wait();
      return real.ioPwritev(fd, bufs, pos);
    },
    ioDupFd: real.ioDupFd.bind(real),
    ioSubmit: (...args: Parameters<NativeIo['ioSubmit']>) => {
      io.jobs++;
      real.ioSubmit(...args);
    },
  };
  return io;
}

test('one slow page-cache write (a preemption) keeps writes on the event loop; three in a row move them to the thread pool', async (t) => {
  const dir = await makeTempDir();
  t.teardown(() => removeDir(dir));
  const file = join(dir, 'dev.img');
  await writeFile(file, '');
  await truncate(file, MiB);
  let slowNext = 0;
  const io = slowWrites(() => slowNext-- > 0, 5);
  const dev = await openFileDevice(file, 'dev-1' as DeviceId, MiB, silentLogger(), io);
  const block = (i: number): Buffer => Buffer.alloc(4096, i);
  for (let round = 0; round < 3; round++) {
    slowNext = 2; // two slow writes, then a fast one: isolated stalls
    for (let i = 0; i < 4; i++) await dev.write(i * 4096, block(i));
  }
  t.is(io.jobs, 0, 'no write went to the thread pool');
  slowNext = 3;
  for (let i = 0; i < 3; i++) await dev.write(i * 4096, block(i + 10));
  await dev.write(3 * 4096, block(13));
  t.is(io.jobs, 1, 'after three slow writes in a row the next one took the thread pool');
  const back = await dev.read(0, 4 * 4096);
  t.true(back.equals(Buffer.concat([10, 11, 12, 13].map(block))));
  await dev.close();
});
