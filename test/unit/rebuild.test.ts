/**
 * Rebuild against real replicas: two ReplicaManagers on file pools in temp dirs (two
 * "nodes"), the source in sync and the target rebuilding, reached through the engine's
 * LocalReplicaIo (wrapped to record and to inject faults) and the managers' methods as
 * ReplicaControl.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { ReplicaControl, ReplicaIo } from '../../src/engine/engine-types.js';
import { contiguousRuns, runRebuild, type RebuildContext } from '../../src/engine/rebuild.js';
import { RegionLocks, RegionMap } from '../../src/engine/region-map.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import type { ReplicaManager } from '../../src/replica/replica-manager.js';
import type { RebuildProgressRecord } from '../../src/store/node-store.js';
import { replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

const KiB = 1024;
const REGION = 64 * KiB;
/** 33 regions, the last one 16 KiB. */
const SIZE = 32 * REGION + 16 * KiB;
const EPOCH = 3;
const VOLUME = 'vol-rebuild' as VolumeId;
const sourceRef = { replicaId: 'rep-src', volumeId: VOLUME };
const targetRef = { replicaId: 'rep-tgt', volumeId: VOLUME };

interface IoEvent { op: 'write' | 'write-zeroes' | 'read' | 'flush'; offset: number; lengthBytes: number }

/** Records what passes through, with optional hooks before a read and on write data. */
class RecordingIo implements ReplicaIo {
  readonly events: IoEvent[] = [];
  /** Runs after the inner read returned, before its data goes back to the caller. */
  afterRead?: (offset: number) => Promise<void> | void;
  mangleWrite?: (offset: number, data: Uint8Array) => Uint8Array;
  failWrites?: StorageError;
  constructor(readonly inner: ReplicaIo) {}
  get replicaId(): ReplicaId { return this.inner.replicaId; }
  get nodeId(): NodeId { return this.inner.nodeId; }
  get local(): boolean { return this.inner.local; }
  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    if (this.failWrites) throw this.failWrites;
    this.events.push({ op: 'write', offset, lengthBytes: data.byteLength });
    await this.inner.write(offset, this.mangleWrite ? this.mangleWrite(offset, data) : data, fua);
  }
  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    this.events.push({ op: 'read', offset, lengthBytes });
    const data = await this.inner.read(offset, lengthBytes);
    await this.afterRead?.(offset);
    return data;
  }
  async flush(): Promise<void> {
    this.events.push({ op: 'flush', offset: 0, lengthBytes: 0 });
    await this.inner.flush();
  }
  trim(offset: number, lengthBytes: number): Promise<void> { return this.inner.trim(offset, lengthBytes); }
  async writeZeroes(offset: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    this.events.push({ op: 'write-zeroes', offset, lengthBytes });
    await this.inner.writeZeroes(offset, lengthBytes, mayTrim);
  }
  close(): Promise<void> { return this.inner.close(); }
  cancel(): void { this.inner.cancel(); }
  /** Bytes written or zeroed. */
  bytesIn(): number {
    return this.events.filter((e) => e.op === 'write' || e.op === 'write-zeroes').reduce((n, e) => n + e.lengthBytes, 0);
  }
  regionsWritten(): number[] {
    return [...new Set(this.events.filter((e) => e.op === 'write' || e.op === 'write-zeroes').map((e) => Math.floor(e.offset / REGION)))].sort((a, b) => a - b);
  }
}

function controlOf(m: ReplicaManager): ReplicaControl {
  return {
    createReplica: (ref, sizeBytes, epoch, inSync) => m.create(ref, sizeBytes, epoch, inSync),
    deleteReplica: (ref, epoch) => m.delete(ref, epoch),
    getReplicaStatus: (ref) => m.status(ref),
    checksumRange: (ref, epoch, offset, lengthBytes, regionBytes) => m.checksumRange(ref, epoch, offset, lengthBytes, regionBytes),
    startRebuild: (ref, epoch, totalBytes, restart) => m.startRebuild(ref, epoch, totalBytes, restart ?? false),
    updateRebuildProgress: (ref, epoch, progress) => m.updateRebuildProgress(ref, epoch, progress),
    finishRebuild: (ref, epoch) => m.finishRebuild(ref, epoch),
    resizeReplica: (ref, sizeBytes, epoch) => m.resize(ref, sizeBytes, epoch),
  };
}

