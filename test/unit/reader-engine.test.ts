/**
 * The reader engine (MULTI_NODE_READER_ONLY on several nodes): it reads what the holder
 * wrote at the document's epoch without raising any replica's epoch, skips a replica that
 * fails a read (never faulting it), refuses writes, follows a newer read-only engine and
 * is fenced by a writer.
 */
import test, { type ExecutionContext } from 'ava';
import { Code } from '../../src/common/errors.js';
import type { ReplicaId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { EngineVolumeDoc } from '../../src/engine/engine-types.js';
import { ReaderEngine, type ReaderEngineOptions } from '../../src/engine/reader-engine.js';
import { MiB, SIZE, VOL, engineSetup, type EngineSetup } from '../helpers/engine-fixture.js';
import { codeOf, filled, replicaFixture, type ReplicaFixture } from '../helpers/replica-fixture.js';

interface Setup extends EngineSetup {
  fxs: ReplicaFixture[];
  reader(options?: Partial<ReaderEngineOptions>): Promise<ReaderEngine>;
}

async function setup(t: ExecutionContext, rf = 2): Promise<Setup> {
  const fxs: ReplicaFixture[] = [];
  const readers: ReaderEngine[] = [];
  t.teardown(async () => {
    await Promise.allSettled(readers.map((r) => r.close()));
    for (const fx of fxs) await fx.cleanup();
  });
  for (let i = 0; i < rf; i++) {
    const fx = await replicaFixture();
    fxs.push(fx);
    await fx.manager.create({ replicaId: `rep-${i}` as ReplicaId, volumeId: VOL }, SIZE, 1, true);
  }
  const s = engineSetup(t, fxs.map((fx) => fx.manager), fxs[0]!.store.dirtyMaps());
  return {
    ...s, fxs,
    async reader(options = {}) {
      const replicas = s.ids.map((id, i) => ({ id, nodeId: s.nodes[i]!, state: 'in-sync' as const, since: new Date().toISOString() }));
      // The reader runs on node 1: its local replica is rep-1.
      const r = await ReaderEngine.start({
        volumeId: VOL, name: 'data', sizeBytes: SIZE, epoch: 1, replicas, localNodeId: s.nodes[1]!, connector: s.connector,
        replicaTimeoutMs: 5000, reconnectIntervalMs: 60_000, log: silentLogger(), newerEpoch: async () => undefined, ...options,
      });
      readers.push(r);
      return r;
    },
  };
}

const epochOf = async (s: Setup, i: number): Promise<number> => (await s.fxs[i]!.manager.status({ replicaId: s.ids[i]!, volumeId: VOL })).epoch;

test('a reader reads what the holder wrote, at the same epoch; writes, trims and write-zeroes are PERMISSION_DENIED', async (t) => {
  const s = await setup(t);
  const holder = await s.start();
  await holder.write(MiB, filled(8192, 7));
  await holder.flush();
  const r = await s.reader();
  t.deepEqual(await r.read(MiB, 8192), filled(8192, 7));
  t.is(await codeOf(r.write(0, filled(512, 1))), Code.PERMISSION_DENIED);
  t.is(await codeOf(r.trim(0, 512)), Code.PERMISSION_DENIED);
  t.is(await codeOf(r.writeZeroes(0, 512, true)), Code.PERMISSION_DENIED);
  t.deepEqual([await epochOf(s, 0), await epochOf(s, 1)], [1, 1], 'no replica epoch raised');
  // The holder goes on writing at the same epoch: the reader has fenced nothing.
  await holder.write(MiB, filled(4096, 8));
  t.deepEqual(await r.read(MiB, 4096), filled(4096, 8));
});

test('a replica that fails a read is skipped, not faulted: the read comes from the other in-sync one; all failing is UNAVAILABLE', async (t) => {
  const s = await setup(t);
  const holder = await s.start();
  await holder.write(0, filled(4096, 3));
  const r = await s.reader();
  s.connector.ios.get(s.ids[1]!)!.mode = 'error'; // the reader's local replica
  t.deepEqual(await r.read(0, 4096), filled(4096, 3));
  t.deepEqual(s.control.faulted, [], 'the reader faults nothing');
  s.connector.ios.get(s.ids[0]!)!.mode = 'error';
  s.connector.down.add(s.ids[0]!);
  s.connector.down.add(s.ids[1]!);
  t.is(await codeOf(r.read(0, 4096)), Code.UNAVAILABLE);
  t.false(r.fenced);
});

test('a writer at a newer epoch fences the reader: its reads are FAILED_PRECONDITION from then on', async (t) => {
  const s = await setup(t);
  await (await s.start()).close();
  let fenced = 0;
  const r = await s.reader({ onFenced: () => void fenced++ });
  await s.start({ epoch: 2 }); // a writer took the volume (epoch + 1 at every in-sync replica)
  t.is(await codeOf(r.read(0, 4096)), Code.FAILED_PRECONDITION);
  t.true(r.fenced);
  t.is(fenced, 1);
  t.is(await codeOf(r.read(0, 4096)), Code.FAILED_PRECONDITION);
});

test('a newer read-only engine (readers may share): the reader reopens at its epoch and reads on', async (t) => {
  const s = await setup(t);
  const first = await s.start();
  await first.write(2 * MiB, filled(4096, 9));
  await first.close();
  const doc: EngineVolumeDoc = {
    id: VOL, epoch: 2, sizeBytes: SIZE, replicas: s.ids.map((id, i) => ({ id, nodeId: s.nodes[i]!, state: 'in-sync', since: new Date().toISOString() })),
  };
  const r = await s.reader({ newerEpoch: async () => doc });
  await s.start({ epoch: 2 });
  t.deepEqual(await r.read(2 * MiB, 4096), filled(4096, 9));
  t.is(r.epoch, 2);
  t.false(r.fenced);
});
