/**
 * ControllerModifyVolume's method table (src/csi/controller-modify.ts) behind a real CSI
 * server on a unix socket, over a scripted volume API: a second call on a volume being
 * modified is ABORTED at once, a refused request never reaches the volume API, and the
 * count reaches it as a number. The codes on a real cairnd are in
 * test/integration/csi-modify.test.ts.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/common/log.js';
import type { VolumeChanges, VolumeView } from '../../src/cluster/volume-views.js';
import { controllerModifyMethods } from '../../src/csi/controller-modify.js';
import { csiService } from '../../src/csi/csi-call.js';
import { CsiLocks } from '../../src/csi/csi-locks.js';
import { startCsiServer } from '../../src/csi/csi-server.js';
import { codeName, csiClient } from '../helpers/csi-client.js';

test('a modify on a busy volume is ABORTED; refused requests never reach the volume API; the count arrives as a number', async (t) => {
  const calls: [string, VolumeChanges][] = [];
  let release = (): void => undefined;
  const gate = new Promise<void>((resolve) => { release = resolve; });
  let entered = (): void => undefined;
  const inside = new Promise<void>((resolve) => { entered = resolve; });
  const volumes = {
    modify: async (name: string, changes: VolumeChanges): Promise<VolumeView> => {
      calls.push([name, changes]);
      entered();
      await gate;
      return {} as VolumeView;
    },
  };
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-modify-'));
  const log = silentLogger();
  const server = await startCsiServer({ socketPath: join(dir, 'csi.sock'), log, services: [csiService('Controller', controllerModifyMethods(volumes), { log, locks: new CsiLocks() })] });
  const csi = await csiClient(server.socketPath);
  t.teardown(async () => {
    csi.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const first = csi.controller.ControllerModifyVolume!({ volumeId: 'pvc-1', mutableParameters: { replicas: '3' } });
  await inside;
  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'pvc-1', mutableParameters: { replicas: '2' } })), 'ABORTED');
  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'pvc-1', mutableParameters: { replicas: '2', tier: 'gold' } })), 'INVALID_ARGUMENT', 'validation comes before the lock');
  release();
  t.is(codeName(await first), 'OK');
  t.is(codeName(await csi.controller.ControllerModifyVolume!({ volumeId: 'pvc-1', mutableParameters: { replicas: '2' } })), 'OK', 'free again once the first call ended');
  t.deepEqual(calls, [['pvc-1', { replicas: 3 }], ['pvc-1', { replicas: 2 }]]);
});