interface Setup {
  src: ReplicaFixture;
  tgt: ReplicaFixture;
  source: RecordingIo;
  target: RecordingIo;
  sourceControl: ReplicaControl;
  targetControl: ReplicaControl;
  progress: RebuildProgressRecord[];
  /** For each progress record: how many target I/O events had happened when it was sent. */
  progressAt: number[];
  saved: Buffer[];
  locks: RegionLocks;
  /** A rebuild context over `map`; `persistMap` records each save. */
  context(map: RegionMap, extra?: Partial<RebuildContext>): RebuildContext;
  deviceBytes(f: ReplicaFixture, ref: typeof sourceRef): Promise<Buffer>;
}

async function setup(t: ExecutionContext): Promise<Setup> {
  const src = await replicaFixture();
  const tgt = await replicaFixture();
  t.teardown(async () => {
    await src.cleanup();
    await tgt.cleanup();
  });
  await src.manager.create(sourceRef, SIZE, EPOCH, true);
  await tgt.manager.create(targetRef, SIZE, EPOCH, false);
  const source = new RecordingIo(new LocalReplicaIo(await src.manager.open(sourceRef), EPOCH, 'node-a' as NodeId));
  const target = new RecordingIo(new LocalReplicaIo(await tgt.manager.open(targetRef), EPOCH, 'node-b' as NodeId));
  const progress: RebuildProgressRecord[] = [];
  const progressAt: number[] = [];
  const baseTarget = controlOf(tgt.manager);
  const targetControl: ReplicaControl = {
    ...baseTarget,
    updateRebuildProgress: async (ref, epoch, p) => {
      progressAt.push(target.events.length);
      const status = await baseTarget.updateRebuildProgress(ref, epoch, p);
      progress.push(p);
      return status;
    },
  };
  const saved: Buffer[] = [];
  const locks = new RegionLocks(SIZE, REGION);
  const s: Setup = {
    src, tgt, source, target, sourceControl: controlOf(src.manager), targetControl, progress, progressAt, saved, locks,
    context: (map, extra = {}) => ({
      volumeId: VOLUME, target: { id: 'rep-tgt' as ReplicaId, nodeId: 'node-b' as NodeId, state: 'rebuilding', since: new Date().toISOString() },
      epoch: EPOCH, sizeBytes: SIZE, regionBytes: REGION, source, targetIo: target, sourceControl: s.sourceControl, targetControl,
      map, persistMap: () => saved.push(map.toBuffer()), locks, rateBytesPerSec: 0, signal: new AbortController().signal, log: silentLogger(),
      ...extra,
    }),
    deviceBytes: async (f, ref) => (await (await f.manager.open(ref)).openedDevice()).read(0, SIZE),
  };
  return s;
}

/** Fills the source: random data in most regions, zeros in regions 5, 6 and 20, data in the short last one. */
async function fillSource(s: Setup): Promise<void> {
  for (let r = 0; r < 33; r++) {
    if (r === 5 || r === 6 || r === 20) continue;
    await s.source.inner.write(r * REGION, randomBytes(Math.min(REGION, SIZE - r * REGION)), false);
  }
  await s.source.inner.flush();
}

/** Makes the target hold the source's bytes except in `dirty`, where it holds junk. */
async function staleTarget(s: Setup, dirty: readonly number[]): Promise<void> {
  const bytes = await s.deviceBytes(s.src, sourceRef);
  await s.target.inner.write(0, bytes, false);
  for (const r of dirty) await s.target.inner.write(r * REGION, randomBytes(Math.min(REGION, SIZE - r * REGION)), false);
  await s.target.inner.flush();
}

/** Byte equality of two devices' contents; names the first differing offset. */
function sameBytes(t: ExecutionContext, actual: Buffer, expected: Buffer, message = 'target byte-identical to the source'): void {
  if (actual.equals(expected)) return void t.pass(message);
  let at = 0;
  while (at < Math.min(actual.length, expected.length) && actual[at] === expected[at]) at++;
  t.fail(`${message}: they differ first at byte ${at} (region ${Math.floor(at / REGION)}), lengths ${actual.length} and ${expected.length}`);
}

function mapOf(regions: readonly number[]): RegionMap {
  const map = new RegionMap(SIZE, REGION);
  for (const r of regions) map.set(r);
  return map;
}

