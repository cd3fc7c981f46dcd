/**
 * The volume engine's fan-out against real replicas: several "nodes" in one process, each a
 * ReplicaManager on a temp file pool, reached through LocalReplicaIo. A fake connector
 * injects failures (errors, hangs, unreachable nodes); a fake EngineControl records the
 * in-sync changes and can be held pending (the cluster store unreachable).
 */
import test, { type ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import type { ReplicaHealth, VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { DirtyMapStore, EngineControl, ReplicaConnector, ReplicaIo } from '../../src/engine/engine-types.js';
import { RegionMap } from '../../src/engine/region-map.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { VolumeEngine, type VolumeEngineOptions } from '../../src/engine/volume-engine.js';
import { codeOf, filled, replicaFixture, runBatch, type ReplicaFixture } from '../helpers/replica-fixture.js';

const MiB = 1 << 20;
const SIZE = 16 * MiB;
const VOL = 'vol-1' as VolumeId;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Mode = 'ok' | 'error' | 'hang' | 'read-error';

/** Wraps a replica's I/O: fails or hangs on demand, counts what reaches the replica, can pause writes. */
class TestIo implements ReplicaIo {
  readonly writtenRegions: number[] = [];
  /** Regions of the writes the replica has completed (acknowledged to the engine). */
  readonly completedRegions: number[] = [];
  writtenBytes = 0;
  waiting = 0;
  private hung: Array<(e: Error) => void> = [];
  private gate: Promise<void> | undefined;
  private openGate = (): void => undefined;
  constructor(readonly inner: ReplicaIo, public mode: Mode, private pauseAfter = Infinity) {}
  get replicaId(): ReplicaId { return this.inner.replicaId; }
  get nodeId(): NodeId { return this.inner.nodeId; }
  get local(): boolean { return this.inner.local; }
  write(o: number, d: Uint8Array, fua: boolean): Promise<void> { return this.writing(o, d.byteLength, () => this.inner.write(o, d, fua)); }
  writeZeroes(o: number, n: number, mayTrim: boolean): Promise<void> { return this.writing(o, n, () => this.inner.writeZeroes(o, n, mayTrim)); }
  trim(o: number, n: number): Promise<void> { return this.gated(() => this.inner.trim(o, n)); }
  flush(): Promise<void> { return this.gated(() => this.inner.flush()); }
  read(o: number, n: number): Promise<Buffer> {
    if (this.mode === 'read-error') return Promise.reject(new StorageError(Code.DATA_LOSS, 'EIO reading the disk'));
    return this.gated(() => this.inner.read(o, n));
  }
  close(): Promise<void> { return this.inner.close(); }
  cancel(): void {
    for (const reject of this.hung.splice(0)) reject(new StorageError(Code.CANCELLED, 'cancelled'));
    this.inner.cancel();
  }
  resume(): void { this.pauseAfter = Infinity; this.openGate(); }
  private async writing(offset: number, length: number, fn: () => Promise<void>): Promise<void> {
    if (this.mode === 'ok' && this.writtenRegions.length >= this.pauseAfter) {
      this.gate ??= new Promise((r) => (this.openGate = r));
      this.waiting++;
      await this.gate;
      this.waiting--;
    }
    return this.gated(async () => {
      this.writtenRegions.push(Math.floor(offset / MiB));
      this.writtenBytes += length;
      await fn();
      this.completedRegions.push(Math.floor(offset / MiB));
    });
  }
  private gated<T>(fn: () => Promise<T>): Promise<T> {
    if (this.mode === 'error') return Promise.reject(new StorageError(Code.UNAVAILABLE, `replica ${this.replicaId} is broken`));
    if (this.mode === 'hang') return new Promise((_, reject) => this.hung.push(reject));
    return fn();
  }
}

class FakeConnector implements ReplicaConnector {
  readonly modes = new Map<ReplicaId, Mode>();
  readonly pauseAfter = new Map<ReplicaId, number>();
  readonly down = new Set<ReplicaId>();
  readonly ios = new Map<ReplicaId, TestIo[]>();
  constructor(private readonly nodes: Map<NodeId, ReplicaFixture>) {}
  async openIo(volumeId: VolumeId, entry: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
    if (this.down.has(entry.id)) throw new StorageError(Code.UNAVAILABLE, `node ${entry.nodeId} is down`);
    const replica = await this.nodes.get(entry.nodeId)!.manager.open({ replicaId: entry.id, volumeId });
    replica.admitEpoch(epoch);
    const io = new TestIo(new LocalReplicaIo(replica, epoch, entry.nodeId), this.modes.get(entry.id) ?? 'ok', this.pauseAfter.get(entry.id));
    this.ios.set(entry.id, [...(this.ios.get(entry.id) ?? []), io]);
    return io;
  }
  async control(nodeId: NodeId): Promise<ReturnType<typeof localControl>> {
    return localControl(this.nodes.get(nodeId)!.manager);
  }
  last(id: ReplicaId): TestIo {
    return this.ios.get(id)!.at(-1)!;
  }
}

class FakeControl implements EngineControl {
  readonly faulted: ReplicaId[][] = [];
  readonly reasons: string[] = [];
  readonly rebuilding: ReplicaId[] = [];
  readonly inSync: ReplicaId[] = [];
  refusal: StorageError | undefined;
  onRebuilding: ((id: ReplicaId) => Promise<void>) | undefined;
  private gate: Promise<void> | undefined;
  private open = (): void => undefined;
  hold(): void { this.gate = new Promise((r) => (this.open = r)); }
  release(): void { this.open(); this.gate = undefined; }
  async markFaulted(ids: readonly ReplicaId[], reason: string): Promise<void> {
    this.faulted.push([...ids]);
    this.reasons.push(reason);
    await this.gate;
    if (this.refusal) throw this.refusal;
  }
  async markRebuilding(id: ReplicaId): Promise<void> { this.rebuilding.push(id); await this.onRebuilding?.(id); }
  async markInSync(id: ReplicaId): Promise<void> { this.inSync.push(id); }
}

interface Cluster {
  ids: ReplicaId[];
  nodes: NodeId[];
  fxs: ReplicaFixture[];
  connector: FakeConnector;
  control: FakeControl;
  dirty: DirtyMapStore;
  start(options?: Partial<VolumeEngineOptions>, states?: ReplicaHealth[]): Promise<VolumeEngine>;
  /** The replica's bytes, read on its node directly. */
  bytes(i: number, offset?: number, length?: number): Promise<Buffer>;
}

async function cluster(t: ExecutionContext, rf: number): Promise<Cluster> {
  const fxs: ReplicaFixture[] = [];
  const engines: VolumeEngine[] = [];
  t.teardown(async () => {
    await Promise.allSettled(engines.map((e) => e.close()));
    for (const fx of fxs) await fx.cleanup();
  });
  const ids = Array.from({ length: rf }, (_, i) => `rep-${i}` as ReplicaId);
  const nodes = Array.from({ length: rf }, (_, i) => `node-${i}` as NodeId);
  for (let i = 0; i < rf; i++) {
    fxs.push(await replicaFixture());
    await fxs[i]!.manager.create({ replicaId: ids[i]!, volumeId: VOL }, SIZE, 1, true);
  }
  const connector = new FakeConnector(new Map(nodes.map((n, i) => [n, fxs[i]!])));
  const control = new FakeControl();
  const dirty = fxs[0]!.store.dirtyMaps();
  return {
    ids, nodes, fxs, connector, control, dirty,
    async start(options = {}, states = []) {
      const replicas = ids.map((id, i) => ({ id, nodeId: nodes[i]!, state: states[i] ?? 'in-sync', since: new Date().toISOString() }));
      const engine = await VolumeEngine.start({
        volumeId: VOL, name: 'data', sizeBytes: SIZE, regionBytes: MiB, epoch: 1, replicas, localNodeId: nodes[0]!,
        connector, control, dirtyMaps: dirty, replicaTimeoutMs: 5000, reconnectIntervalMs: 60_000, log: silentLogger(), ...options,
      });
      engines.push(engine);
      return engine;
    },
    async bytes(i, offset = 0, length = SIZE) {
      const replica = await fxs[i]!.manager.open({ replicaId: ids[i]!, volumeId: VOL });
      const parts: Buffer[] = [];
      for (let at = offset; at < offset + length; at += 4 * MiB) {
        const [r] = await runBatch(replica, replica.epoch, [{ seq: 1, op: 'read', offset: at, lengthBytes: Math.min(4 * MiB, offset + length - at) }]);
        if (r!.error) throw r!.error;
        parts.push(r!.data!);
      }
      return Buffer.concat(parts);
    },
  };
}

async function until(t: ExecutionContext, what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) t.fail(`timed out waiting until ${what}`);
    await sleep(5);
  }
}

