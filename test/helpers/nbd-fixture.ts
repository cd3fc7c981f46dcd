/** A real NbdExportServer over a file device in a temp dir, for integration tests. */
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { DeviceId } from '../../src/common/ids.js';
import { pino } from 'pino';
import { silentLogger, type Logger } from '../../src/common/log.js';
import type { BlockDevice } from '../../src/pool/backend.js';
import type { ByteBudget } from '../../src/engine/nbd/byte-budget.js';
import { NbdExportServer } from '../../src/engine/nbd/export-server.js';
import { openFileDevice } from '../../src/pool/file-device.js';

export const execFileAsync = promisify(execFile);

export interface NbdExportFixture {
  dir: string;
  file: string;
  socketPath: string;
  uri: string;
  device: BlockDevice;
  server: NbdExportServer;
  close(): Promise<void>;
}

export async function makeTempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'cairn-nbd-test-'));
}

export interface ExportFixtureOptions {
  readOnly?: boolean;
  log?: Logger;
  /** The export's own byte budget (default: the process-wide one). */
  budget?: ByteBudget;
  /** false: receive through node's 'data' chunks (the fallback path). */
  receiveInPlace?: boolean;
  /** Disconnect a client whose replies wait unread this long (default: the server's). */
  replyStallTimeoutMs?: number;
}

export async function startExport(dir: string, name: string, sizeBytes: number, opts: ExportFixtureOptions = {}): Promise<NbdExportFixture> {
  const file = join(dir, `${name}.img`);
  await writeFile(file, '');
  await truncate(file, sizeBytes);
  const log = opts.log ?? silentLogger();
  const device = await openFileDevice(file, name as DeviceId, sizeBytes, log);
  const server = new NbdExportServer({
    name, device, log, readOnly: opts.readOnly ?? false, budget: opts.budget, receiveInPlace: opts.receiveInPlace,
    replyStallTimeoutMs: opts.replyStallTimeoutMs,
  });
  const socketPath = join(dir, `${name}.sock`);
  await server.listen(socketPath);
  return {
    dir, file, socketPath, uri: `nbd+unix:///${name}?socket=${socketPath}`, device, server,
    async close() {
      await server.close();
      await device.close();
    },
  };
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** A logger that records warn lines, to assert "one warn log line" per misbehaving client. */
export function recordingLogger(): { log: Logger; warnings: Record<string, unknown>[] } {
  const warnings: Record<string, unknown>[] = [];
  const sink = {
    write(line: string): void {
      const entry = JSON.parse(line) as Record<string, unknown>;
      if (entry.level === 40) warnings.push(entry);
    },
  };
  return { log: pino({ level: 'warn' }, sink), warnings };
}
