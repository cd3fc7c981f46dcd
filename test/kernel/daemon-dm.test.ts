// cairnd on a dm pool in the VM: `auto` picks dm, volumes attach on /dev/nbdX through
// cairnctl, ext4 and xfs are made and mounted there, files read back, and after a cairnd
// restart across a simulated reboot (every dm device gone) the volumes come back intact.
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { poolTag } from '../../src/pool/dm-recover.js';
import { Daemon } from '../helpers/daemon.js';
import { removePoolDevices } from '../helpers/dm-pool.js';
import { makeLoopDevice } from '../helpers/loop-fs.js';
import { run } from '../helpers/run.js';

const MIB = 1024 * 1024;
const VOLUMES = [{ name: 'ext', fs: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F'], sizeMiB: 128 }, { name: 'xfs', fs: 'xfs', mkfs: ['mkfs.xfs', '-q', '-f'], sizeMiB: 320 }];

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Through cairnctl the first time (the CLI path), then the API (each cairnctl is a node start, slow under emulation). */
let viaCli = true;
async function attach(d: Daemon, name: string): Promise<string> {
  if (!viaCli) {
    const client = d.client();
    return client.attachVolume(name).then((a) => a.devicePath).finally(() => client.close());
  }
  viaCli = false;
  const r = await d.ctl(['volume', 'attach', name]);
  if (r.exitCode !== 0) throw new Error(`cairnctl volume attach ${name} failed: ${r.stderr}`);
  return r.stdout.trim();
}

async function detach(d: Daemon, name: string): Promise<void> {
  const client = d.client();
  await client.detachVolume(name).finally(() => client.close());
}

test.serial('cairnd on a dm pool: ext4 and xfs on /dev/nbdX, files back after a restart and reboot', async (t) => {
  const disks = [await makeLoopDevice(320 * MIB), await makeLoopDevice(320 * MIB)];
  const d = await Daemon.start({ extraArgs: ['--pool-devices', disks.map((x) => x.device).join(',')] });
  const tag = poolTag(join(d.dataDir, 'pool'));
  const mounts: string[] = [];
  t.teardown(async () => {
    for (const m of mounts) await run('umount', [m]).catch(() => undefined);
    await d.stop().catch(() => undefined);
    await removePoolDevices(tag);
    for (const x of disks) await x.dispose();
    await d.destroy();
  });

  const client = d.client();
  t.teardown(() => client.close());
  const status = await client.status();
  t.is(status.pool.backend, 'dm', 'auto chose dm where device-mapper is present');
  t.true(d.events().some((e) => e.msg === 'pool backend chosen' && e.backend === 'dm'));
  t.true(status.pool.totalBytes > 600 * MIB);

  const sums = new Map<string, string>();
  for (const v of VOLUMES) {
    await client.createVolume(v.name, v.sizeMiB * MIB);
    const device = await attach(d, v.name);
    t.regex(device, /^\/dev\/nbd\d+$/);
    await run(v.mkfs[0]!, [...v.mkfs.slice(1), device]);
    const mnt = join(d.dataDir, `mnt-${v.name}`);
    mkdirSync(mnt);
    await run('mount', ['-t', v.fs, device, mnt]);
    mounts.push(mnt);
    for (let i = 0; i < 4; i++) {
      const data = randomBytes(MIB + i * 12_345);
      await writeFile(join(mnt, `f${i}`), data);
      sums.set(`${v.name}/f${i}`, sha(data));
    }
    await run('umount', [mnt]);
    await run('mount', ['-t', v.fs, device, mnt]);
    for (let i = 0; i < 4; i++) t.is(sha(await readFile(join(mnt, `f${i}`))), sums.get(`${v.name}/f${i}`) ?? 'missing', `${v.name}/f${i} after remount`);
    await run('umount', [mnt]);
    await detach(d, v.name);
  }

  const check = async (when: string): Promise<void> => {
    for (const v of VOLUMES) {
      const device = await attach(d, v.name);
      const mnt = join(d.dataDir, `mnt-${v.name}`);
      await run('mount', ['-t', v.fs, device, mnt]);
      for (let i = 0; i < 4; i++) t.is(sha(await readFile(join(mnt, `f${i}`))), sums.get(`${v.name}/f${i}`) ?? 'missing', `${v.name}/f${i} ${when}`);
      await run('umount', [mnt]);
      await detach(d, v.name);
    }
  };
  // A cairnd restart across a simulated reboot: every dm device is gone and must be re-made
  // from dm-pool.json (the restart that finds them live is covered in dm-backend.test.ts;
  // each cairnd start costs tens of seconds under emulation).
  await d.stop();
  await removePoolDevices(tag);
  await d.launch();
  await check('after a cairnd restart and a reboot (every dm device re-made)');
  const listed = await d.client().listVolumes();
  t.deepEqual(listed.map((v) => [v.name, v.health]), [['ext', 'healthy'], ['xfs', 'healthy']]);
});