function dirtyRegions(store: DirtyMapStore, id: ReplicaId): number[] {
  const saved = store.load(VOL, id);
  return saved ? regionsOf(saved.bits, saved.regionBytes) : [];
}

function regionsOf(bits: Buffer, regionBytes = MiB): number[] {
  const map = new RegionMap(SIZE, regionBytes, bits);
  const out: number[] = [];
  for (let r = map.nextSet(0); r >= 0; r = map.nextSet(r + 1)) out.push(r);
  return out;
}

const stateOf = (e: VolumeEngine, id: ReplicaId): string | undefined => e.replicaViews().find((v) => v.replicaId === id)?.state;

test('rf=3: writes, trims and write-zeroes land on every replica; reads come back', async (t) => {
  const c = await cluster(t, 3);
  const e = await c.start();
  await e.write(0, filled(8192, 0xa1));
  await e.write(5 * MiB - 4096, filled(3 * 4096, 0xb2), true);
  await e.writeZeroes(4096, 4096, false);
  await e.trim(5 * MiB, 4096);
  await e.flush();
  const expected = Buffer.concat([filled(4096, 0xa1), filled(4096, 0)]);
  const expected2 = Buffer.concat([filled(4096, 0xb2), filled(4096, 0), filled(4096, 0xb2)]);
  for (let i = 0; i < 3; i++) {
    t.deepEqual(await c.bytes(i, 0, 8192), expected, `replica ${i}`);
    t.deepEqual(await c.bytes(i, 5 * MiB - 4096, 3 * 4096), expected2, `replica ${i}`);
  }
  t.deepEqual(await e.read(0, 8192), expected);
  t.deepEqual(e.replicaViews().map((v) => v.state), ['in-sync', 'in-sync', 'in-sync']);
  t.is(await codeOf(e.write(SIZE - 512, filled(1024, 1))), Code.OUT_OF_RANGE);
  t.deepEqual(c.control.faulted, [], 'a caller\'s mistake faults no one');
});