test('copies exactly the set regions, zeros as write-zeroes, checkpoints on the target, and finishes in sync', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const dirty = [0, 1, 5, 6, 7, 19, 20, 32];
  await staleTarget(s, dirty);
  const map = mapOf(dirty);
  const dirtyBytes = map.dirtyBytes();
  t.is(dirtyBytes, 7 * REGION + 16 * KiB);
  const reports: number[] = [];
  const result = await runRebuild(s.context(map, { concurrency: 3, onProgress: (p) => reports.push(p.doneBytes) }));

  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef), 'target byte-identical to the source');
  t.deepEqual(s.target.regionsWritten(), dirty, 'only the set regions were written');
  t.is(s.target.bytesIn(), dirtyBytes);
  const zeroed = s.target.events.filter((e) => e.op === 'write-zeroes').map((e) => e.offset / REGION);
  t.deepEqual(zeroed.sort((a, b) => a - b), [5, 6, 20], 'zero regions went as write-zeroes');
  t.deepEqual(result, { ...result, copiedBytes: dirtyBytes, zeroedBytes: 3 * REGION, regionsVerified: dirty.length });

  t.is(map.count(), 0);
  t.deepEqual(s.saved.at(-1), Buffer.alloc(5), 'the persisted map ends empty');
  const last = s.progress.at(-1)!;
  t.deepEqual(last, { doneBytes: dirtyBytes, totalBytes: dirtyBytes, checkpoint: Buffer.alloc(5) }, 'the checkpoint on the target is the map');
  t.is(reports.at(-1), dirtyBytes);
  const status = await s.targetControl.getReplicaStatus(targetRef);
  t.is(status.state, 'in-sync');
  t.is(status.rebuild, undefined);
  const flushes = s.target.events.filter((e) => e.op === 'flush').length;
  t.true(flushes >= 1, 'the target was flushed before bits were cleared');
});

test('abort mid-way keeps only flushed regions cleared; the next run with the persisted map copies the rest', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const dirty = Array.from({ length: 33 }, (_, r) => r);
  await staleTarget(s, dirty);
  const first = RegionMap.full(SIZE, REGION);
  const ac = new AbortController();
  let reads = 0;
  s.source.afterRead = () => {
    if (++reads === 10) ac.abort();
  };
  const err = await t.throwsAsync(runRebuild(s.context(first, { concurrency: 2, signal: ac.signal })), { instanceOf: StorageError });
  t.is(err.code, Code.CANCELLED);
  t.regex(err.message, /rebuild of replica rep-tgt of volume vol-rebuild cancelled/);
  const firstBytes = s.target.bytesIn();
  t.true(firstBytes >= 10 * REGION && firstBytes < SIZE, `the first run copied part of the volume (${firstBytes} bytes)`);
  const savedBits = s.saved.at(-1)!;
  const persisted = new RegionMap(SIZE, REGION, savedBits);
  t.is(persisted.dirtyBytes(), SIZE - firstBytes, 'exactly the copied (and flushed) regions were cleared');
  const status = await s.targetControl.getReplicaStatus(targetRef);
  t.is(status.state, 'rebuilding');
  t.deepEqual(status.rebuild?.checkpoint, savedBits, 'the target recorded the checkpoint');
  t.is(status.rebuild?.doneBytes, firstBytes);

  // A restart: the engine loads the saved map and runs again.
  s.source.afterRead = undefined;
  s.target.events.length = 0;
  const second = await runRebuild(s.context(persisted));
  t.is(s.target.bytesIn(), SIZE - firstBytes);
  t.is(second.copiedBytes, SIZE - firstBytes, 'both runs together copied the volume once');
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef));
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');
});

test('an abort while waiting on the rate limit rejects at once with CANCELLED', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const ac = new AbortController();
  // One byte a second: the first region passes on the burst, the second would wait 18 hours.
  const running = runRebuild(s.context(mapOf([3, 4, 9]), { concurrency: 1, rateBytesPerSec: 1, signal: ac.signal }));
  while (!s.target.events.some((e) => e.op === 'write')) await new Promise((resolve) => setImmediate(resolve));
  ac.abort();
  const err = await t.throwsAsync(running, { instanceOf: StorageError });
  t.is(err.code, Code.CANCELLED);
  t.deepEqual(new RegionMap(SIZE, REGION, s.saved.at(-1)).nextSet(0), 4, 'the region copied before the abort stays cleared');
});

