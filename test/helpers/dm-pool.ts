/**
 * Test helper for the kernel tests (test/kernel/**, run in the VM): loop disks, a dm pool
 * on them in a temp dir, byte patterns, and cleanup that removes every dm device of the
 * pool before the loop devices go.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { asDeviceId, type DeviceId } from '../../src/common/ids.js';
import { createLogger } from '../../src/common/log.js';
import { dmList, dmRemove } from '../../src/native/index.js';
import { DmBackend, type DmBackendOptions } from '../../src/pool/dm-backend.js';
import { makeLoopDevice, type LoopDevice } from './loop-fs.js';

export const MIB = 1024 * 1024;
export const log = createLogger({ level: process.env.CAIRN_TEST_LOG === '1' ? 'debug' : 'silent', format: 'json' });

let counter = 0;
/** A tag unique to this process and call, so tests never share dm names. */
export function uniqueTag(): string {
  counter++;
  return `t${process.pid.toString(36)}${counter}`;
}

export function dev(name: string): DeviceId {
  return asDeviceId(name);
}

/** Removes every dm device whose name starts with cairn-<tag>-, thin devices first. */
export async function removePoolDevices(tag: string): Promise<void> {
  const prefix = `cairn-${tag}-`;
  const order = (n: string): number => (n.endsWith('-pool') ? 1 : n.endsWith('-data') || n.endsWith('-meta') ? 2 : 0);
  const names = (await dmList()).map((d) => d.name).filter((n) => n.startsWith(prefix)).sort((a, b) => order(a) - order(b));
  for (const n of names) await dmRemove(n).catch(() => undefined);
}

export interface TestPool {
  dir: string;
  tag: string;
  disks: LoopDevice[];
  backend: DmBackend;
  open(extra?: Partial<DmBackendOptions>): Promise<DmBackend>;
  addLoopDisk(sizeBytes: number): Promise<string>;
}

/** A dm pool on new loop disks of the given sizes, torn down when the test ends. */
export async function makePool(t: ExecutionContext, diskBytes: number[], extra: Partial<DmBackendOptions> = {}): Promise<TestPool> {
  const dir = mkdtempSync('/tmp/cairn-dm-');
  const tag = uniqueTag();
  const disks: LoopDevice[] = [];
  t.teardown(async () => {
    await removePoolDevices(tag);
    for (const d of disks) await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  for (const bytes of diskBytes) disks.push(await makeLoopDevice(bytes));
  const pool: TestPool = {
    dir,
    tag,
    disks,
    backend: undefined as unknown as DmBackend,
    open: async (more = {}) => {
      pool.backend = await DmBackend.open({ dir, tag, disks: disks.map((d) => d.device), log, ...extra, ...more });
      return pool.backend;
    },
    addLoopDisk: async (bytes) => {
      const d = await makeLoopDevice(bytes);
      disks.push(d);
      return d.device;
    },
  };
  await pool.open();
  return pool;
}

/**
 * A deterministic pattern: `length` bytes of `seed`'s byte, with the seed and the sector's
 * index stamped at the start of every 512-byte sector (cheap to make under emulation,
 * and a misplaced or stale sector never matches).
 */
export function pattern(seed: number, length: number): Buffer {
  const buf = Buffer.alloc(length, (seed * 37 + 11) & 0xff);
  for (let at = 0, i = 0; at + 8 <= length; at += 512, i++) {
    buf.writeUInt32LE(seed >>> 0, at);
    buf.writeUInt32LE(i, at + 4);
  }
  return buf;
}

export function tmpPath(dir: string, name: string): string {
  return join(dir, name);
}

/**
 * Asserts two buffers hold the same bytes with a native compare (t.deepEqual walks big
 * buffers byte by byte in JavaScript: minutes under emulation). Names the first difference.
 */
export function sameBytes(t: ExecutionContext, actual: Buffer, expected: Buffer, message = 'bytes match'): void {
  if (actual.equals(expected)) {
    t.pass(message);
    return;
  }
  let at = 0;
  while (at < Math.min(actual.length, expected.length) && actual[at] === expected[at]) at++;
  t.fail(`${message}: lengths ${actual.length}/${expected.length}, first difference at byte ${at}`);
}
