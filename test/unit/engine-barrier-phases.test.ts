/**
 * The write barrier in phases (pause, cut, resume, finish, abort), as a group snapshot drives
 * it on each member's engine, over real replicas on file pools: the lease that reopens the
 * gate by itself, a cut refused after it, idempotent resume, abort deleting every copy.
 */
import test, { type ExecutionContext } from 'ava';
import { Code } from '../../src/common/errors.js';
import type { DeviceId, SnapshotId } from '../../src/common/ids.js';
import type { VolumeEngine } from '../../src/engine/volume-engine.js';
import { replicatedEngine, stillPending } from '../helpers/engine-fixture.js';
import { codeOf, filled, type ReplicaFixture } from '../helpers/replica-fixture.js';

const BLOCK = 4096;

async function setup(t: ExecutionContext): Promise<{ e: VolumeEngine; fxs: ReplicaFixture[] }> {
  const { s, fxs } = await replicatedEngine(t, 2);
  return { e: await s.start(), fxs };
}

async function copyIds(fxs: ReplicaFixture[]): Promise<string[][]> {
  return Promise.all(fxs.map(async (fx) => (await fx.manager.listSnapshotCopies()).map((c) => c.snapshotId)));
}

async function readCopy(fx: ReplicaFixture, id: string): Promise<Buffer> {
  const dev = await fx.pool.open(id as DeviceId);
  try {
    return await dev.read(0, BLOCK);
  } finally {
    await dev.close();
  }
}

/** Resolves when `p` settles or after many turns of the event loop, saying which. */
async function settledSoon(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  for (let i = 0; i < 10_000 && !done; i++) await new Promise((r) => setTimeout(r, 1));
  return done;
}

test('pause → cut → resume → finish: writes wait from pause to resume only; the copies hold what was written before the pause', async (t) => {
  const { e, fxs } = await setup(t);
  const b = e.barrierPhases;
  await e.write(0, filled(BLOCK, 0x11));
  t.true(await b.pause('g1', 30_000) >= 0);
  t.is(await b.pause('g1', 30_000) >= 0, true, 'pausing again renews the lease');
  t.is(await codeOf(b.pause('g2', 30_000)), Code.ABORTED, 'another group may not pause meanwhile');
  const w = e.write(0, filled(BLOCK, 0x22));
  t.true(await stillPending(w), 'a write waits while paused');
  const cut = await b.cut('g1', 'snap-a' as SnapshotId);
  t.deepEqual(cut.map((c) => c.replicaId).sort(), ['rep-0', 'rep-1']);
  t.deepEqual((await b.cut('g1', 'snap-a' as SnapshotId)).map((c) => c.replicaId).sort(), ['rep-0', 'rep-1'], 'the same cut again answers the same copies');
  const pauseUs = b.resume('g1');
  t.true(pauseUs > 0);
  t.is(b.resume('g1'), pauseUs, 'resume is idempotent');
  await w;
  const copies = await b.finish('snap-a' as SnapshotId);
  t.is(copies.length, 2);
  for (const fx of fxs) t.deepEqual(await readCopy(fx, 'snap-a'), filled(BLOCK, 0x11), 'the write sent during the pause is in no copy');
  t.deepEqual(await e.read(0, BLOCK), filled(BLOCK, 0x22));
  await b.abort('snap-a' as SnapshotId);
  t.deepEqual(await copyIds(fxs), [[], []], 'abort after finish deletes every copy');
});

test('a lease that expires opens the gate by itself; the group\'s cut is then refused ABORTED (lease expired) and no copy is taken', async (t) => {
  const { e, fxs } = await setup(t);
  const b = e.barrierPhases;
  await b.pause('g-lease', 50);
  const w = e.write(0, filled(BLOCK, 0x33));
  t.true(await settledSoon(w), 'the write completes once the lease expired, without a resume');
  await w;
  const err = await t.throwsAsync(b.cut('g-lease', 'snap-l' as SnapshotId));
  t.is(codeOfErr(err), Code.ABORTED);
  t.regex(err!.message, /lease expired/);
  t.deepEqual(await copyIds(fxs), [[], []]);
  t.is(await codeOf(b.pause('g-lease', 1000)), Code.ABORTED, 'a group whose pause ended may not pause again');
  t.true(b.resume('g-lease') > 0, 'a resume after the lease is still answered');
  t.is(await codeOf(b.cut('g-none', 'snap-n' as SnapshotId)), Code.FAILED_PRECONDITION, 'a cut without a pause');
});

test('abort after the cut, before resume: every copy is deleted and writes go on once resumed', async (t) => {
  const { e, fxs } = await setup(t);
  const b = e.barrierPhases;
  await b.pause('g3', 30_000);
  t.is((await b.cut('g3', 'snap-x' as SnapshotId)).length, 2);
  await b.abort('snap-x' as SnapshotId);
  await b.abort('snap-x' as SnapshotId);
  t.deepEqual(await copyIds(fxs), [[], []]);
  t.is(await codeOf(b.finish('snap-x' as SnapshotId)), Code.NOT_FOUND, 'an aborted snapshot cannot be finished');
  b.resume('g3');
  await e.write(0, filled(BLOCK, 0x44));
  t.is(b.resume('never-paused'), 0, 'resuming a group that never paused here is fine');
  t.is(await codeOf(b.pause('never-paused', 1000)), Code.ABORTED, 'and it may not pause afterwards');
});

function codeOfErr(err: unknown): unknown {
  return (err as { code?: unknown } | undefined)?.code;
}