test('a failed replica is faulted durably before the write is acknowledged; its map holds exactly the missed regions', async (t) => {
  const c = await cluster(t, 3);
  c.connector.modes.set(c.ids[2]!, 'error');
  const e = await c.start();
  c.control.hold(); // the cluster store does not answer
  let acked = 0;
  // Several writes fail on it at once: one map save and one markFaulted cover them all.
  const first = Promise.all([0, 1, 2, 3].map((i) => e.write(2 * MiB - 2048 + i * 1024, filled(1024, 7)).then(() => acked++)));
  await until(t, 'markFaulted was called', () => c.control.faulted.length === 1);
  const second = e.write(6 * MiB, filled(4096, 8)).then(() => acked++); // misses the replica being faulted
  // Everything the second write waits for except the held fault has happened: the good
  // replicas completed it and the missed region is in the saved map. Anything that only
  // depends on those has run once the microtasks queued by them have (one setImmediate).
  await until(t, 'the second write is done everywhere but in the cluster store', () =>
    [0, 1].every((i) => c.connector.last(c.ids[i]!).completedRegions.includes(6)) && dirtyRegions(c.dirty, c.ids[2]!).includes(6));
  await new Promise((r) => setImmediate(r));
  t.is(acked, 0, 'no write is acknowledged while the fault is not recorded');
  t.deepEqual(c.control.faulted, [[c.ids[2]]]);
  c.control.release();
  await Promise.all([first, second]);
  t.is(acked, 5);
  t.is(stateOf(e, c.ids[2]!), 'faulted');
  t.deepEqual(dirtyRegions(c.dirty, c.ids[2]!), [1, 2, 6]);
  t.is(e.replicaViews()[2]!.dirtyBytes, 3 * MiB);
  for (const i of [0, 1]) t.deepEqual(await c.bytes(i, 6 * MiB, 4096), filled(4096, 8));
  t.deepEqual(await c.bytes(2, 6 * MiB, 4096), filled(4096, 0), 'the faulted replica never got it');
});

