/**
 * An NBD server for one exported volume on its own unix socket (fixed newstyle only).
 * Every connection shares the one BlockDevice, so a FLUSH on any connection (fdatasync of
 * the device) covers writes completed on all of them: CAN_MULTI_CONN is honest.
 */
import { chmod, lstat, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { Code, StorageError, fromNodeError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { BlockDevice } from '../../pool/backend.js';
import { sharedBufferPool, type BufferPool } from './buffer-pool.js';
import { sharedByteBudget, type ByteBudget } from './byte-budget.js';
import { NbdConnection } from './connection.js';
import type { ConnectionContext } from './connection-context.js';
import { GROWABLE_EXPORT_BYTES } from './handshake.js';
import { newStats, statsCounters, type ServerStats } from './stats.js';

export interface NbdExportServerOptions {
  /** The export name clients ask for; "" (the default export) is accepted too. */
  name: string;
  device: BlockDevice;
  log: Logger;
  readOnly?: boolean;
  /** Shown by NBD_INFO_DESCRIPTION (nbdinfo). */
  description?: string;
  /**
   * Bytes of request data held in memory at once (reads until their reply is sent, writes
   * until the device has them), with back-pressure past it. Default: one budget of 48 MiB
   * shared by every export in the process (sharedByteBudget()).
   */
  budget?: ByteBudget;
  /** Buffers for reads and large write payloads. Default: one pool shared by the process. */
  bufferPool?: BufferPool;
  /**
   * Receive requests into buffers the server chooses, large write payloads straight into
   * their own (the default); false reads node's 'data' chunks instead (the fallback path,
   * kept selectable for tests).
   */
  receiveInPlace?: boolean;
  /**
   * A client whose replies wait unread for this long is disconnected, so that it cannot
   * hold the shared byte budget from every other export. Default 60 s: longer than the
   * kernel nbd driver's own 30 s request timeout.
   */
  replyStallTimeoutMs?: number;
}

export const DEFAULT_REPLY_STALL_TIMEOUT_MS = 60_000;

export type NbdExportStats = ServerStats & { name: string; sizeBytes: number; readOnly: boolean };

export class NbdExportServer {
  private readonly server: Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly stats_: ServerStats = newStats();
  private readonly ctx: ConnectionContext;
  private readonly log: Logger;
  private socketPath: string | undefined;
  private closing: Promise<void> | undefined;
  private nextConnId = 1;

  constructor(private readonly options: NbdExportServerOptions) {
    this.log = options.log.child({ export: options.name });
    const device = options.device;
    this.ctx = {
      exp: {
        name: options.name,
        description: options.description ?? `Cairn volume ${options.name}`,
        // Read at each use: a volume engine grows online, and a client that connects (or a
        // kernel device resized by the node) afterwards must be able to use the new size.
        get sizeBytes(): number { return device.sizeBytes; },
        // The view the nbdfuse + loop attach connects to (handshake.ts, growableExportName).
        growableBytes: GROWABLE_EXPORT_BYTES,
        readOnly: options.readOnly ?? false,
      },
      device: options.device,
      stats: this.stats_,
      log: this.log,
      budget: options.budget ?? sharedByteBudget(),
      pool: options.bufferPool ?? sharedBufferPool(),
      receiveInPlace: options.receiveInPlace ?? true,
      replyStallTimeoutMs: options.replyStallTimeoutMs ?? DEFAULT_REPLY_STALL_TIMEOUT_MS,
      isShuttingDown: () => this.closing !== undefined,
    };
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (err) => this.log.error({ err }, 'nbd server error'));
  }

  get name(): string {
    return this.options.name;
  }

  /** Listens on `socketPath` (a stale socket file there is removed first), mode 0600. */
  async listen(socketPath: string): Promise<void> {
    if (this.socketPath !== undefined) throw new StorageError(Code.FAILED_PRECONDITION, 'nbd server is already listening', { details: { socketPath } });
    await removeStaleSocket(socketPath);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(fromNodeError(err, 'listen on nbd socket', { socketPath }));
      this.server.once('error', onError);
      this.server.listen(socketPath, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    this.socketPath = socketPath;
    await chmod(socketPath, 0o600);
    this.log.info({ socketPath, sizeBytes: this.ctx.exp.sizeBytes, readOnly: this.ctx.exp.readOnly }, 'nbd export listening');
  }

  /**
   * Stops accepting, lets in-flight requests finish and be answered, flushes the device and
   * ends every connection. The device stays open (its owner closes it).
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  stats(): NbdExportStats {
    return { ...this.stats_, name: this.options.name, sizeBytes: this.ctx.exp.sizeBytes, readOnly: this.ctx.exp.readOnly };
  }

  private async doClose(): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await stopped;
    try {
      await this.options.device.flush();
    } finally {
      if (this.socketPath !== undefined) await unlink(this.socketPath).catch(() => undefined);
      this.log.info(statsCounters(this.stats_), 'nbd export closed');
    }
  }

  private onConnection(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    this.stats_.connections++;
    this.stats_.connectionsTotal++;
    const conn = new NbdConnection(socket, this.ctx, this.log.child({ conn: this.nextConnId++ }));
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }
}

async function removeStaleSocket(socketPath: string): Promise<void> {
  try {
    const st = await lstat(socketPath);
    if (!st.isSocket()) {
      throw new StorageError(Code.ALREADY_EXISTS, 'nbd socket path exists and is not a socket', { details: { socketPath } });
    }
    await unlink(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw fromNodeError(err, 'remove stale nbd socket', { socketPath });
  }
}
