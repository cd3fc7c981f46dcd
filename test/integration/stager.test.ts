/**
 * The stager (src/engine/stager.ts) on this host's attach path, nbdfuse + loop: real FUSE,
 * loop devices, mkfs and mounts as root. The volume is served by a separate process
 * (test/helpers/export-process.ts, a file pool behind the NBD export server), so that
 * "cairnd" can be killed with SIGKILL under a mounted filesystem with a writer running.
 */
import test from 'ava';
import { execa, type ResultPromise } from 'execa';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Code, StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { KernelAttacher } from '../../src/engine/kernel-attach.js';
import { findMount, isMounted } from '../../src/engine/mounter.js';
import { Stager, type VolumeExporter } from '../../src/engine/stager.js';
import { NodeStore } from '../../src/store/node-store.js';
import { combine, missingCommands, missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MiB = 1024 * 1024;
const log = silentLogger();

const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'mkfs.xfs', 'e2fsck'),
);
const fuseTest = onlyWhere(!existsSync('/sys/module/nbd'), 'this kernel has the nbd driver; test/kernel covers /dev/nbdX', requiring(missing, test.serial));

/** "cairnd" for one volume: a process serving it over NBD, killable with SIGKILL. */
class ExportProcess {
  private child: ResultPromise | undefined;
  readonly poolDir: string;
  readonly socketDir: string;

  constructor(readonly dir: string, readonly volume: string, readonly sizeBytes: number) {
    this.poolDir = join(dir, 'pool');
    this.socketDir = join(dir, 'sock');
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get image(): string {
    return join(this.poolDir, 'devices', `${this.volume}.img`);
  }

  async start(): Promise<string> {
    const child = execa('node', ['--import', 'tsx', join(ROOT, 'test/helpers/export-process.ts'), this.poolDir, this.socketDir, this.volume, String(this.sizeBytes)],
      { reject: false, cwd: ROOT, buffer: false, stdout: 'pipe', stderr: 'inherit' });
    this.child = child;
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]!);
      });
      void child.then((r) => reject(new Error(`export process exited: ${r.exitCode ?? r.signal}`)));
    });
    return (JSON.parse(line) as { socketPath: string }).socketPath;
  }

  async kill9(): Promise<void> {
    this.child?.kill('SIGKILL');
    await this.child;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.child!.kill('SIGTERM');
    await this.child;
  }
}

interface Setup {
  dir: string;
  server: ExportProcess;
  exporter: VolumeExporter & { exports: number; unexports: number };
  dbPath: string;
  runDir: string;
  newStager(): { stager: Stager; store: NodeStore; attacher: KernelAttacher };
}

function setup(t: { teardown(fn: () => unknown): void }, volume: string, sizeBytes = 256 * MiB): Setup {
  const dir = mkdtempSync('/tmp/cairn-stg-');
  const server = new ExportProcess(dir, volume, sizeBytes);
  let socketPath = '';
  const exporter = {
    exports: 0,
    unexports: 0,
    async export() {
      exporter.exports++;
      if (!server.running) socketPath = await server.start();
      return { socketPath };
    },
    async unexport() {
      exporter.unexports++;
      await server.stop();
    },
  };
  const dbPath = join(dir, 'node.db');
  const runDir = join(dir, 'attach');
  const stores: NodeStore[] = [];
  t.teardown(async () => {
    await server.stop();
    for (const s of stores) s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir, server, exporter, dbPath, runDir,
    newStager() {
      const store = NodeStore.open(dbPath, log);
      stores.push(store);
      const attacher = new KernelAttacher({ log, runDir, method: 'nbdfuse-loop' });
      return { stager: new Stager({ store, exporter, attacher, log }), store, attacher };
    },
  };
}

function stagingDir(s: Setup): string {
  const p = join(s.dir, 'staging');
  mkdirSync(p, { recursive: true });
  return p;
}

/** Processes whose command line mentions `text` (nbdfuse, nbdkit of an attachment). */
function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text)) pids.push(Number(pid));
    } catch { /* gone */ }
  }
  return pids;
}

/** Loop devices whose backing file lies under `dir`. */
function loopsUnder(dir: string): string[] {
  return readdirSync('/sys/block').filter((d) => d.startsWith('loop')).filter((d) => {
    try {
      return readFileSync(`/sys/block/${d}/loop/backing_file`, 'utf8').startsWith(dir);
    } catch {
      return false;
    }
  });
}

