// The pool backend choice (--pool-backend). On kernels without device-mapper (the dev
// machines) auto falls back to file and says why; dm fails with a typed error.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../src/common/log.js';
import { Code, StorageError } from '../../src/common/errors.js';
import { openPool } from '../../src/daemon/pool-factory.js';
import { isDeviceMapperAvailable } from '../../src/native/index.js';
import { onlyWhere } from '../helpers/prereq.js';

const hasDm = await isDeviceMapperAvailable().catch(() => false);
// Not a missing prerequisite: on a kernel with device-mapper these do not apply (test/kernel covers dm).
const withoutDm = onlyWhere(!hasDm, 'this kernel has device-mapper; test/kernel covers the dm backend', test);

function capture(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({ write(chunk: Buffer, _e, cb) { lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>); cb(); } });
  return { log: pino({ level: 'info' }, stream), lines };
}

withoutDm('auto takes the file backend where the kernel has no device-mapper, and logs why', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-pf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { log, lines } = capture();
  const pool = await openPool({ poolBackend: 'auto', poolDir: dir, poolDevices: ['/dev/loop0'], poolCapacityBytes: 0 }, log);
  t.is(pool.kind, 'file');
  await pool.close();
  const choice = lines.find((l) => l.msg === 'pool backend chosen');
  t.like(choice, { backend: 'file', reason: 'this kernel has no device-mapper' });
});

withoutDm('dm on a kernel without device-mapper is UNAVAILABLE with a hint', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-pf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { log } = capture();
  const err = await t.throwsAsync(openPool({ poolBackend: 'dm', poolDir: dir, poolDevices: ['/dev/loop0'], poolCapacityBytes: 0 }, log), { instanceOf: StorageError });
  t.is(err?.code, Code.UNAVAILABLE);
  t.regex(err?.message ?? '', /device-mapper is not available.*file pool backend/);
});
