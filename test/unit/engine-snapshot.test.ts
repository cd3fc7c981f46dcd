/**
 * The engine's write barrier (issue 12, item 1; DESIGN.md rule 5) over real replicas (three
 * "nodes" in one process, each a replica manager on a file pool): point-in-time copies under
 * a concurrent writer, reads through the pause, a write waiting for its fault record holding
 * the barrier, a failed copy and a hung one (the deadline) leaving no copy and writes going on.
 */
import test, { type ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { DeviceId, SnapshotId } from '../../src/common/ids.js';
import { barrierPauses } from '../../src/engine/barrier-stats.js';
import type { ReplicaControl } from '../../src/engine/engine-types.js';
import { MiB, SIZE, replicatedEngine, stillPending } from '../helpers/engine-fixture.js';
import { codeOf, filled, type ReplicaFixture } from '../helpers/replica-fixture.js';

const BLOCK = 4096;

const setup = (t: ExecutionContext, rf = 3): ReturnType<typeof replicatedEngine> => replicatedEngine(t, rf);

async function copiesEverywhere(fxs: ReplicaFixture[]): Promise<string[][]> {
  return Promise.all(fxs.map(async (fx) => (await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId)));
}

async function readCopy(fx: ReplicaFixture, id: SnapshotId, offset = 0, length = SIZE): Promise<Buffer> {
  const dev = await fx.pool.open(id as string as DeviceId);
  try {
    return await dev.read(offset, length);
  } finally {
    await dev.close();
  }
}

/** A control whose snapshotReplica waits for `release()` before doing (or failing) the real thing. */
function heldCopies(real: ReplicaControl, fail?: StorageError): { control: ReplicaControl; release: () => void; called: () => boolean } {
  let open = (): void => undefined;
  const gate = new Promise<void>((r) => (open = r));
  let called = false;
  const control: ReplicaControl = {
    ...real,
    snapshotReplica: async (ref, epoch, id) => {
      called = true;
      await gate;
      if (fail) throw fail;
      return real.snapshotReplica(ref, epoch, id);
    },
  };
  return { control, release: open, called: () => called };
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 100_000) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** A block stamped with a generation: its 32-bit number repeated. */
function stamped(gen: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let i = 0; i < BLOCK; i += 4) b.writeUInt32LE(gen, i);
  return b;
}

test('under a concurrent writer: every copy holds each write acknowledged before the call and none issued after it returned; copies are identical; writes wait while the gate is closed, none fails', async (t) => {
  const { s, fxs } = await setup(t);
  const e = await s.start();
  const WRITERS = 8;
  const BLOCKS_PER_WRITER = 16;
  const blocks = WRITERS * BLOCKS_PER_WRITER;
  const acked = new Uint32Array(blocks);
  const issued = new Uint32Array(blocks);
  let phase: 'before' | 'during' | 'after' = 'before';
  let ackedWhileClosed = 0;
  let issuedDuringPause = 0;
  let pausesBefore = Number.POSITIVE_INFINITY;
  let stop = false;
  const failures: unknown[] = [];
  const writer = async (w: number): Promise<void> => {
    for (let gen = 1; !stop; gen++) {
      const b = w * BLOCKS_PER_WRITER + (gen % BLOCKS_PER_WRITER);
      issued[b] = gen;
      const issuedIn = phase;
      if (issuedIn === 'during') issuedDuringPause++;
      try {
        await e.write(b * BLOCK, stamped(gen));
      } catch (err) {
        failures.push(err);
        return;
      }
      // The gate opens when the pause is recorded: until then no write issued in the call may complete.
      if (issuedIn === 'during' && barrierPauses.count <= pausesBefore) ackedWhileClosed++;
      acked[b] = gen;
      // Local file writes can complete without the event loop reaching its check phase: yield.
      await new Promise((r) => setImmediate(r));
    }
  };
  const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));
  await until('every writer has written', () => acked.every((g, b) => g > 0 || b % BLOCKS_PER_WRITER === 0));
  pausesBefore = barrierPauses.count;
  const snap = 'snap-load' as SnapshotId;
  const ackedAtCall = Uint32Array.from(acked);
  const taking = e.snapshot(snap, { deadlineMs: 30_000 });
  phase = 'during';
  const result = await taking;
  phase = 'after';
  const issuedAtReturn = Uint32Array.from(issued);
  await until('writes go on after the barrier', () => acked.some((g, b) => g > issuedAtReturn[b]!));
  stop = true;
  await Promise.all(writers);

  t.deepEqual(failures, [], 'no write failed');
  t.is(ackedWhileClosed, 0, 'no write issued during the call was acknowledged while the gate was closed');
  t.true(issuedDuringPause > 0, 'writers did issue writes during the pause');
  t.deepEqual(result.copies.map((c) => c.replicaId).sort(), s.ids);
  t.is(result.epoch, 1);
  t.true(result.pauseUs > 0);
  t.true(barrierPauses.count > pausesBefore, 'the pause went into the histogram (other tests of this file add theirs too)');
  const copies = await Promise.all(fxs.map((fx) => readCopy(fx, snap)));
  t.true(copies.every((c) => c.equals(copies[0]!)), 'every copy is byte-identical');
  for (let b = 0; b < blocks; b++) {
    const gen = copies[0]!.readUInt32LE(b * BLOCK);
    if (gen < ackedAtCall[b]! || gen > issuedAtReturn[b]!) t.fail(`block ${b}: generation ${gen} outside [${ackedAtCall[b]}, ${issuedAtReturn[b]}]`);
    if (!copies[0]!.subarray(b * BLOCK, (b + 1) * BLOCK).equals(stamped(gen))) t.fail(`block ${b} is torn`);
  }
});