test('a replica that fails is faulted with what it acknowledged since its last flush marked, not its whole map', async (t) => {
  const c = await cluster(t, 3);
  const e = await c.start();
  await e.write(0, filled(4096, 1)); // region 0: flushed below, so durable everywhere
  await e.flush();
  await e.write(3 * MiB, filled(4096, 2)); // region 3: acknowledged, not flushed
  await e.write(5 * MiB, filled(4096, 3), true); // region 5: FUA, durable when acknowledged
  c.connector.last(c.ids[2]!).mode = 'error'; // its node goes away: the flush fails there
  await e.flush();
  t.is(stateOf(e, c.ids[2]!), 'faulted');
  t.deepEqual(dirtyRegions(c.dirty, c.ids[2]!), [3], 'only the region written since its last flush (FUA writes are durable)');
  await e.write(9 * MiB, filled(4096, 4)); // missed while faulted
  t.deepEqual(dirtyRegions(c.dirty, c.ids[2]!), [3, 9]);
});

test('the last in-sync replica is never faulted: the error reaches the caller', async (t) => {
  const c = await cluster(t, 2);
  const e = await c.start();
  c.connector.last(c.ids[1]!).mode = 'error';
  await e.write(0, filled(4096, 1));
  t.deepEqual(c.control.faulted, [[c.ids[1]]]);
  c.connector.last(c.ids[0]!).mode = 'error';
  const err = await t.throwsAsync(e.write(0, filled(4096, 2)));
  t.is((err as StorageError).code, Code.UNAVAILABLE);
  t.deepEqual(c.control.faulted, [[c.ids[1]]], 'nothing more was faulted');
  t.is(stateOf(e, c.ids[0]!), 'in-sync');
  t.is(await codeOf(e.flush()), Code.UNAVAILABLE);
  c.connector.last(c.ids[0]!).mode = 'ok';
  await e.write(0, filled(4096, 3));
  t.deepEqual(await e.read(0, 4096), filled(4096, 3));
});

test('a replica that does not answer in time is dropped and faulted', async (t) => {
  const c = await cluster(t, 2);
  c.connector.modes.set(c.ids[1]!, 'hang');
  const e = await c.start({ replicaTimeoutMs: 100 });
  await e.write(0, filled(4096, 1));
  t.is(stateOf(e, c.ids[1]!), 'faulted');
  t.deepEqual(c.control.faulted, [[c.ids[1]]]);
  t.regex(c.control.reasons[0]!, /did not answer within 100 ms/);
  await e.flush();
  t.deepEqual(dirtyRegions(c.dirty, c.ids[1]!), [0]);
});

