/**
 * Growing a dm pool that fails half-way rolls back; a rollback that fails too is logged
 * with both errors, and the caller still gets the original error. The kernel is faked
 * (no root needed); the pool state file is real.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Code, StorageError } from '../../src/common/errors.js';
import { ThinPool, type ThinPoolKernel } from '../../src/pool/dm-pool.js';
import { loadPoolState, newPoolState, savePoolState } from '../../src/pool/dm-state.js';

test('a failed rollback of addDisk is logged with the original error and the rollback error', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-dmpool-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const state = newPoolState('tg', 128, 8192, [{ path: '/dev/fake0', sizeSectors: 1 << 21 }]);
  await savePoolState(dir, state);
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  let reloads = 0;
  const kernel: ThinPoolKernel = {
    inspectDisk: async (path) => ({ sizeSectors: 1 << 21, dev: path === '/dev/fake0' ? '7:0' : '7:1' }),
    findDevice: async () => undefined,
    reloadDevice: async () => {
      reloads++;
      throw new StorageError(reloads === 1 ? Code.INTERNAL : Code.UNAVAILABLE, reloads === 1 ? 'grow: table load failed' : 'rollback: device busy');
    },
  };
  const pool = new ThinPool(dir, state, log, kernel);
  const err = await t.throwsAsync(pool.addDisk('/dev/fake1'));
  t.is(err?.message, 'grow: table load failed', 'the caller gets the original error');
  t.deepEqual((await loadPoolState(dir))!.disks.map((d) => d.path), ['/dev/fake0'], 'the state is rolled back');
  const logged = lines.filter((l) => l.level === 50);
  t.is(logged.length, 1, JSON.stringify(lines));
  t.regex(JSON.stringify(logged[0]), /grow: table load failed/);
  t.regex(JSON.stringify(logged[0]), /rollback: device busy/);
});