test('a checkpoint about every second clears only regions the target flushed before it', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  const dirty = [0, 1, 2, 3, 4, 5];
  // Region 0 takes over a second to read, so a checkpoint falls due while the copy goes on.
  s.source.afterRead = (offset) => (offset === 0 ? new Promise((resolve) => setTimeout(resolve, 1200)) : undefined);
  await runRebuild(s.context(mapOf(dirty), { concurrency: 1 }));
  t.true(s.progress.length >= 2, `a checkpoint before the end (${s.progress.length} in all)`);
  const mid = new RegionMap(SIZE, REGION, s.progress[0]!.checkpoint);
  t.false(mid.has(0), 'region 0 was cleared mid-way');
  t.true(mid.count() > 0 && s.progress[0]!.doneBytes < s.progress[0]!.totalBytes, 'before the end');
  s.progress.forEach((p, i) => {
    const bits = new RegionMap(SIZE, REGION, p.checkpoint);
    const events = s.target.events.slice(0, s.progressAt[i]);
    const lastFlush = events.map((e) => e.op).lastIndexOf('flush');
    for (const r of dirty.filter((d) => !bits.has(d))) {
      const written = events.findIndex((e) => (e.op === 'write' || e.op === 'write-zeroes') && Math.floor(e.offset / REGION) === r);
      t.true(written >= 0 && written < lastFlush, `checkpoint ${i}: region ${r} was written and flushed before its bit was cleared`);
    }
    t.is(p.doneBytes, (dirty.length - bits.count()) * REGION);
  });
  t.is(s.progress.at(-1)!.doneBytes, dirty.length * REGION);
});

test('a live write racing the copy of its region ends up on the target', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  await staleTarget(s, [2, 3]);
  const fresh = Buffer.alloc(4 * KiB, 0x5a);
  const liveOffset = 3 * REGION + 8 * KiB;
  /** What the engine does for a write while a replica rebuilds: a shared region hold around writing to both. */
  const liveWrite = async (): Promise<void> => {
    const release = s.locks.tryShared(liveOffset, fresh.length) ?? await s.locks.shared(liveOffset, fresh.length);
    try {
      await Promise.all([s.source.inner.write(liveOffset, fresh, false), s.target.inner.write(liveOffset, fresh, false)]);
    } finally {
      release();
    }
  };
  let unblock!: () => void;
  let live: Promise<void> | undefined;
  let liveWaited = false;
  let liveStarted!: () => void;
  const started = new Promise<void>((resolve) => (liveStarted = resolve));
  s.source.afterRead = async (offset) => {
    if (offset !== 3 * REGION || live) return;
    // The rebuild holds region 3 and has read its old bytes: a live write comes in now.
    const probe = s.locks.tryShared(liveOffset, fresh.length);
    probe?.();
    liveWaited = probe === undefined;
    live = liveWrite();
    liveStarted();
    await new Promise<void>((resolve) => (unblock = resolve));
  };
  const running = runRebuild(s.context(mapOf([2, 3]), { concurrency: 1 }));
  await Promise.race([started, running]);
  t.truthy(live, 'the copy of region 3 started');
  t.true(liveWaited, 'live I/O on a region being copied waits');
  unblock();
  await running;
  await live;
  t.is(s.target.events.filter((e) => e.op === 'write' && e.offset === 3 * REGION).length, 1, 'region 3 was copied once: verify found nothing stale');
  const target = await s.deviceBytes(s.tgt, targetRef);
  t.deepEqual(target.subarray(liveOffset, liveOffset + fresh.length), fresh);
  sameBytes(t, target, await s.deviceBytes(s.src, sourceRef));

  // And the other order: a live write holding the region first makes the copy wait for it.
  s.source.afterRead = undefined;
  const held = s.locks.tryShared(7 * REGION, 512)!;
  // The event that proves it: the copy asked for region 7's lock, and is not granted it
  // while the live write holds it.
  const exclusive = s.locks.exclusive.bind(s.locks);
  let asked = (): void => undefined;
  const askedFor7 = new Promise<void>((resolve) => (asked = resolve));
  let granted = false;
  s.locks.exclusive = (first, count) => {
    if (first === 7) asked();
    return exclusive(first, count).then((release) => {
      granted = true;
      return release;
    });
  };
  const second = runRebuild(s.context(mapOf([7]), { concurrency: 1 }));
  await askedFor7;
  await new Promise((resolve) => setImmediate(resolve));
  t.false(granted, 'the copy waits for live I/O on its region');
  t.false(s.source.events.some((e) => e.op === 'read' && e.offset === 7 * REGION), 'nothing of region 7 was read meanwhile');
  await s.source.inner.write(7 * REGION, fresh, false);
  await s.target.inner.write(7 * REGION, fresh, false);
  held();
  await second;
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef));
});

