/**
 * What every part of one NBD connection shares (the connection, its request reader and
 * runner): the export, the device, the daemon-wide byte budget and buffer pool. Its own
 * file so that those parts import it without importing each other in a circle.
 */
import type { Logger } from '../../common/log.js';
import type { BlockDevice } from '../../pool/backend.js';
import type { BufferPool } from './buffer-pool.js';
import type { ByteBudget } from './byte-budget.js';
import type { ExportDescriptor } from './handshake.js';
import type { ServerStats } from './stats.js';

export interface ConnectionContext {
  exp: ExportDescriptor;
  device: BlockDevice;
  stats: ServerStats;
  log: Logger;
  /** Bytes of request data the daemon may hold at once, shared by every connection. */
  budget: ByteBudget;
  /** Where read replies and large write payloads get their buffers. */
  pool: BufferPool;
  /** Receive into buffers of our choosing (socket-reader.ts); false: node's 'data' chunks. */
  receiveInPlace: boolean;
  /** A client that takes none of its waiting replies for this long is disconnected. */
  replyStallTimeoutMs: number;
  isShuttingDown(): boolean;
}