test('a stale epoch fences the engine: this and every later request fail, onFenced is called once', async (t) => {
  const c = await cluster(t, 2);
  const fenced: StorageError[] = [];
  const e = await c.start({ onFenced: (err) => fenced.push(err) });
  await e.write(0, filled(4096, 1));
  (await c.fxs[1]!.manager.open({ replicaId: c.ids[1]!, volumeId: VOL })).admitEpoch(2); // a newer engine reached it
  const err = await t.throwsAsync(e.write(0, filled(4096, 2)));
  t.is((err as StorageError).code, Code.FAILED_PRECONDITION);
  t.regex(err!.message, /volume data was started by a newer engine \(epoch 2\); this engine is fenced/);
  t.true(e.fenced);
  for (const p of [e.write(MiB, filled(512, 3)), e.read(0, 512), e.flush()]) t.is(await codeOf(p), Code.FAILED_PRECONDITION);
  t.is(fenced.length, 1);
  t.deepEqual(c.control.faulted, [], 'a fenced engine changes no state');
  await t.throwsAsync(c.start(), { message: /newer engine/ }, 'a new engine at the old epoch cannot start');
});

test('start: an unreachable in-sync replica is faulted with a full map before start resolves; none reachable is UNAVAILABLE', async (t) => {
  const c = await cluster(t, 2);
  c.connector.down.add(c.ids[1]!);
  const e = await c.start();
  t.deepEqual(c.control.faulted, [[c.ids[1]]]);
  t.is(dirtyRegions(c.dirty, c.ids[1]!).length, 16);
  t.is(stateOf(e, c.ids[1]!), 'faulted');
  await e.close();
  c.connector.down.add(c.ids[0]!);
  const err = await t.throwsAsync(c.start());
  t.is((err as StorageError).code, Code.UNAVAILABLE);
  t.regex(err!.message, /no in-sync replica of volume data is reachable: rep-0 on node node-0: node node-0 is down/);
});

test('a returning replica is rebuilt from only its dirty regions and rejoins; all replicas end byte-identical', async (t) => {
  const c = await cluster(t, 3);
  c.connector.modes.set(c.ids[2]!, 'error');
  const e = await c.start({ reconnectIntervalMs: 20 });
  c.connector.down.add(c.ids[2]!);
  await e.write(0, filled(4096, 1));
  await e.write(3 * MiB + 100, filled(8192, 2));
  await e.write(9 * MiB, filled(4096, 3));
  let checkpoint: number[] = [];
  c.control.onRebuilding = async (id) => {
    const status = await c.fxs[2]!.manager.status({ replicaId: id, volumeId: VOL });
    checkpoint = regionsOf(status.rebuild!.checkpoint);
  };
  c.connector.modes.set(c.ids[2]!, 'ok');
  c.connector.down.delete(c.ids[2]!); // comes back at the next try
  await until(t, 'the replica is in sync', () => c.control.inSync.includes(c.ids[2]!));
  t.deepEqual(c.control.rebuilding, [c.ids[2]]);
  t.deepEqual(checkpoint, [0, 3, 9], 'before it is called rebuilding, the target\'s own checkpoint covers what it lacks');
  const target = c.connector.last(c.ids[2]!);
  t.deepEqual([...new Set(target.writtenRegions)].sort((a, b) => a - b), [0, 3, 9]);
  t.is(target.writtenBytes, 3 * MiB, 'only the three dirty regions were copied');
  t.is(stateOf(e, c.ids[2]!), 'in-sync');
  t.is(c.dirty.load(VOL, c.ids[2]!), undefined, 'the map is gone once in sync');
  const a = await c.bytes(0);
  t.true(a.equals(await c.bytes(1)) && a.equals(await c.bytes(2)), 'replicas are byte-identical');
  await e.write(12 * MiB, filled(4096, 4));
  t.deepEqual(await c.bytes(2, 12 * MiB, 4096), filled(4096, 4), 'the rejoined replica gets live writes');
});

