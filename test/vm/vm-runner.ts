/**
 * Boots the kernel-test VM once and runs a set of test files inside it (see
 * docs/pool-dm.md "Kernel tests"). The guest is a Debian cloud kernel under qemu (TCG),
 * whose root is the host's own / shared read-only over virtiofs with a tmpfs overlay, so
 * node, node_modules and the Debian tools are the host's. A second, read-write share
 * carries the inputs (env.sh) and the results (tap.txt, stderr.txt, exit-code, dmesg.txt).
 */
import { execa, type ResultPromise } from 'execa';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
const HERE = join(REPO, 'test/vm');
const CACHE = join(HERE, '.cache');
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
/** The kernel tests compiled to JavaScript, as the guest runs them (see tsconfig.guest.json). */
export const GUEST_JS = join(CACHE, 'js');

export interface VmRunOptions {
  /** Test files, relative to the repository root. */
  files: string[];
  /** Kills the VM after this long; a run that hits it is reported as a failure. */
  deadlineMs: number;
  memoryMiB?: number;
  /** A shell command to run instead of ava (for debugging the harness). */
  command?: string;
  cpus?: number;
}

export interface VmRunResult {
  /** ava's exit code in the guest; null when the guest never wrote one. */
  exitCode: number | null;
  tap: string;
  stderr: string;
  setupLog: string;
  console: string;
  dmesg: string;
  timedOut: boolean;
  durationMs: number;
  kernel: string;
}