test('reads complete while the gate is closed; a write waits; a second snapshot meanwhile is ABORTED', async (t) => {
  const { s, fxs } = await setup(t);
  const e = await s.start();
  await e.write(0, filled(BLOCK, 0x11));
  const held = heldCopies(await s.connector.control(s.nodes[1]!));
  s.connector.controls.set(s.nodes[1]!, held.control);
  const taking = e.snapshot('snap-r' as SnapshotId, { deadlineMs: 30_000 });
  await until('the copies are being taken', held.called);
  t.deepEqual(await e.read(0, BLOCK), filled(BLOCK, 0x11), 'a read completes during the pause');
  const w = e.write(0, filled(BLOCK, 0x22));
  t.true(await stillPending(w), 'a write waits during the pause');
  t.is(await codeOf(e.snapshot('snap-other' as SnapshotId, { deadlineMs: 30_000 })), Code.ABORTED);
  held.release();
  await taking;
  await w;
  for (const fx of fxs) t.deepEqual(await readCopy(fx, 'snap-r' as SnapshotId, 0, BLOCK), filled(BLOCK, 0x11), 'the waiting write is in no copy');
  t.deepEqual(await e.read(0, BLOCK), filled(BLOCK, 0x22));
});

test('a write waiting for its fault record holds the barrier until the record; the faulted replica gets no copy', async (t) => {
  const { s, fxs } = await setup(t);
  const e = await s.start();
  s.control.hold(); // the cluster store does not answer yet
  s.connector.ios.get(s.ids[2]!)!.mode = 'error';
  s.connector.down.add(s.ids[2]!);
  const w = e.write(MiB, filled(BLOCK, 0x33)); // fails on replica 2: waits for markFaulted
  await until('markFaulted was called', () => s.control.faulted.length === 1);
  const taking = e.snapshot('snap-f' as SnapshotId, { deadlineMs: 30_000 });
  t.true(await stillPending(taking, 20), 'the barrier waits for the write\'s fault commit');
  t.deepEqual(await copiesEverywhere(fxs), [[], [], []], 'no copy is taken before the fault is recorded');
  s.control.release();
  await w;
  const result = await taking;
  t.deepEqual(result.copies.map((c) => c.replicaId).sort(), [s.ids[0], s.ids[1]]);
  t.deepEqual(await copiesEverywhere(fxs), [['snap-f'], ['snap-f'], []]);
  t.deepEqual(await readCopy(fxs[1]!, 'snap-f' as SnapshotId, MiB, BLOCK), filled(BLOCK, 0x33));
});

test('a replica whose copy fails: the error names it, no copy is left anywhere, writes resume', async (t) => {
  const { s, fxs } = await setup(t);
  const e = await s.start();
  const real = await s.connector.control(s.nodes[1]!);
  s.connector.controls.set(s.nodes[1]!, { ...real, snapshotReplica: () => Promise.reject(new StorageError(Code.RESOURCE_EXHAUSTED, 'the pool is full')) });
  const err = await t.throwsAsync(e.snapshot('snap-x' as SnapshotId, { deadlineMs: 30_000 }));
  t.is((err as StorageError).code, Code.RESOURCE_EXHAUSTED);
  t.regex(err!.message, /replica rep-1 on node node-1: the pool is full/);
  t.deepEqual(await copiesEverywhere(fxs), [[], [], []]);
  await e.write(0, filled(BLOCK, 0x44));
  t.deepEqual(await e.read(0, BLOCK), filled(BLOCK, 0x44));
});

test('a copy that hangs: DEADLINE_EXCEEDED, writes resume, the copies (the late one too) are deleted', async (t) => {
  const { s, fxs } = await setup(t);
  const e = await s.start();
  const held = heldCopies(await s.connector.control(s.nodes[2]!));
  s.connector.controls.set(s.nodes[2]!, held.control);
  const snap = 'snap-late' as SnapshotId;
  const err = await t.throwsAsync(e.snapshot(snap, { deadlineMs: 200 }));
  t.is((err as StorageError).code, Code.DEADLINE_EXCEEDED);
  await e.write(0, filled(BLOCK, 0x55)); // not paused any more
  t.is(await codeOf(e.snapshot(snap, { deadlineMs: 30_000 })), Code.ABORTED, 'the same id waits until the late copies are gone');
  held.release(); // the hung copy finishes now
  await e.snapshotsSettled();
  t.deepEqual(await copiesEverywhere(fxs), [[], [], []], 'no copy is kept, the late one included');
  const again = await e.snapshot(snap, { deadlineMs: 30_000 });
  t.is(again.copies.length, 3, 'the id can be used again once cleaned up');
});

test('fenced or closed engines take no snapshot', async (t) => {
  const { s } = await setup(t, 1);
  const e = await s.start();
  await e.close();
  t.is(await codeOf(e.snapshot('snap-c' as SnapshotId, { deadlineMs: 1000 })), Code.UNAVAILABLE);
});
