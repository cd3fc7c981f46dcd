/**
 * CSI NodeExpandVolume on a real cairnd (role all, embedded store) over its CSI socket, on
 * this host's attach path (nbdfuse + loop): with a writer running through the published
 * volume, ControllerExpandVolume then NodeExpandVolume grow it online; `df` on the publish
 * path (xfs, ext4 where the process may resize a mounted ext4) or `blockdev --getsize64`
 * on the published device node (block) shows the new size; a file that only fits in the
 * new space, or bytes at the new end, read back after unstage and stage again. Each code
 * of the spec's NodeExpandVolume table, and the idempotency rule. /dev/nbdX is covered by
 * test/kernel/nbd-expand.test.ts.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { combine, missingCommands, missingExt4OnlineResize, missingRoot, onlyWhere, requiring } from '../helpers/prereq.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const missing = combine(
  missingRoot('loop devices, FUSE and mounts'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'mkfs.xfs', 'xfs_growfs', 'resize2fs', 'blockdev', 'df'),
);
const nodeTest = onlyWhere(!existsSync('/sys/module/nbd'), 'this kernel has the nbd driver; test/kernel/nbd-expand.test.ts covers /dev/nbdX', requiring(missing, test.serial));
const noExt4Resize = missingExt4OnlineResize();
const ext4GrowTest = onlyWhere(!noExt4Resize, `${noExt4Resize}; test/kernel/nbd-expand.test.ts grows ext4`, nodeTest);
const ext4RefusedTest = onlyWhere(Boolean(noExt4Resize), 'this process may grow a mounted ext4', nodeTest);

let daemon: Daemon | undefined;
let csi: CsiTestClient;
let root: string;

const mountCap = (fsType: string): CsiMessage => ({ mount: { fsType, mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } });
const blockCap: CsiMessage = { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function start(): Promise<Daemon> {
  if (daemon) return daemon;
  daemon = await Daemon.start({ extraArgs: ['--node-name', 'node-a'] });
  csi = await csiClient(join(daemon.dataDir, 'csi.sock'));
  root = mkdtempSync('/tmp/cairn-csi-expand-');
  return daemon;
}

/** Every staging a test made, so that a failed test leaves no mount, loop device or nbdfuse behind. */
const made: Staged[] = [];

test.after.always(async () => {
  for (const s of made) {
    await csi.node.NodeUnpublishVolume!({ volumeId: s.volume, targetPath: s.target }, { timeoutMs: 30_000 });
    await csi.node.NodeUnstageVolume!({ volumeId: s.volume, stagingTargetPath: s.staging }, { timeoutMs: 30_000 });
  }
  csi?.close();
  if (daemon) await daemon.destroy();
  if (root) rmSync(root, { recursive: true, force: true });
});

interface Staged { volume: string; staging: string; target: string; cap: CsiMessage }

/** Creates, stages and publishes `volume`. */
async function stageAndPublish(volume: string, sizeMiB: number, cap: CsiMessage): Promise<Staged> {
  const r = await daemon!.ctl(['volume', 'create', volume, '--size', `${sizeMiB}MiB`]);
  if (r.exitCode !== 0) throw new Error(`volume create ${volume}: ${r.stderr}`);
  const staging = join(root, `${volume}-staging`);
  const target = join(root, `${volume}-target`);
  mkdirSync(staging);
  made.push({ volume, staging, target, cap });
  ok(await csi.node.NodeStageVolume!({ volumeId: volume, stagingTargetPath: staging, volumeCapability: cap }));
  ok(await csi.node.NodePublishVolume!({ volumeId: volume, stagingTargetPath: staging, targetPath: target, volumeCapability: cap }));
  return { volume, staging, target, cap };
}

async function unpublishAndUnstage(s: Staged): Promise<void> {
  ok(await csi.node.NodeUnpublishVolume!({ volumeId: s.volume, targetPath: s.target }));
  ok(await csi.node.NodeUnstageVolume!({ volumeId: s.volume, stagingTargetPath: s.staging }));
}

const nodeExpand = (s: Staged, extra: CsiMessage = {}): CsiMessage => ({ volumeId: s.volume, volumePath: s.target, stagingTargetPath: s.staging, volumeCapability: s.cap, ...extra });

/** ControllerExpandVolume then NodeExpandVolume to `bytes`, as the external-resizer and kubelet call them; the node's capacity_bytes. */
async function expandOnline(s: Staged, bytes: number): Promise<number> {
  const range = { requiredBytes: String(bytes) };
  const c = ok(await csi.controller.ControllerExpandVolume!({ volumeId: s.volume, capacityRange: range, volumeCapability: s.cap }));
  if (!c.nodeExpansionRequired) throw new Error('ControllerExpandVolume did not ask for node expansion');
  return Number(ok(await csi.node.NodeExpandVolume!(nodeExpand(s, { capacityRange: range }))).capacityBytes);
}

/**
 * Writes through the volume until stopped: `write(i)` writes item i (and fsyncs); any
 * error is kept. `stop` resolves with what was written, once the writer is idle.
 */
