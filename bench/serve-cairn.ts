/**
 * Serves one file as a Cairn NBD export for the benchmark, in its own process so that its
 * CPU is measured apart from fio's. Prints "ready" once listening; SIGTERM/SIGINT close
 * the export (in-flight requests finish, the device is flushed) and exit.
 *
 *   node --import tsx bench/serve-cairn.ts --file F --socket S [--name N] [--read-only]
 *
 * Stand-in until cairnd can create and export a volume (`cairnctl volume create/export`).
 */
import { stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { DeviceId } from '../src/common/ids.js';
import { createLogger } from '../src/common/log.js';
import { NbdExportServer } from '../src/engine/nbd/export-server.js';
import { openFileDevice } from '../src/pool/file-device.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      file: { type: 'string' },
      socket: { type: 'string' },
      name: { type: 'string', default: 'bench' },
      'read-only': { type: 'boolean', default: false },
      'log-level': { type: 'string', default: 'warn' },
    },
  });
  if (!values.file || !values.socket) throw new Error('usage: serve-cairn --file F --socket S [--name N]');
  const log = createLogger({ level: values['log-level'] as 'warn', format: 'json', destination: 2 });
  const sizeBytes = (await stat(values.file)).size;
  const device = await openFileDevice(values.file, values.name as DeviceId, sizeBytes, log);
  const server = new NbdExportServer({ name: values.name, device, log, readOnly: values['read-only'] });
  await server.listen(values.socket);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void server
      .close()
      .then(() => device.close())
      .then(() => process.exit(0), (err: unknown) => {
        console.error(err);
        process.exit(1);
      });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.write('ready\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