function assertNothingLeft(t: { is(a: unknown, b: unknown, m?: string): void; deepEqual(a: unknown, b: unknown, m?: string): void }, s: Setup, store: NodeStore, staging: string, volume: string): void {
  t.deepEqual(loopsUnder(s.runDir), [], 'no loop device left');
  t.deepEqual(processesMentioning(s.runDir), [], 'no nbdfuse or nbdkit left');
  t.is(store.getStagedVolume(volume), undefined, 'no record left');
  t.is(s.server.running, false, 'the volume is no longer exported');
  t.is(existsSync(staging) && readdirSync(staging).length, 0, 'the staging directory is empty (nothing mounted)');
}

fuseTest('stage formats a blank volume and mounts it; the same stage again does nothing; other arguments are ALREADY_EXISTS; unstage twice leaves nothing', async (t) => {
  const s = setup(t, 'stg-basic');
  const { stager, store } = s.newStager();
  const staging = stagingDir(s);
  const staged = await stager.stage('stg-basic', { stagingPath: staging, access: { fsType: 'ext4', mountFlags: ['noatime'] } });
  t.regex(staged.devicePath, /^\/dev\/loop\d+$/);
  t.is(staged.method, 'nbdfuse-loop');
  const m = await findMount(staging);
  t.is(m?.fsType, 'ext4');
  t.true(m!.options.includes('noatime'));
  t.is(store.getStagedVolume('stg-basic')?.state, 'staged');

  const again = await stager.stage('stg-basic', { stagingPath: staging, access: { fsType: 'ext4', mountFlags: ['noatime'] } });
  t.deepEqual(again, staged);
  t.is(s.exporter.exports, 1, 'a repeated stage does nothing');
  const other = await t.throwsAsync(stager.stage('stg-basic', { stagingPath: staging, access: { fsType: 'xfs' } }), { instanceOf: StorageError });
  t.is(other.code, Code.ALREADY_EXISTS);
  t.true(await isMounted(staging), 'the staging is untouched');

  await stager.unstage('stg-basic', staging);
  await stager.unstage('stg-basic', staging);
  assertNothingLeft(t, s, store, staging, 'stg-basic');
});

fuseTest('an existing filesystem of another type is FAILED_PRECONDITION, never reformatted, and nothing is left behind', async (t) => {
  const s = setup(t, 'stg-type', 320 * MiB); // mkfs.xfs needs more than 300 MB
  const { stager, store } = s.newStager();
  const staging = stagingDir(s);
  await stager.stage('stg-type', { stagingPath: staging, access: { fsType: 'xfs' } });
  await stager.unstage('stg-type', staging);
  const err = await t.throwsAsync(stager.stage('stg-type', { stagingPath: staging, access: { fsType: 'ext4' } }), { instanceOf: StorageError });
  t.is(err.code, Code.FAILED_PRECONDITION);
  assertNothingLeft(t, s, store, staging, 'stg-type');
  const content = await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', s.server.image]);
  t.is(content, 'xfs', 'the xfs filesystem is still there');
});

fuseTest('a missing staging path is NOT_FOUND, a file FAILED_PRECONDITION, before anything is made', async (t) => {
  const s = setup(t, 'stg-path');
  const { stager, store } = s.newStager();
  const missingPath = join(s.dir, 'no-such-dir');
  const err = await t.throwsAsync(stager.stage('stg-path', { stagingPath: missingPath, access: { fsType: 'ext4' } }), { instanceOf: StorageError });
  t.is(err.code, Code.NOT_FOUND);
  const file = join(s.dir, 'a-file');
  await (await open(file, 'w')).close();
  const notDir = await t.throwsAsync(stager.stage('stg-path', { stagingPath: file, access: { fsType: 'ext4' } }), { instanceOf: StorageError });
  t.is(notDir.code, Code.FAILED_PRECONDITION);
  t.is(s.exporter.exports, 0, 'nothing was exported');
  t.is(store.getStagedVolume('stg-path'), undefined);
});