/** Runs test/vm/setup.sh (installs packages, extracts the kernel, builds the initramfs). */
export async function prepareVm(): Promise<{ kernelDir: string; setupMs: number }> {
  const t0 = Date.now();
  const r = await execa('bash', [join(HERE, 'setup.sh')], { reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0) throw new Error(`test/vm/setup.sh failed (exit ${r.exitCode}):\n${r.stderr}\n${r.stdout}`);
  const kernelDir = r.stdout.trim().split('\n').pop() ?? '';
  if (!existsSync(join(kernelDir, 'initramfs.gz'))) throw new Error(`test/vm/setup.sh printed no kernel folder:\n${r.stdout}`);
  return { kernelDir, setupMs: Date.now() - t0 };
}

/**
 * Compiles test/kernel/** (and what it imports) into GUEST_JS with tsc, and makes GUEST_JS
 * an ava project of its own (package.json) with copies of the repo's bin/, dist/, proto/ and
 * native addon.
 * tsx under software emulation costs tens of seconds per process; plain JS does not.
 */
export async function compileGuestTests(): Promise<{ compileMs: number }> {
  const t0 = Date.now();
  rmSync(GUEST_JS, { recursive: true, force: true });
  const r = await execa(join(REPO, 'node_modules/.bin/tsc'), ['-p', join(HERE, 'tsconfig.guest.json'), '--noCheck'], { reject: false, cwd: REPO, stdin: 'ignore' });
  if (r.exitCode !== 0) throw new Error(`compiling the kernel tests failed:\n${r.stdout}\n${r.stderr}`);
  // Copies, not links: the guest run must not see a rebuild of dist/ or the addon that
  // happens on the host while it runs.
  for (const dir of ['bin', 'dist', 'proto']) cpSync(join(REPO, dir), join(GUEST_JS, dir), { recursive: true });
  const addon = 'native/build/Release/cairn_native.node';
  mkdirSync(dirname(join(GUEST_JS, addon)), { recursive: true });
  copyFileSync(join(REPO, addon), join(GUEST_JS, addon));
  const { version } = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
  writeFileSync(join(GUEST_JS, 'package.json'), `${JSON.stringify({
    name: 'cairn-kernel-tests', version, private: true, type: 'module',
    ava: { files: ['test/kernel/**/*.test.js'], workerThreads: true, timeout: '60m' },
  }, null, 2)}\n`);
  return { compileMs: Date.now() - t0 };
}

/** test/kernel/x.test.ts -> test/kernel/x.test.js (relative to GUEST_JS). */
function guestFile(file: string): string {
  return relative(REPO, join(REPO, file)).replace(/\.ts$/, '.js');
}

async function waitForSocket(path: string, child: ResultPromise, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (existsSync(path)) return;
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const r = child.exitCode === null ? undefined : await child;
  throw new Error(`${what} did not open ${path}: ${r ? String(r.stderr) : 'no socket after 10 s'}`);
}

function startVirtiofsd(socket: string, source: string): ResultPromise {
  return execa(VIRTIOFSD, [`--socket-path=${socket}`, '-o', `source=${source}`, '-o', 'cache=auto', '-o', 'sandbox=chroot',
    '-o', 'no_posix_lock', '-o', 'no_flock', '-o', 'log_level=err'], { reject: false, stdin: 'ignore' });
}

function qemuArgs(kernelDir: string, dir: string, share: string, memoryMiB: number, cpus: number): string[] {
  const kver = readFileSync(join(kernelDir, 'kver'), 'utf8').trim();
  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'oops=panic', `cairn.script=${join(HERE, 'guest-run.sh')}`, `cairn.share=${share}`];
  return [
    '-accel', 'tcg,thread=multi,tb-size=512', '-cpu', 'max', '-M', 'q35', '-smp', String(cpus), '-m', `${memoryMiB}M`,
    '-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`, '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=fsroot,path=${join(dir, 'root.sock')}`, '-device', 'vhost-user-fs-pci,chardev=fsroot,tag=root',
    '-chardev', `socket,id=fsshare,path=${join(dir, 'share.sock')}`, '-device', 'vhost-user-fs-pci,chardev=fsshare,tag=share',
    '-kernel', join(kernelDir, 'root/boot', `vmlinuz-${kver}`), '-initrd', join(kernelDir, 'initramfs.gz'),
    '-append', append.join(' '),
    '-nodefaults', '-display', 'none', '-nic', 'none', '-no-reboot',
    '-chardev', `file,id=con,path=${join(dir, 'console.txt')}`, '-serial', 'chardev:con',
  ];
}

function read(path: string): string {
  return existsSync(path) ? readFileSync(path, 'utf8').replace(/\r\n/g, '\n') : '';
}

/** Boots the VM once, runs `files` with ava as root inside it, and collects what it wrote. */
export async function runInVm(kernelDir: string, options: VmRunOptions): Promise<VmRunResult> {
  mkdirSync(CACHE, { recursive: true });
  const dir = mkdtempSync(join(CACHE, 'run-'));
  const share = join(dir, 'share');
  mkdirSync(share);
  const kver = readFileSync(join(kernelDir, 'kver'), 'utf8').trim();
  writeFileSync(join(share, 'env.sh'), [
    `export PATH='${process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'}:/usr/sbin:/sbin'`,
    `REPO='${REPO}'`,
    `MODULES='${join(kernelDir, 'root/lib/modules')}'`,
    `GUEST_JS='${GUEST_JS}'`,
    `FILES='${options.files.map(guestFile).join(' ')}'`,
    `COMMAND='${(options.command ?? '').replace(/'/g, `'\\''`)}'`,
    `echo kernel ${kver}`,
    '',
  ].join('\n'));
  const daemons = [startVirtiofsd(join(dir, 'root.sock'), '/'), startVirtiofsd(join(dir, 'share.sock'), share)];
  const t0 = Date.now();
  let timedOut = false;
  try {
    await waitForSocket(join(dir, 'root.sock'), daemons[0]!, 'virtiofsd (root)');
    await waitForSocket(join(dir, 'share.sock'), daemons[1]!, 'virtiofsd (share)');
    const qemu = execa('qemu-system-x86_64', qemuArgs(kernelDir, dir, share, options.memoryMiB ?? 3072, options.cpus ?? 2), { reject: false, stdin: 'ignore' });
    const timer = setTimeout(() => {
      timedOut = true;
      qemu.kill('SIGKILL');
    }, options.deadlineMs);
    const q = await qemu;
    clearTimeout(timer);
    const exitText = read(join(share, 'exit-code')).trim();
    return {
      exitCode: exitText === '' ? null : Number(exitText),
      tap: read(join(share, 'tap.txt')),
      stderr: read(join(share, 'stderr.txt')),
      setupLog: read(join(share, 'setup.txt')),
      console: `${read(join(dir, 'console.txt'))}${q.stderr ? `\n[qemu stderr]\n${String(q.stderr)}` : ''}`,
      dmesg: read(join(share, 'dmesg.txt')),
      timedOut,
      durationMs: Date.now() - t0,
      kernel: kver,
    };
  } finally {
    for (const d of daemons) d.kill('SIGTERM');
    await Promise.all(daemons);
    rmSync(dir, { recursive: true, force: true });
  }
}
