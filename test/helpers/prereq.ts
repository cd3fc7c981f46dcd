/**
 * The one way a test is left out because the machine lacks something (etcd, root, loop
 * devices, a tool). Outside CI the test is skipped with the reason in its title; with
 * CI=true it is registered as a failing test that names what is missing and how to get
 * it, so a CI run cannot pass while part of the suite did not run.
 *
 * A test that does not apply to this machine at all (the host's kernel has no
 * device-mapper: the dm tests run in the kernel VM instead) is not a missing prerequisite:
 * `onlyWhere` names it so, and it is a skip in both modes.
 */
import avaTest from 'ava';
import type { ImplementationFn } from 'ava';
import { readFileSync } from 'node:fs';
import { has } from './run.js';

/** Why the test cannot run here, including how to install what is missing; null/undefined: nothing is. */
export type Missing = string | null | undefined;

type Impl = ImplementationFn<[], unknown>;
/** ava's `test`, `test.serial`, or anything registering a test the same way. */
export type Register = (title: string, implementation: Impl) => void;

/** The part of ava's `test` this module registers stand-ins with (a fake in its own unit test). */
export interface Registrar {
  (title: string, implementation: Impl): void;
  skip(title: string, implementation: Impl): void;
}

/** CI=true (or 1), as CI systems set it. */
export function inCi(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CI === 'true' || env.CI === '1';
}

/**
 * Registers the stand-in for a test (or a group, by its title) that cannot run because
 * `missing`: a skip outside CI, a failing test under CI=true.
 */
export function registerMissing(title: string, missing: string, registrar: Registrar = avaTest, env: NodeJS.ProcessEnv = process.env): void {
  if (inCi(env)) {
    registrar(`${title} (missing prerequisite: ${missing})`, (t) => {
      t.fail(`CI=true: a missing prerequisite is a failure, not a skip. Missing: ${missing}`);
    });
  } else {
    registrar.skip(`${title} (skipped: ${missing})`, () => undefined);
  }
}

/**
 * `register` itself when nothing is missing; otherwise a function that registers the
 * stand-in (see registerMissing) under the title it is given.
 *
 *   requiring(loopMissing, test.serial)('a full disk faults the replica', async (t) => { ... });
 */
export function requiring(missing: Missing, register: Register, registrar: Registrar = avaTest, env: NodeJS.ProcessEnv = process.env): Register {
  if (!missing) return register;
  return (title) => registerMissing(title, missing, registrar, env);
}

/**
 * For a whole file or group: true when nothing is missing (register the tests); otherwise
 * registers one stand-in titled `what` and returns false.
 *
 *   if (prerequisitesMet('etcd store tests', await etcdMissingReason())) { test.before(...); test(...); }
 */
export function prerequisitesMet(what: string, missing: Missing, registrar: Registrar = avaTest, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!missing) return true;
  registerMissing(what, missing, registrar, env);
  return false;
}

/**
 * A test that does not apply to this machine by design (not for lack of a prerequisite):
 * `register` when `applies`, else a skip titled "(not applicable here: <why>)" in both modes.
 */
export function onlyWhere(applies: boolean, why: string, register: Register, registrar: Registrar = avaTest): Register {
  if (applies) return register;
  return (title) => registrar.skip(`${title} (${NOT_APPLICABLE} ${why})`, () => undefined);
}

/** Marks the title of a test skipped by `onlyWhere` (the kernel VM's host side tells such skips apart by it). */
export const NOT_APPLICABLE = 'not applicable here:';

/** Several missing prerequisites in one reason; undefined when none is missing. */
export function combine(...reasons: Missing[]): string | undefined {
  const missing = reasons.filter((r): r is string => Boolean(r));
  return missing.length ? missing.join('; ') : undefined;
}

/** The Debian package (scripts/install-deps.sh installs them) that provides a test's command. */
const DEBIAN_PACKAGE: Readonly<Record<string, string>> = {
  nbdfuse: 'libnbd-bin', losetup: 'util-linux', nbdkit: 'nbdkit', 'qemu-io': 'qemu-utils', 'qemu-nbd': 'qemu-utils',
  'mkfs.xfs': 'xfsprogs', 'mkfs.btrfs': 'btrfs-progs', 'mkfs.ext4': 'e2fsprogs', etcd: 'etcd-server',
};

/** The commands not on PATH, with the packages to install; undefined when all are there. */
export async function missingCommands(...commands: string[]): Promise<string | undefined> {
  const absent: string[] = [];
  for (const c of commands) if (!(await has(c))) absent.push(c);
  if (absent.length === 0) return undefined;
  const packages = [...new Set(absent.map((c) => DEBIAN_PACKAGE[c] ?? c))];
  return `needs ${absent.join(', ')}: apt-get install ${packages.join(' ')} (scripts/install-deps.sh does)`;
}

/** undefined as root, else why the test needs it. */
export function missingRoot(why: string): string | undefined {
  return process.getuid?.() === 0 ? undefined : `needs root (${why}): run the tests as root`;
}

/** CAP_SYS_RESOURCE's bit in /proc/<pid>/status CapEff (linux/capability.h). */
const CAP_SYS_RESOURCE = 24n;

/**
 * undefined when this process (and so cairnd and the resize2fs it runs) may grow a mounted
 * ext4: the kernel's EXT4_IOC_RESIZE_FS wants CAP_SYS_RESOURCE, which some sandboxes drop
 * even for root (resize2fs then fails "Permission denied to resize filesystem"). xfs_growfs
 * needs only CAP_SYS_ADMIN. The kernel VM (test/kernel) runs with every capability.
 */
export function missingExt4OnlineResize(status?: string): string | undefined {
  const text = status ?? readFileSync('/proc/self/status', 'utf8');
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(text)?.[1];
  if (hex && (BigInt(`0x${hex}`) >> CAP_SYS_RESOURCE) & 1n) return undefined;
  return 'needs CAP_SYS_RESOURCE to grow a mounted ext4 (resize2fs online); this process does not have it (a sandbox that drops it): run as full root, or see test/kernel for ext4';
}
