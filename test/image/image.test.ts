/**
 * The image (npm run test:image, which first runs scripts/build-image.sh --rootfs): cairnd
 * started from the image's root filesystem, as a container runtime would start it, serves
 * a volume that a client on the host writes and reads back over NBD, across a restart.
 *
 * "As a container would": a private mount namespace with the host's /dev, /proc and /sys
 * bound in (what the DaemonSet mounts), chrooted into the root filesystem, with the image's
 * environment only. The data directory is bound at the same path inside and out, so the
 * NBD socket cairnd names is the one the host's qemu-io dials. Mounts made inside (the file
 * pool's xfs image) vanish with the namespace when cairnd exits.
 */
import test from 'ava';
import { execa, type ResultPromise } from 'execa';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../helpers/ports.js';
import { combine, missingCommands, missingRoot, prerequisitesMet } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const ROOTFS = join(process.env.CAIRN_IMAGE_DIR ?? '/var/tmp/cairn-image', 'rootfs');
/** The image's environment (the Containerfile's ENV and the OCI config scripts/build-image.sh writes). */
const IMAGE_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', CAIRN_LOG_FORMAT: 'json', NODE_ENV: 'production' };
const VOLUME = 'image-vol';
/** Runs its arguments chrooted into the root filesystem ($1) with $2 bound at the same path, in this mount namespace. */
const ENTER = 'set -e; r=$1; d=$2; shift 2; for m in dev proc sys; do mount --rbind "/$m" "$r/$m"; done; mount --bind "$d" "$r$d"; exec chroot "$r" "$@"';

const missingImage = existsSync(join(ROOTFS, 'opt/cairn/app/bin/cairnd.js')) ? undefined : `no image root filesystem at ${ROOTFS}: run scripts/build-image.sh --rootfs (npm run test:image does)`;

class ImageDaemon {
  child: ResultPromise | undefined;
  readonly logFile: string;
  httpPort = 0;

  constructor(readonly dataDir: string) {
    this.logFile = join(dataDir, 'cairnd.log');
  }