function startWriter(write: (i: number) => Promise<void>): { stop(): Promise<{ count: number; errors: unknown[] }> } {
  let stopped = false;
  const errors: unknown[] = [];
  let count = 0;
  const done = (async () => {
    while (!stopped) {
      try {
        await write(count++);
      } catch (err) {
        errors.push(err);
        return;
      }
    }
  })();
  return { stop: async () => { stopped = true; await done; return { count, errors }; } };
}

/** Writes `data` to `path` and fsyncs it (not sync(1): it waits on every filesystem of the machine). */
async function writeSynced(path: string, data: Buffer): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A file writer in `dir`: 256 KiB files, each fsynced; the sha256 of each by name. */
function fileWriter(dir: string): { digests: Map<string, string>; stop(): Promise<{ count: number; errors: unknown[] }> } {
  const digests = new Map<string, string>();
  const w = startWriter(async (i) => {
    const data = randomBytes(256 * 1024);
    await writeSynced(join(dir, `w${i}`), data);
    digests.set(`w${i}`, sha(data));
  });
  return { digests, stop: () => w.stop() };
}

/** A filesystem volume grows under a writer: df shows it, a file larger than the old free space is written and read back, also after stage again. */
async function growsOnline(t: ExecutionContext, volume: string, fsType: 'xfs' | 'ext4'): Promise<void> {
  await start();
  const s = await stageAndPublish(volume, 320, mountCap(fsType));
  const before = statfsSync(s.target);
  const writer = fileWriter(s.target);

  t.is(await expandOnline(s, 640 * MiB), 640 * MiB, 'capacity_bytes is the device size');
  const written = await writer.stop();
  t.deepEqual(written.errors, [], 'the writer saw no error across the growth');
  t.true(written.count > 0);

  const df = async (): Promise<number> => Number((await run('df', ['-B1', '--output=size', s.target])).split('\n')[1]!.trim());
  const grown = await df();
  t.true(grown > before.blocks * before.bsize + 250 * MiB, `df shows the new size: ${before.blocks * before.bsize} -> ${grown}`);
  const blockdev = Number((await run('blockdev', ['--getsize64', (await daemon!.ctlJson<{ staging: { devicePath: string } }>(['volume', 'inspect', volume])).staging.devicePath])).trim());
  t.is(blockdev, 640 * MiB);

  // Only fits in the new space.
  const big = randomBytes(before.bavail * before.bsize + 16 * MiB);
  await writeSynced(join(s.target, 'big'), big);
  t.is(codeName(await csi.node.NodeExpandVolume!(nodeExpand(s, { capacityRange: { requiredBytes: String(640 * MiB) } }))), 'OK', 'again: OK (idempotent)');
  t.is(Number(ok(await csi.node.NodeExpandVolume!(nodeExpand(s, { volumePath: s.staging }))).capacityBytes), 640 * MiB, 'no capacity_range, at the staging path: the volume size');

  await unpublishAndUnstage(s);
  ok(await csi.node.NodeStageVolume!({ volumeId: volume, stagingTargetPath: s.staging, volumeCapability: s.cap }));
  ok(await csi.node.NodePublishVolume!({ volumeId: volume, stagingTargetPath: s.staging, targetPath: s.target, volumeCapability: s.cap }));
  t.is(sha(readFileSync(join(s.target, 'big'))), sha(big), 'the file in the new space reads back after stage again');
  for (const [name, digest] of writer.digests) t.is(sha(readFileSync(join(s.target, name))), digest, `${name} reads back`);
  t.is(await df(), grown, 'staged again at the grown size');
  await unpublishAndUnstage(s);
}

nodeTest('NodeGetCapabilities advertises EXPAND_VOLUME', async (t) => {
  await start();
  const caps = ok(await csi.node.NodeGetCapabilities!({})).capabilities.map((c: CsiMessage) => c.rpc.type);
  t.true(caps.includes('EXPAND_VOLUME'));
});

nodeTest('xfs grows online under a writer: df shows the new size, a file in the new space reads back', async (t) => {
  await growsOnline(t, 'exp-xfs', 'xfs');
});

ext4GrowTest('ext4 grows online under a writer: df shows the new size, a file in the new space reads back', async (t) => {
  await growsOnline(t, 'exp-ext4', 'ext4');
});

ext4RefusedTest('ext4 where the kernel refuses online resize (no CAP_SYS_RESOURCE): FAILED_PRECONDITION naming it, the filesystem intact', async (t) => {
  await start();
  const s = await stageAndPublish('exp-ext4-nocap', 64, mountCap('ext4'));
  await writeFile(join(s.target, 'kept'), 'kept');
  ok(await csi.controller.ControllerExpandVolume!({ volumeId: s.volume, capacityRange: { requiredBytes: String(128 * MiB) } }));
  const res = await csi.node.NodeExpandVolume!(nodeExpand(s, { capacityRange: { requiredBytes: String(128 * MiB) } }));
  t.is(codeName(res), 'FAILED_PRECONDITION');
  t.regex(res.message ?? '', /CAP_SYS_RESOURCE/);
  t.is(readFileSync(join(s.target, 'kept'), 'utf8'), 'kept');
  await unpublishAndUnstage(s);
});