const resumes = test.macro(async (t, resumeFrom: 'dirty map' | 'checkpoint') => {
  const c = await cluster(t, 3);
  const c2 = c.ids[2]!;
  c.connector.modes.set(c2, 'error');
  const first = await c.start({ reconnectIntervalMs: 20 });
  c.connector.down.add(c2);
  const dirty = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
  for (const r of dirty) await first.write(r * MiB, filled(4096, r));
  c.connector.modes.set(c2, 'ok');
  // Each dirty region holds 4 KiB of data at its start: its copy is one write and one
  // discard of the rest. Five requests: regions 2 and 3 whole, region 4 in part.
  c.connector.pauseAfter.set(c2, 5);
  c.connector.down.delete(c2);
  await until(t, 'the rebuild paused', () => (c.connector.ios.get(c2)?.length ?? 0) > 1 && c.connector.last(c2).waiting > 0);
  const run1 = c.connector.last(c2);
  const closing = first.close();
  run1.resume();
  await closing;
  const left = dirtyRegions(c.dirty, c2);
  const copied1 = dirty.filter((r) => !left.includes(r));
  t.true(copied1.length >= 2 && left.length > 0, `some regions copied (${copied1.length}), some left (${left.length})`);
  t.deepEqual(copied1.filter((r) => run1.completedRegions.filter((x) => x === r).length !== 2), [], 'only regions written whole (data and discard) were cleared');
  t.deepEqual(left, dirty.filter((r) => !copied1.includes(r)), 'what is left is exactly what was not copied');

  c.connector.pauseAfter.delete(c2);
  // 'dirty map': the document says faulted, so only this node's map may be trusted.
  // 'checkpoint': the engine moved to a node without the map; the document says rebuilding.
  if (resumeFrom === 'checkpoint') c.dirty.delete(VOL, c2);
  const second = await c.start({ epoch: 2, reconnectIntervalMs: 20 }, ['in-sync', 'in-sync', resumeFrom === 'checkpoint' ? 'rebuilding' : 'faulted']);
  await until(t, 'the replica is in sync', () => c.control.inSync.includes(c2));
  const run2 = c.connector.last(c2);
  t.deepEqual([...new Set(run2.writtenRegions)].sort((a, b) => a - b), left, 'the second run copied only what was left');
  const a = await c.bytes(0);
  t.true(a.equals(await c.bytes(2)), 'the rebuilt replica matches');
  t.is(stateOf(second, c2), 'in-sync');
});
test('an interrupted rebuild resumes in a new engine from the dirty map, not copying done regions again', resumes, 'dirty map');
test('an interrupted rebuild resumes in a new engine from the target\'s checkpoint when the map is elsewhere', resumes, 'checkpoint');

test('a read that fails falls back to another in-sync replica and faults the first', async (t) => {
  const c = await cluster(t, 2);
  const e = await c.start();
  await e.write(MiB, filled(8192, 0x5a));
  c.connector.last(c.ids[0]!).mode = 'read-error';
  t.deepEqual(await e.read(MiB, 8192), filled(8192, 0x5a));
  t.deepEqual(c.control.faulted, [[c.ids[0]]]);
  t.regex(c.control.reasons[0]!, /read failed: EIO/);
  t.is(stateOf(e, c.ids[0]!), 'faulted');
  t.deepEqual(dirtyRegions(c.dirty, c.ids[0]!), [1], 'the region that failed to read will be rewritten');
  t.deepEqual(await e.read(MiB, 4096), filled(4096, 0x5a), 'later reads go to the other replica');
});