  /** Starts the image's cairnd (its entrypoint) with only the image's environment, and waits for /readyz. */
  async start(): Promise<void> {
    this.httpPort = await freePort();
    const args = ['--data-dir', this.dataDir, '--node-name', 'image-test', '--http-listen', `127.0.0.1:${this.httpPort}`, '--file-pool-layout', 'xfs-image', '--file-pool-size', '1GiB'];
    this.child = execa('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', ENTER, 'enter', ROOTFS, this.dataDir, 'cairnd', ...args], {
      env: IMAGE_ENV, extendEnv: false, reject: false, stdout: { file: this.logFile, append: true }, stderr: { file: this.logFile, append: true },
    });
    const deadline = Date.now() + 60_000;
    while (!(await fetch(`http://127.0.0.1:${this.httpPort}/readyz`).then((r) => r.ok, () => false))) {
      if (this.child.exitCode !== null) throw new Error(`cairnd from the image exited during start-up:\n${this.log()}`);
      if (Date.now() > deadline) throw new Error(`cairnd from the image did not become ready:\n${this.log()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** The image's cairnctl, run inside cairnd's namespace and root (as `kubectl exec` would). */
  async ctl(...args: string[]): Promise<string> {
    return run('nsenter', ['--target', String(this.child!.pid), '--mount', '--root', '--wd', 'env', '-i', ...Object.entries(IMAGE_ENV).map(([k, v]) => `${k}=${v}`),
      'cairnctl', '--api-socket', join(this.dataDir, 'cairnd.sock'), ...args]);
  }

  /** SIGTERM (the graceful path) and wait; returns the exit code. */
  async stop(): Promise<number | undefined> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return this.child?.exitCode ?? undefined;
    this.child.kill('SIGTERM');
    return (await this.child).exitCode;
  }

  log(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }
}

/** qemu-io on the host against the NBD URI; throws when any command (a pattern check included) fails. */
async function qemuIo(uri: string, commands: string[]): Promise<string> {
  const out = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
  if (/fail|error/i.test(out)) throw new Error(`qemu-io reported a failure:\n${out}`);
  return out;
}

/** What cairnd execs (src/common/command.ts callers, nbdfuse's nbdkit) and what the pod scripts run (src/cli/spec/scripts.ts). */
const PROGRAMS = ['sh', 'node', 'cairnd', 'cairnctl', 'openssl', 'mount', 'umount', 'losetup', 'blkid', 'fsfreeze', 'modprobe', 'mkfs.ext4', 'resize2fs',
  'mkfs.xfs', 'xfs_growfs', 'nbdfuse', 'nbdkit', 'fusermount3', 'thin_dump', 'nbd-client'];

// Every prerequisite is known before the first test is declared (ava wants them declared at once).
const missing = combine(missingImage, missingRoot('mount namespaces, chroot and the pool\'s loop device'), await missingCommands('qemu-io', 'unshare', 'nsenter', 'chroot'));
if (prerequisitesMet('the image has every program cairnd and the pod scripts run', combine(missingImage, missingRoot('chroot')))) {
  test('the image has every program cairnd and the pod scripts run', async (t) => {
    const absent = await run('chroot', [ROOTFS, '/bin/sh', '-c', 'for c in "$@"; do command -v "$c" >/dev/null || echo "$c"; done', 'check', ...PROGRAMS]);
    t.is(absent, '', `missing from the image: ${absent}`);
    // nbdfuse runs `nbdkit --filter=retry nbd`: both must load.
    t.regex(await run('chroot', [ROOTFS, 'nbdkit', '--filter=retry', '--dump-plugin', 'nbd']), /^name=nbd$/m);
  });
}

if (prerequisitesMet('cairnd from the image serves a volume', missing)) {
  test.serial('cairnd from the image serves a volume: bytes written over NBD read back, also after a restart', async (t) => {
    const dataDir = mkdtempSync('/tmp/cairn-image-');
    mkdirSync(join(ROOTFS, dataDir));
    const daemon = new ImageDaemon(dataDir);
    t.teardown(async () => {
      if (daemon.child && daemon.child.exitCode === null) {
        daemon.child.kill('SIGKILL');
        await daemon.child;
      }
      rmSync(dataDir, { recursive: true, force: true });
      rmdirSync(join(ROOTFS, dataDir));
    });

    await daemon.start();
    const lines = daemon.log().split('\n').filter((l) => l.trim());
    t.true(lines.length > 0 && lines.every((l) => l.startsWith('{')), `the image logs JSON by default:\n${lines.slice(0, 5).join('\n')}`);
    // The pool's xfs image was made and mounted with the image's mkfs.xfs, losetup and mount.
    t.true(lines.some((l) => (JSON.parse(l) as { msg?: string }).msg === 'xfs pool image mounted'), 'the file pool mounted its xfs image');

    await daemon.ctl('volume', 'create', VOLUME, '--size', '64MiB');
    const uri = (await daemon.ctl('volume', 'export', VOLUME)).trim();
    t.regex(uri, /^nbd\+unix:/);
    const written = await qemuIo(uri, ['write -P 0xa5 0 1M', 'write -P 0x3c 40M 64k', 'flush']);
    t.regex(written, /wrote 65536\/65536 bytes/);
    const read = await qemuIo(uri, ['read -P 0xa5 0 1M', 'read -P 0x3c 40M 64k', 'read -P 0 1M 1M']);
    t.regex(read, /read 1048576\/1048576 bytes at offset 0\b/);
    t.regex(read, /read 65536\/65536 bytes at offset 41943040\b/);

    t.is(await daemon.stop(), 0, `cairnd exits cleanly on SIGTERM:\n${daemon.log().slice(-2000)}`);
    await daemon.start();
    const again = (await daemon.ctl('volume', 'export', VOLUME)).trim();
    const reread = await qemuIo(again, ['read -P 0xa5 0 1M', 'read -P 0x3c 40M 64k']);
    t.regex(reread, /read 65536\/65536 bytes at offset 41943040\b/);
    t.is(await daemon.stop(), 0);
  });
}