fuseTest('a raw block volume is staged as a device without a filesystem, and unstaged', async (t) => {
  const s = setup(t, 'stg-block', 64 * MiB);
  const { stager, store } = s.newStager();
  const staging = stagingDir(s);
  const staged = await stager.stage('stg-block', { stagingPath: staging, access: { block: true } });
  t.true(statSync(staged.devicePath).isBlockDevice());
  t.is(staged.fsType, undefined);
  t.false(await isMounted(staging));
  const fh = await open(staged.devicePath, 'r+');
  await fh.write(Buffer.alloc(4096, 0xab), 0, 4096, 8192);
  await fh.sync();
  await fh.close();
  await stager.unstage('stg-block', staging);
  assertNothingLeft(t, s, store, staging, 'stg-block');
  const image = await readFile(s.server.image);
  t.true(image.subarray(8192, 8192 + 4096).every((b) => b === 0xab), 'the bytes reached the volume');
});

/** Writes files f<i> (64 KiB, content from i) one after another with fsync until stopped. */
function startWriter(dir: string): { written: () => number; stop: () => Promise<number> } {
  let n = 0;
  let stopping = false;
  const done = (async () => {
    while (!stopping) {
      const fh = await open(join(dir, `f${n}`), 'w');
      await fh.write(fileContent(n));
      await fh.sync();
      await fh.close();
      n++;
    }
    return n;
  })();
  return { written: () => n, stop: async () => { stopping = true; return done; } };
}

function fileContent(i: number): Buffer {
  const seed = createHash('sha256').update(`file ${i}`).digest();
  return Buffer.concat(Array.from({ length: 2048 }, () => seed));
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 20));
}

fuseTest('kill -9 of the serving process with a writer running: recover resumes the mounted filesystem, files are intact, unstage leaves nothing', async (t) => {
  const s = setup(t, 'stg-restart');
  const first = s.newStager();
  const staging = stagingDir(s);
  const staged = await first.stager.stage('stg-restart', { stagingPath: staging, access: { fsType: 'ext4' } });
  const writer = startWriter(staging);
  await until(() => writer.written() >= 20);

  // cairnd dies: the export goes, the in-process stager is dropped without any cleanup.
  await s.server.kill9();
  first.store.close();
  const atKill = writer.written();

  const second = s.newStager();
  await second.stager.recover();
  t.true(s.server.running, 'recover served the volume again');
  t.is(second.store.getStagedVolume('stg-restart')?.state, 'staged');
  await until(() => writer.written() >= atKill + 20);
  const total = await writer.stop();

  t.true((await findMount(staging))!.options.includes('rw'), 'the filesystem saw no error (it would have gone read-only)');
  for (let i = 0; i < total; i++) t.true((await readFile(join(staging, `f${i}`))).equals(fileContent(i)), `f${i} intact`);
  const again = await second.stager.stage('stg-restart', { stagingPath: staging, access: { fsType: 'ext4' } });
  t.is(again.devicePath, staged.devicePath, 'the same device, still staged');

  await second.stager.unstage('stg-restart', staging);
  assertNothingLeft(t, s, second.store, staging, 'stg-restart');
  await run('e2fsck', ['-fn', s.server.image]);
});

fuseTest('after a "reboot" (nothing mounted, device gone) recover leaves the record, and unstage clears it and succeeds', async (t) => {
  const s = setup(t, 'stg-reboot', 64 * MiB);
  const first = s.newStager();
  const staging = stagingDir(s);
  const staged = await first.stager.stage('stg-reboot', { stagingPath: staging, access: { fsType: 'ext4' } });
  // What a reboot does: the mount, the loop device, nbdfuse and the export are gone.
  await run('umount', [staging]);
  await run('losetup', ['-d', staged.devicePath]);
  for (const pid of processesMentioning(s.runDir)) process.kill(pid, 'SIGKILL');
  await until(() => processesMentioning(s.runDir).length === 0);
  await run('umount', ['-l', join(s.runDir, 'fuse-stg-reboot')]).catch(() => undefined);
  await s.server.kill9();
  first.store.close();

  const second = s.newStager();
  await second.stager.recover();
  t.is(second.store.getStagedVolume('stg-reboot')?.state, 'staged', 'left for the next call');
  t.false(s.server.running, 'a volume without its device is not served again by recovery');
  await second.stager.unstage('stg-reboot', staging);
  assertNothingLeft(t, s, second.store, staging, 'stg-reboot');
});
