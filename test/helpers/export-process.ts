/**
 * Test helper (not a test file), run as its own process: serves one volume of a file pool
 * over NBD (ExportManager) at `<socketDir>`, as cairnd's engine would, so that a test can
 * kill -9 "the daemon" under a staged, mounted volume. Prints the export as one JSON line
 * once it listens; SIGTERM stops it cleanly.
 *
 *   node --import tsx test/helpers/export-process.ts <poolDir> <socketDir> <volume> <sizeBytes>
 */
import type { DeviceId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { ExportManager } from '../../src/engine/export-manager.js';
import { FileBackend } from '../../src/pool/file-backend.js';

const [poolDir, socketDir, volume, size] = process.argv.slice(2);
const log = silentLogger();
const pool = await FileBackend.open({ dir: poolDir!, log });
const id = volume as DeviceId;
if (!(await pool.list()).some((d) => d.id === id)) await pool.create(id, Number(size));
const exports = new ExportManager(socketDir!, log);
const info = await exports.start(volume!, await pool.open(id));
process.stdout.write(`${JSON.stringify({ socketPath: info.socketPath })}\n`);
process.on('SIGTERM', () => {
  void exports.stopAll().then(() => pool.close()).then(() => process.exit(0));
});
