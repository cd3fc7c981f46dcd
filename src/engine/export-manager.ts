/**
 * Serves volumes over NBD: one unix socket per exported volume. The manager owns the open
 * BlockDevice of each export; callers (the volume service) hold the per-volume lock.
 */
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../common/log.js';
import type { BlockDevice } from '../pool/backend.js';
import { NbdExportServer, type NbdExportStats } from './nbd/export-server.js';

export interface ExportInfo {
  name: string;
  socketPath: string;
  uri: string;
  connectionCount: number;
}

interface ExportEntry {
  server: NbdExportServer;
  device: BlockDevice;
  socketPath: string;
}

/** Longest socket file name we derive from a volume name before hashing it instead. */
const MAX_SOCKET_FILE = 40;

export function nbdUri(name: string, socketPath: string): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${socketPath}`;
}

export class ExportManager {
  private readonly exports = new Map<string, ExportEntry>();

  constructor(private readonly socketDir: string, private readonly log: Logger) {
    mkdirSync(socketDir, { recursive: true, mode: 0o700 });
  }

  socketPathFor(name: string): string {
    const file = name.length <= MAX_SOCKET_FILE ? name : `v-${createHash('sha256').update(name).digest('hex').slice(0, 16)}`;
    return join(this.socketDir, `${file}.sock`);
  }

  /** Starts serving `device` as `name` (read-only: NBD_FLAG_READ_ONLY, writes refused). The manager takes ownership of the device. */
  async start(name: string, device: BlockDevice, options: { readOnly?: boolean } = {}): Promise<ExportInfo> {
    const existing = this.exports.get(name);
    if (existing) {
      await device.close();
      return this.describe(name, existing);
    }
    const socketPath = this.socketPathFor(name);
    const server = new NbdExportServer({ name, device, readOnly: options.readOnly === true, log: this.log.child({ volume: name }) });
    try {
      await server.listen(socketPath);
    } catch (err) {
      await device.close();
      throw err;
    }
    const entry = { server, device, socketPath };
    this.exports.set(name, entry);
    this.log.info({ volume: name, socket: socketPath, readOnly: options.readOnly === true }, 'volume exported');
    return this.describe(name, entry);
  }

  /** Stops serving: in-flight requests finish, the device is flushed and closed. */
  async stop(name: string): Promise<void> {
    const entry = this.exports.get(name);
    if (!entry) return;
    this.exports.delete(name);
    try {
      await entry.server.close();
    } finally {
      await entry.device.close();
    }
    this.log.info({ volume: name }, 'volume unexported');
  }

  get(name: string): ExportInfo | undefined {
    const entry = this.exports.get(name);
    return entry && this.describe(name, entry);
  }

  names(): string[] {
    return [...this.exports.keys()];
  }

  /** The counters of every export (live objects: read them, do not keep them). */
  exportStats(): NbdExportStats[] {
    return [...this.exports.values()].map((entry) => entry.server.stats());
  }

  connectionCount(): number {
    let n = 0;
    for (const entry of this.exports.values()) n += entry.server.stats().connections;
    return n;
  }

  async stopAll(): Promise<void> {
    const results = await Promise.allSettled(this.names().map((name) => this.stop(name)));
    for (const r of results) if (r.status === 'rejected') this.log.error({ err: r.reason }, 'export did not stop cleanly');
  }

  private describe(name: string, entry: ExportEntry): ExportInfo {
    return { name, socketPath: entry.socketPath, uri: nbdUri(name, entry.socketPath), connectionCount: entry.server.stats().connections };
  }
}
