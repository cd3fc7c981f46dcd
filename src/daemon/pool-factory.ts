/**
 * Opens the pool backend cairnd was configured with. `auto` takes dm where the kernel has
 * device-mapper and pool devices are configured, else file; the choice and its reason are
 * logged. A file pool gets --file-pool-layout (auto unless set: see pool/file-layout.ts).
 */
import type { Logger } from '../common/log.js';
import { isDeviceMapperAvailable } from '../native/index.js';
import type { PoolBackend } from '../pool/backend.js';
import { DmBackend } from '../pool/dm-backend.js';
import { FileBackend } from '../pool/file-backend.js';
import type { DaemonConfig } from './config.js';

type PoolConfig = Pick<DaemonConfig, 'poolBackend' | 'poolDir' | 'poolDevices' | 'poolCapacityBytes'> & Partial<Pick<DaemonConfig, 'filePoolLayout' | 'filePoolSizeBytes'>>;

async function chooseKind(config: PoolConfig, log: Logger): Promise<'file' | 'dm'> {
  if (config.poolBackend !== 'auto') return config.poolBackend;
  const hasDm = await isDeviceMapperAvailable().catch(() => false);
  const kind = hasDm && config.poolDevices.length > 0 ? 'dm' : 'file';
  const reason = kind === 'dm' ? 'device-mapper is present' : hasDm ? 'no --pool-devices configured' : 'this kernel has no device-mapper';
  log.info({ backend: kind, reason }, 'pool backend chosen');
  return kind;
}

export async function openPool(config: PoolConfig, log: Logger): Promise<PoolBackend> {
  const kind = await chooseKind(config, log);
  if (kind === 'dm') return DmBackend.open({ dir: config.poolDir, disks: config.poolDevices, log: log.child({ pool: 'dm' }) });
  return FileBackend.open({
    dir: config.poolDir, log: log.child({ pool: 'file' }), capacityBytes: config.poolCapacityBytes || undefined,
    layout: config.filePoolLayout ?? 'auto', imageSizeBytes: config.filePoolSizeBytes || undefined,
  });
}
