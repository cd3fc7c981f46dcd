/**
 * The native surface of Cairn: file, block-device, device-mapper and nbd netlink calls with typed
 * arguments and typed errors. Raw declarations live in native-addon.ts.
 */
export {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  punchHole,
  zeroRange,
  ficlone,
  ficloneRange,
  seekData,
  seekHole,
  fsFreeze,
  fsThaw,
} from './file-ops.js';
export { blockDeviceSize, blockDiscard, blockFlush, loopSetSizeLimit } from './block-ops.js';
export {
  dmVersion,
  dmCreate,
  dmLoadTable,
  dmSuspend,
  dmResume,
  dmRemove,
  dmMessage,
  dmStatus,
  dmList,
  isDeviceMapperAvailable,
  type DmSuspendOptions,
  type DmDeviceInfo,
  type DmListEntry,
  type DmStatus,
  type DmTarget,
  type DmVersion,
} from './device-mapper.js';
export { DeviceMapperUnavailableError, DEVICE_MAPPER_UNAVAILABLE, fromNativeError } from './native-errors.js';
export { unixConnect, nbdConnect, nbdReconfigure, nbdResize, nbdDisconnect, NBD_UNAVAILABLE, type NbdConnectConfig, type NbdReconfigureConfig } from './nbd-netlink.js';
