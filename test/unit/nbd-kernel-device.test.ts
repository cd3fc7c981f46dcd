// The client side of kernel attach that runs without the nbd driver: the socket the addon
// opens, the NBD handshake on it against Cairn's own export server (then a real read on the
// negotiated fd), the errors a refused or unserved export gives, and what the netlink calls
// say on a kernel without nbd. CONNECT/RECONFIGURE themselves run in the VM
// (test/kernel/nbd-restart.test.ts).
import test from 'ava';
import { closeSync, existsSync, read, write } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Code, StorageError, SystemError } from '../../src/common/errors.js';
import * as C from '../../src/engine/nbd/codec.js';
import * as P from '../../src/engine/nbd/protocol.js';
import { isExportUnreachable, openNegotiatedSocket } from '../../src/engine/nbd-kernel-device.js';
import { nbdConnect, nbdDisconnect, nbdResize } from '../../src/native/index.js';
import { makeTempDir, startExport } from '../helpers/nbd-fixture.js';
import { onlyWhere } from '../helpers/prereq.js';

const readAsync = promisify(read);
const writeAsync = promisify(write);
const SIZE = 4 << 20;

async function readExact(fd: number, n: number): Promise<Buffer> {
  const buf = Buffer.alloc(n);
  for (let at = 0; at < n;) {
    const { bytesRead } = await readAsync(fd, buf, at, n - at, null);
    if (bytesRead === 0) throw new Error('EOF');
    at += bytesRead;
  }
  return buf;
}

test('the handshake on the addon\'s socket gives size and flags, and the fd then serves NBD reads', async (t) => {
  const dir = await makeTempDir();
  const exp = await startExport(dir, 'vol-h', SIZE);
  t.teardown(async () => {
    await exp.close();
    await rm(dir, { recursive: true, force: true });
  });
  const pattern = Buffer.alloc(4096, 0x5a);
  await exp.device.write(8192, pattern);

  const { fd, exp: negotiated } = await openNegotiatedSocket(exp.socketPath, 'vol-h');
  t.teardown(() => closeSync(fd));
  t.is(negotiated.sizeBytes, SIZE);
  for (const f of [P.NBD_FLAG_HAS_FLAGS, P.NBD_FLAG_SEND_FLUSH, P.NBD_FLAG_SEND_FUA, P.NBD_FLAG_SEND_TRIM]) t.truthy(negotiated.transmissionFlags & f);
  t.falsy(negotiated.transmissionFlags & P.NBD_FLAG_SEND_DF, 'no structured replies were negotiated (the kernel reads simple replies only)');
  t.deepEqual(negotiated.blockSizes, { minimum: 512, preferred: 4096, maximum: 32 << 20 });

  // What the kernel would do next on this fd: a read request, a simple reply, the bytes.
  await writeAsync(fd, C.encodeRequest({ type: P.NBD_CMD_READ, cookie: 7n, offset: 8192, length: 4096 }));
  const header = C.decodeReplyHeader(await readExact(fd, P.SIMPLE_REPLY_BYTES));
  t.deepEqual([header?.structured, header?.error, header?.cookie], [false, 0, 7n]);
  t.true((await readExact(fd, 4096)).equals(pattern));
});

test('an export the server does not have is NOT_FOUND, and an unserved socket is "unreachable"', async (t) => {
  const dir = await makeTempDir();
  const exp = await startExport(dir, 'vol-h', SIZE);
  t.teardown(async () => {
    await exp.close();
    await rm(dir, { recursive: true, force: true });
  });
  const refused = await t.throwsAsync(openNegotiatedSocket(exp.socketPath, 'other'), { instanceOf: StorageError });
  t.is(refused?.code, Code.NOT_FOUND);
  t.regex(refused?.message ?? '', /refused export "other"/);
  t.false(isExportUnreachable(refused));

  const missing = await t.throwsAsync(openNegotiatedSocket(join(dir, 'none.sock'), 'vol-h'), { instanceOf: SystemError });
  t.is(missing?.errnoName, 'ENOENT');
  t.true(isExportUnreachable(missing));
});

test('nbd netlink arguments are checked before any call', async (t) => {
  const config = { fd: 0, index: -1, sizeBytes: SIZE, blockSizeBytes: 1000, serverFlags: 1, clientFlags: 0, timeoutS: 30, deadConnTimeoutS: 120, backend: 'cairn:x' };
  const bad = await t.throwsAsync(nbdConnect(config), { instanceOf: StorageError });
  t.is(bad?.code, Code.INVALID_ARGUMENT);
  t.is((await t.throwsAsync(nbdDisconnect(-1), { instanceOf: StorageError }))?.code, Code.INVALID_ARGUMENT);
  t.is((await t.throwsAsync(nbdResize(0, 0, 'cairn:x'), { instanceOf: StorageError }))?.code, Code.INVALID_ARGUMENT, 'a size of 0');
  t.is((await t.throwsAsync(nbdResize(-1, SIZE, 'cairn:x'), { instanceOf: StorageError }))?.code, Code.INVALID_ARGUMENT);
});

const withoutNbd = onlyWhere(!existsSync('/sys/module/nbd'), 'this kernel has the nbd driver (test/kernel covers it)', test);
withoutNbd('on a kernel without nbd the netlink calls are UNAVAILABLE and say so', async (t) => {
  const resize = await t.throwsAsync(nbdResize(0, SIZE, 'cairn:x'), { instanceOf: SystemError });
  t.is(resize?.code, Code.UNAVAILABLE);
  const err = await t.throwsAsync(nbdDisconnect(0), { instanceOf: SystemError });
  t.is(err?.code, Code.UNAVAILABLE);
  t.is(err?.errnoName, 'ENOENT');
  t.regex(err?.message ?? '', /no nbd driver.*modprobe nbd/);
});