test('a region that differs at verify is copied again; one that keeps differing is DATA_LOSS', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  await staleTarget(s, [10, 11, 12]);
  // Corrupt region 11 on the target once, between its copy and the checksum comparison.
  let corrupted = false;
  s.targetControl.checksumRange = async (ref, epoch, offset, lengthBytes, regionBytes) => {
    if (!corrupted) {
      corrupted = true;
      await s.target.inner.write(11 * REGION + 100 * 512, Buffer.alloc(512, 0xee), false);
    }
    return controlOf(s.tgt.manager).checksumRange(ref, epoch, offset, lengthBytes, regionBytes);
  };
  const map = mapOf([10, 11, 12]);
  const result = await runRebuild(s.context(map));
  const copies = s.target.events.filter((e) => e.op === 'write').map((e) => e.offset / REGION);
  t.deepEqual(copies.sort((a, b) => a - b), [10, 11, 11, 12], 'region 11 was copied a second time');
  t.is(result.regionsVerified, 3);
  t.is(result.copiedBytes, 4 * REGION);
  sameBytes(t, await s.deviceBytes(s.tgt, targetRef), await s.deviceBytes(s.src, sourceRef));
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');

  // A target that corrupts region 12 on every write never agrees.
  const s2 = await setup(t);
  await fillSource(s2);
  s2.target.mangleWrite = (offset, data) => {
    if (Math.floor(offset / REGION) !== 12) return data;
    const bad = Buffer.from(data);
    bad[0]! ^= 0xff;
    return bad;
  };
  const map2 = mapOf([10, 12]);
  const err = await t.throwsAsync(runRebuild(s2.context(map2)), { instanceOf: StorageError });
  t.is(err.code, Code.DATA_LOSS);
  t.is(err.message, 'replica rep-tgt still differs from its source in 1 regions after 3 rebuild rounds; it stays faulted: check its disk');
  t.deepEqual(s2.target.events.filter((e) => e.op === 'write' && e.offset === 12 * REGION).length, 3, 'three rounds of copies');
  t.true(map2.has(12) && !map2.has(10), 'the differing region stays set');
  t.deepEqual(s2.saved.at(-1), map2.toBuffer(), 'and persisted');
  t.is((await s2.targetControl.getReplicaStatus(targetRef)).state, 'rebuilding', 'not finished');
});

test('an error from the target rejects the rebuild with that error, without finishing it', async (t) => {
  const s = await setup(t);
  await fillSource(s);
  s.target.failWrites = new StorageError(Code.UNAVAILABLE, 'node-b is unreachable');
  const err = await t.throwsAsync(runRebuild(s.context(mapOf([1, 2, 3]))), { instanceOf: StorageError });
  t.is(err.code, Code.UNAVAILABLE);
  t.is(err.message, 'node-b is unreachable');
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'rebuilding');
});

test('an already clean map verifies nothing and finishes', async (t) => {
  const s = await setup(t);
  const result = await runRebuild(s.context(new RegionMap(SIZE, REGION)));
  t.is(result.copiedBytes, 0);
  t.is(result.regionsVerified, 0);
  t.is((await s.targetControl.getReplicaStatus(targetRef)).state, 'in-sync');
});

test('contiguous runs are cut at gaps and at the maximum length', (t) => {
  t.deepEqual(contiguousRuns([], 64), []);
  t.deepEqual(contiguousRuns([1, 2, 3, 7, 8, 10], 64), [[1, 3], [7, 2], [10, 1]]);
  t.deepEqual(contiguousRuns([0, 1, 2, 3, 4], 2), [[0, 2], [2, 2], [4, 1]]);
});