test('the document adds a replica (rebuilt in full, then in sync) and removes one (dropped)', async (t) => {
  const c = await cluster(t, 3);
  const e = await c.start({ reconnectIntervalMs: 20 }, ['in-sync', 'in-sync', 'faulted']);
  c.connector.down.add(c.ids[2]!);
  await e.write(0, filled(4096, 9));
  const since = new Date().toISOString();
  const doc = {
    id: VOL, name: 'data', sizeBytes: SIZE, createdAt: since, state: 'ready' as const, replicasWanted: 2, regionBytes: MiB, epoch: 1, engine: null,
    replicas: [{ id: c.ids[0]!, nodeId: c.nodes[0]!, state: 'in-sync' as const, since }, { id: c.ids[2]!, nodeId: c.nodes[2]!, state: 'rebuilding' as const, since }],
  };
  e.applyDoc(doc); // drops rep-1
  t.deepEqual(e.replicaViews().map((v) => v.replicaId), [c.ids[0], c.ids[2]]);
  await e.write(0, filled(4096, 10));
  t.deepEqual(await c.bytes(1, 0, 4096), filled(4096, 9), 'a removed replica gets no more writes');
  doc.replicas.push({ id: 'rep-new' as ReplicaId, nodeId: c.nodes[1]!, state: 'rebuilding', since });
  await c.fxs[1]!.manager.create({ replicaId: 'rep-new', volumeId: VOL }, SIZE, 1, false);
  e.applyDoc(doc);
  await until(t, 'the new replica is in sync', () => c.control.inSync.includes('rep-new' as ReplicaId));
  t.is(c.connector.last('rep-new' as ReplicaId).writtenBytes, SIZE, 'a new replica is copied in full');
  e.applyDoc({ ...doc, epoch: 2 });
  t.true(e.fenced, 'a newer epoch in the document fences the engine');
});

test('reconcile after an unclean stop: the other in-sync replicas are made equal to the read replica, region by region', async (t) => {
  const c = await cluster(t, 3);
  // What a crashed engine may leave: writes in flight that reached some replicas only.
  for (const [i, offset, byte] of [[1, 2 * MiB, 0x11], [2, 2 * MiB + 4096, 0x22], [2, 9 * MiB, 0x33]] as const) {
    const replica = await c.fxs[i]!.manager.open({ replicaId: c.ids[i]!, volumeId: VOL });
    const [r] = await runBatch(replica, replica.epoch, [{ seq: 1, op: 'write', offset, lengthBytes: 4096, data: filled(4096, byte) }]);
    t.falsy(r!.error);
  }
  await c.fxs[0]!.manager.open({ replicaId: c.ids[0]!, volumeId: VOL }).then((r) => runBatch(r, r.epoch, [{ seq: 1, op: 'write', offset: 0, lengthBytes: 4096, data: filled(4096, 0x44) }]));
  const e = await c.start();
  const live = e.write(12 * MiB, filled(4096, 0x55)); // live I/O goes on meanwhile
  await e.reconcile();
  await live;
  const reference = await c.bytes(0);
  for (const i of [1, 2]) t.true((await c.bytes(i)).equals(reference), `replica ${i} equals the read replica`);
  t.deepEqual(await c.bytes(0, 0, 4096), filled(4096, 0x44), 'the read replica\'s own content wins');
  t.deepEqual(await c.bytes(1, 2 * MiB, 4096), filled(4096, 0), 'what only another replica had is gone everywhere');
  t.deepEqual(c.control.faulted, [], 'nobody was faulted');
});


test('a write in pieces and a read into caller buffers (what the NBD server passes) land and come back on every replica', async (t) => {
  const c = await cluster(t, 2);
  const e = await c.start();
  const parts = [filled(4096, 0x61), filled(8192, 0x62), filled(4096, 0x63)];
  await e.writev(MiB - 8192, parts);
  const expected = Buffer.concat(parts);
  for (const i of [0, 1]) t.deepEqual(await c.bytes(i, MiB - 8192, expected.length), expected, `replica ${i}`);
  const targets = [Buffer.alloc(4096), Buffer.alloc(12288)];
  await e.readInto(MiB - 8192, targets);
  t.deepEqual(Buffer.concat(targets), expected);
});
