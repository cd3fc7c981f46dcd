/**
 * Bringing the dm pool's devices back at start-up, from dm-pool.json: after a cairnd
 * restart the kernel still has them (each is checked and kept); after a reboot it has none
 * (each is stacked again; the blocks were always in the thin-pool metadata). Changes that a
 * crash interrupted are finished: a device still `creating` is rolled back (its caller was
 * never told it exists), one `deleting` is deleted. dm devices with the pool's prefix that
 * the state does not know (left by a crash between two steps) are removed.
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import type { DeviceId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { dmList } from '../native/index.js';
import { thinName, thinTable } from './dm-layout.js';
import { ensureDevice, isErrno, removeDevice } from './dm-kernel.js';
import type { ThinPool } from './dm-pool.js';
import { savePoolState } from './dm-state.js';

/** A stable tag for a pool directory: 8 hex digits of its absolute path's hash. */
export function poolTag(dir: string): string {
  return createHash('sha256').update(resolve(dir)).digest('hex').slice(0, 8);
}

async function dropThin(pool: ThinPool, id: DeviceId, log: Logger): Promise<void> {
  const rec = pool.state.devices[id]!;
  await removeDevice(thinName(pool.names, id), log);
  await pool.message(`delete ${rec.thinId}`).catch((err: unknown) => {
    if (!isErrno(err, 'ENODATA')) throw err;
  });
  delete pool.state.devices[id];
}

/** Re-stacks every recorded device and finishes interrupted changes. Errors are logged per device. */
export async function recoverDevices(pool: ThinPool, log: Logger): Promise<void> {
  let changed = false;
  let active = 0;
  for (const id of Object.keys(pool.state.devices).sort() as DeviceId[]) {
    const rec = pool.state.devices[id]!;
    try {
      if (rec.state === 'ready') {
        await ensureDevice(thinName(pool.names, id), thinTable(pool.device, rec.thinId, rec.sizeBytes), log);
        active++;
      } else {
        log.warn({ device: id, thinId: rec.thinId, state: rec.state }, rec.state === 'creating' ? 'rolling back interrupted device creation' : 'finishing interrupted device deletion');
        await dropThin(pool, id, log);
        changed = true;
      }
    } catch (err) {
      log.error({ device: id, thinId: rec.thinId, err }, 'dm device could not be brought back');
    }
  }
  if (changed) await savePoolState(pool.dir, pool.state);
  const known = new Set([pool.names.meta, pool.names.data, pool.names.pool, ...Object.keys(pool.state.devices).map((id) => thinName(pool.names, id as DeviceId))]);
  for (const d of await dmList()) {
    if (!d.name.startsWith(`${pool.names.prefix}-`) || known.has(d.name)) continue;
    log.warn({ dm: d.name }, 'removing dm device the pool does not know');
    await removeDevice(d.name, log).catch((err: unknown) => log.error({ dm: d.name, err }, 'unknown dm device could not be removed'));
  }
  log.info({ pool: pool.dir, devices: active }, 'dm devices recovered');
}
