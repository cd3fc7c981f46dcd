/**
 * Test helper (not a test file): a volume engine over real replicas, several "nodes" in
 * one process, each a ReplicaManager; a connector that can fail or hang one replica's
 * I/O; an EngineControl whose markFaulted can be held pending or refused; a dirty-map
 * store whose saves can be observed and made to fail. Used by the engine's fault tests.
 */
import type { ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import type { ReplicaHealth, VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { DirtyMapStore, EngineControl, ReplicaConnector, ReplicaControl, ReplicaIo } from '../../src/engine/engine-types.js';
import { RegionMap } from '../../src/engine/region-map.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { VolumeEngine, type VolumeEngineOptions } from '../../src/engine/volume-engine.js';
import type { ReplicaManager } from '../../src/replica/replica-manager.js';
import { replicaFixture, type ReplicaFixture } from './replica-fixture.js';

export const MiB = 1 << 20;
export const SIZE = 16 * MiB;
export const VOL = 'vol-1' as VolumeId;

export type IoMode = 'ok' | 'error';

/** A replica's I/O that fails every request while its mode is 'error'. */
export class FlakyIo implements ReplicaIo {
  /** Flushes that reached the replica and succeeded. */
  flushes = 0;
  constructor(readonly inner: ReplicaIo, public mode: IoMode) {}
  get replicaId(): ReplicaId { return this.inner.replicaId; }
  get nodeId(): NodeId { return this.inner.nodeId; }
  get local(): boolean { return this.inner.local; }
  write(o: number, d: Uint8Array, fua: boolean): Promise<void> { return this.gated(() => this.inner.write(o, d, fua)); }
  read(o: number, n: number): Promise<Buffer> { return this.gated(() => this.inner.read(o, n)); }
  flush(): Promise<void> { return this.gated(() => this.inner.flush().then(() => void this.flushes++)); }
  trim(o: number, n: number): Promise<void> { return this.gated(() => this.inner.trim(o, n)); }
  writeZeroes(o: number, n: number, mayTrim: boolean): Promise<void> { return this.gated(() => this.inner.writeZeroes(o, n, mayTrim)); }
  close(): Promise<void> { return this.inner.close(); }
  cancel(): void { this.inner.cancel(); }
  private gated<T>(fn: () => Promise<T>): Promise<T> {
    if (this.mode === 'error') return Promise.reject(new StorageError(Code.UNAVAILABLE, `replica ${this.replicaId} is broken`));
    return fn();
  }
}

export class TestConnector implements ReplicaConnector {
  readonly modes = new Map<ReplicaId, IoMode>();
  readonly down = new Set<ReplicaId>();
  readonly ios = new Map<ReplicaId, FlakyIo>();
  /** Replaces a node's replica control (e.g. one whose checksums fail). */
  readonly controls = new Map<NodeId, ReplicaControl>();
  constructor(readonly managers: Map<NodeId, ReplicaManager>) {}
  async openIo(volumeId: VolumeId, entry: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
    if (this.down.has(entry.id)) throw new StorageError(Code.UNAVAILABLE, `node ${entry.nodeId} is down`);
    const replica = await this.managers.get(entry.nodeId)!.open({ replicaId: entry.id, volumeId });
    replica.admitEpoch(epoch);
    const io = new FlakyIo(new LocalReplicaIo(replica, epoch, entry.nodeId), this.modes.get(entry.id) ?? 'ok');
    this.ios.set(entry.id, io);
    return io;
  }
  async control(nodeId: NodeId): Promise<ReplicaControl> {
    return this.controls.get(nodeId) ?? localControl(this.managers.get(nodeId)!);
  }
}

/** Records the engine's in-sync changes; markFaulted can be held pending or refused. */
export class TestControl implements EngineControl {
  readonly faulted: ReplicaId[][] = [];
  /** markFaulted calls that have returned (the fault is "in the cluster store"). */
  recorded = 0;
  refusal: StorageError | undefined;
  private gate: Promise<void> | undefined;
  private open = (): void => undefined;
  hold(): void { this.gate = new Promise((r) => (this.open = r)); }
  release(): void { this.open(); this.gate = undefined; }
  /** The `fullRebuild` argument of each markFaulted call. */
  readonly fullRebuild: ReplicaId[][] = [];
  async markFaulted(ids: readonly ReplicaId[], _reason?: string, fullRebuild: readonly ReplicaId[] = []): Promise<void> {
    this.faulted.push([...ids]);
    this.fullRebuild.push([...fullRebuild]);
    await this.gate;
    if (this.refusal) throw this.refusal;
    this.recorded++;
  }
  async markRebuilding(): Promise<void> { /* recorded by nobody */ }
  async markInSync(): Promise<void> { /* recorded by nobody */ }
}

/** A dirty-map store over another that counts saves and can be made to throw. */
export class ObservedMaps implements DirtyMapStore {
  saves = 0;
  /** Saves tried, successful or not. */
  attempts = 0;
  /** Saves that will throw before the next one succeeds. */
  failures = 0;
  constructor(public inner: DirtyMapStore) {}
  load(v: VolumeId, r: ReplicaId): { regionBytes: number; bits: Buffer } | undefined { return this.inner.load(v, r); }
  save(v: VolumeId, r: ReplicaId, regionBytes: number, bits: Buffer): void {
    this.attempts++;
    if (this.failures > 0) {
      this.failures--;
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    }
    this.inner.save(v, r, regionBytes, bits);
    this.saves++;
  }
  /** Deletes that will throw. */
  deleteFailures = 0;
  delete(v: VolumeId, r: ReplicaId): void {
    if (this.deleteFailures > 0) {
      this.deleteFailures--;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR' });
    }
    this.inner.delete(v, r);
  }
  regions(r: ReplicaId): number[] {
    const saved = this.inner.load(VOL, r);
    if (!saved) return [];
    const map = new RegionMap(SIZE, saved.regionBytes, saved.bits);
    const out: number[] = [];
    for (let i = map.nextSet(0); i >= 0; i = map.nextSet(i + 1)) out.push(i);
    return out;
  }
}

export interface EngineSetup {
  ids: ReplicaId[];
  nodes: NodeId[];
  connector: TestConnector;
  control: TestControl;
  maps: ObservedMaps;
  start(options?: Partial<VolumeEngineOptions>, states?: ReplicaHealth[]): Promise<VolumeEngine>;
}

/** An engine setup over `managers` (node i holds replica i, already created); `dirty` is node 0's map store. */
export function engineSetup(t: ExecutionContext, managers: ReplicaManager[], dirty: DirtyMapStore): EngineSetup {
  const engines: VolumeEngine[] = [];
  t.teardown(async () => {
    await Promise.allSettled(engines.map((e) => e.close()));
  });
  const ids = managers.map((_, i) => `rep-${i}` as ReplicaId);
  const nodes = managers.map((_, i) => `node-${i}` as NodeId);
  const connector = new TestConnector(new Map(nodes.map((n, i) => [n, managers[i]!])));
  const control = new TestControl();
  const maps = new ObservedMaps(dirty);
  return {
    ids, nodes, connector, control, maps,
    async start(options = {}, states = []) {
      const replicas = ids.map((id, i) => ({ id, nodeId: nodes[i]!, state: states[i] ?? 'in-sync', since: new Date().toISOString() }));
      const engine = await VolumeEngine.start({
        volumeId: VOL, name: 'data', sizeBytes: SIZE, regionBytes: MiB, epoch: 1, replicas, localNodeId: nodes[0]!,
        connector, control, dirtyMaps: maps, replicaTimeoutMs: 5000, reconnectIntervalMs: 60_000, log: silentLogger(), ...options,
      });
      engines.push(engine);
      return engine;
    },
  };
}

/** Whether `p` is still pending once everything queued for the next few event-loop turns has run. */
export async function stillPending(p: Promise<unknown>, turns = 5): Promise<boolean> {
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
  return !settled;
}

/**
 * `count` real replicas of VOL (rep-0, rep-1, ...), each on a replica manager of its own
 * ("nodes" in one process, file pools), in sync at epoch 1, and an engine setup over them.
 * Everything is cleaned up when the test ends.
 */
export async function replicatedEngine(t: ExecutionContext, count: number): Promise<{ s: EngineSetup; fxs: ReplicaFixture[] }> {
  const fxs: ReplicaFixture[] = [];
  t.teardown(async () => {
    for (const fx of fxs) await fx.cleanup();
  });
  for (let i = 0; i < count; i++) {
    const fx = await replicaFixture();
    fxs.push(fx);
    await fx.manager.create({ replicaId: `rep-${i}` as ReplicaId, volumeId: VOL }, SIZE, 1, true);
  }
  return { s: engineSetup(t, fxs.map((fx) => fx.manager), fxs[0]!.store.dirtyMaps()), fxs };
}