nodeTest('block grows online under a writer: blockdev --getsize64 on the published node shows it, bytes at the new end read back', async (t) => {
  await start();
  const s = await stageAndPublish('exp-block', 64, blockCap);
  const dev = await open(s.target, 'r+');
  const blocks = new Map<number, string>();
  const writer = startWriter(async (i) => {
    const data = randomBytes(64 * 1024);
    const offset = (i % 1000) * 64 * 1024;
    await dev.write(data, 0, data.length, offset);
    await dev.sync();
    blocks.set(offset, sha(data));
  });
  t.is(await expandOnline(s, 128 * MiB), 128 * MiB);
  const written = await writer.stop();
  t.deepEqual(written.errors, [], 'the writer saw no error across the growth');
  t.is(Number((await run('blockdev', ['--getsize64', s.target])).trim()), 128 * MiB, 'the published device node has the new size');

  const tail = randomBytes(MiB);
  await dev.write(tail, 0, tail.length, 128 * MiB - MiB);
  await dev.sync();
  await dev.close();
  await unpublishAndUnstage(s);
  // Unstage detached the device: this is a fresh attach, at the grown size.
  ok(await csi.node.NodeStageVolume!({ volumeId: s.volume, stagingTargetPath: s.staging, volumeCapability: blockCap }));
  ok(await csi.node.NodePublishVolume!({ volumeId: s.volume, stagingTargetPath: s.staging, targetPath: s.target, volumeCapability: blockCap }));
  const fh = await open(s.target, 'r');
  try {
    const read = async (offset: number, n: number): Promise<Buffer> => {
      const b = Buffer.alloc(n);
      await fh.read(b, 0, n, offset);
      return b;
    };
    t.is(sha(await read(128 * MiB - MiB, MiB)), sha(tail), 'the bytes at the new end read back after stage again');
    for (const [offset, digest] of blocks) t.is(sha(await read(offset, 64 * 1024)), digest, `block at ${offset}`);
  } finally {
    await fh.close();
  }
  t.is(Number((await run('blockdev', ['--getsize64', s.target])).trim()), 128 * MiB);
  await unpublishAndUnstage(s);
});

nodeTest('the spec\'s codes: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE; a refused call changes nothing', async (t) => {
  await start();
  const r = await daemon!.ctl(['volume', 'create', 'exp-codes', '--size', '64MiB']);
  t.is(r.exitCode, 0, r.stderr);
  const code = async (request: CsiMessage): Promise<string> => codeName(await csi.node.NodeExpandVolume!(request));
  const elsewhere = join(root, 'elsewhere');
  mkdirSync(elsewhere);

  t.is(await code({ volumeId: '', volumePath: elsewhere }), 'INVALID_ARGUMENT', 'no volume_id');
  t.is(await code({ volumeId: 'exp-codes', volumePath: '' }), 'INVALID_ARGUMENT', 'no volume_path');
  t.is(await code({ volumeId: 'exp-codes', volumePath: 'relative/path' }), 'INVALID_ARGUMENT', 'a relative volume_path');
  t.is(await code({ volumeId: 'no-such-volume', volumePath: elsewhere }), 'NOT_FOUND', 'unknown volume');
  t.is(await code({ volumeId: 'Not A Name', volumePath: elsewhere }), 'NOT_FOUND', 'an id no volume can have');
  t.is(await code({ volumeId: 'exp-codes', volumePath: elsewhere }), 'FAILED_PRECONDITION', 'not staged here');

  const s = await stageAndPublish('exp-codes-staged', 64, mountCap('ext4'));
  t.is(await code(nodeExpand(s, { volumePath: elsewhere })), 'NOT_FOUND', 'volume_path is not where the volume is');
  t.is(await code(nodeExpand(s, { stagingTargetPath: elsewhere })), 'NOT_FOUND', 'staging_target_path is not where it is staged');
  t.is(await code(nodeExpand(s, { volumeCapability: blockCap })), 'INVALID_ARGUMENT', 'a block capability for a mount staging');
  t.is(await code(nodeExpand(s, { volumeCapability: { mount: {}, accessMode: { mode: 'MULTI_NODE_MULTI_WRITER' } } })), 'INVALID_ARGUMENT', 'a capability Cairn cannot serve');
  t.is(await code(nodeExpand(s, { capacityRange: { requiredBytes: String(128 * MiB) } })), 'OUT_OF_RANGE', 'more than the volume has (ControllerExpandVolume first)');
  t.is(await code(nodeExpand(s, { capacityRange: { requiredBytes: String(64 * MiB), limitBytes: String(32 * MiB) } })), 'OUT_OF_RANGE', 'required over limit');
  t.is(await code(nodeExpand(s, { capacityRange: { requiredBytes: String(32 * MiB) } })), 'OK', 'already that large: OK');
  t.is(Number((await run('blockdev', ['--getsize64', (await daemon!.ctlJson<{ staging: { devicePath: string } }>(['volume', 'inspect', s.volume])).staging.devicePath])).trim()), 64 * MiB, 'nothing grew');
  await unpublishAndUnstage(s);
});
