/** Maps Cairn errors to the NBD protocol's error values. */
import { Code, StorageError, SystemError } from '../../common/errors.js';
import * as P from './protocol.js';

const BY_ERRNO_NAME: Record<string, number> = {
  ENOSPC: P.NBD_ENOSPC,
  EDQUOT: P.NBD_ENOSPC,
  EFBIG: P.NBD_ENOSPC,
  EPERM: P.NBD_EPERM,
  EACCES: P.NBD_EPERM,
  EROFS: P.NBD_EPERM,
  EINVAL: P.NBD_EINVAL,
  EIO: P.NBD_EIO,
};

/** The NBD error value for an error a device returned: never 0, never ENOMEM. */
export function nbdErrno(err: unknown): number {
  if (err instanceof SystemError) return BY_ERRNO_NAME[err.errnoName] ?? P.NBD_EIO;
  if (err instanceof StorageError) {
    switch (err.code) {
      case Code.RESOURCE_EXHAUSTED:
        return P.NBD_ENOSPC;
      case Code.PERMISSION_DENIED:
        return P.NBD_EPERM;
      case Code.INVALID_ARGUMENT:
      case Code.OUT_OF_RANGE:
        return P.NBD_EINVAL;
      case Code.UNAVAILABLE:
      case Code.CANCELLED:
        return P.NBD_ESHUTDOWN;
      default:
        return P.NBD_EIO;
    }
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return (typeof code === 'string' ? BY_ERRNO_NAME[code] : undefined) ?? P.NBD_EIO;
}
