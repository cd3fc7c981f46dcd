/**
 * The DaemonSet's preStop drain (GET /drain) on a real cairnd with a volume under writes:
 * the drain flushes the engine while qemu-io keeps writing, every write is acknowledged,
 * /readyz and NodeStageVolume turn new work away, and after SIGTERM and a restart every
 * byte reads back.
 */
import test from 'ava';
import { execa } from 'execa';
import { join } from 'node:path';
import type { ExportMessage, VolumeMessage } from '../../src/cli/api-client.js';
import { csiClient, codeName } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { missingCommands, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const drainTest = requiring(await missingCommands('qemu-io'), test.serial);
const CHUNKS = 48;

let daemon: Daemon | undefined;
test.after.always(async () => {
  await daemon?.destroy();
});

drainTest('drain during writes: the writes complete, new stages are refused, and the data survives the restart', async (t) => {
  daemon = await Daemon.start({ extraArgs: ['--node-name', 'node-drain', '--role', 'all'] });
  const d = daemon;
  t.is((await d.ctl(['volume', 'create', 'drained', '--size', '64MiB'])).exitCode, 0);
  const { uri } = await d.ctlJson<ExportMessage>(['volume', 'export', 'drained']);

  // qemu-io writes 48 MiB (write-through: each write acknowledged after a flush or FUA); the drain starts once it is connected.
  const since = d.logMark();
  const writer = execa('qemu-io', ['-f', 'raw', ...Array.from({ length: CHUNKS }, (_, i) => ['-c', `write -P 0x5a ${i}M 1M`]).flat(), '-c', 'flush', uri], { reject: false });
  await d.waitForEvent({ msg: 'nbd transmission started' }, { since });
  const drained = await fetch(`http://127.0.0.1:${d.httpPort}/drain`);
  t.is(drained.status, 200);
  const result = await drained.json() as { flushed: string[]; failed: unknown[]; durationMs: number };
  t.log(`drain took ${result.durationMs} ms`);
  t.deepEqual(result.flushed, ['drained']);
  t.deepEqual(result.failed, []);

  const written = await writer;
  t.is(written.exitCode, 0, `qemu-io: ${written.stderr}`);
  t.false(/error|fail/i.test(written.stdout), written.stdout);

  // Draining turns new work away, and says so; a second drain answers the same.
  const ready = await fetch(`http://127.0.0.1:${d.httpPort}/readyz`);
  t.is(ready.status, 503);
  t.is(await ready.text(), 'draining\n');
  t.is((await fetch(`http://127.0.0.1:${d.httpPort}/drain`, { method: 'POST' })).status, 200);
  const csi = await csiClient(join(d.dataDir, 'csi.sock'));
  try {
    const staged = await csi.node.NodeStageVolume!({
      volumeId: 'drained', stagingTargetPath: '/tmp/never-staged', volumeCapability: { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } },
    });
    t.is(codeName(staged), 'UNAVAILABLE');
  } finally {
    csi.close();
  }

  // SIGTERM (what kubelet sends after the preStop), then the new pod: every acknowledged byte is there.
  await d.restart();
  const volume = await d.ctlJson<VolumeMessage>(['volume', 'inspect', 'drained']);
  t.is(volume.export?.uri, uri, 'the export is back after the restart');
  const read = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x5a 0 ${CHUNKS}M`, '-c', `read -P 0 ${CHUNKS}M 16M`, uri]);
  t.false(/Pattern verification failed|error/i.test(read), read);
  t.is((await fetch(`http://127.0.0.1:${d.httpPort}/readyz`)).status, 200, 'the restarted daemon is ready again');
});
