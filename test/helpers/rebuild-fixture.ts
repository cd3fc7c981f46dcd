/**
 * Rebuild against real replicas: two ReplicaManagers on file pools in temp dirs (two
 * "nodes"), the source in sync and the target rebuilding, reached through the engine's
 * LocalReplicaIo (wrapped to record and to inject faults) and the managers' methods as
 * ReplicaControl (the daemon's localControl).
 */
import type { ExecutionContext } from 'ava';
import type { StorageError } from '../../src/common/errors.js';
import { localControl } from '../../src/cluster/replica-connector.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { ReplicaControl, ReplicaIo } from '../../src/engine/engine-types.js';
import type { RebuildContext } from '../../src/engine/rebuild.js';
import { RegionLocks, type RegionMap } from '../../src/engine/region-map.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import type { RebuildProgressRecord } from '../../src/store/node-store.js';
import { replicaFixture, type ReplicaFixture } from './replica-fixture.js';

export const EPOCH = 3;
export const VOLUME = 'vol-rebuild' as VolumeId;
export const sourceRef = { replicaId: 'rep-src', volumeId: VOLUME };
export const targetRef = { replicaId: 'rep-tgt', volumeId: VOLUME };

export interface IoEvent { op: 'write' | 'write-zeroes' | 'read' | 'flush'; offset: number; lengthBytes: number }

/** Records what passes through, with optional hooks before a read and on write data. */
export class RecordingIo implements ReplicaIo {
  readonly events: IoEvent[] = [];
  /** Runs after the inner read returned, before its data goes back to the caller. */
  afterRead?: (offset: number) => Promise<void> | void;
  mangleWrite?: (offset: number, data: Uint8Array) => Uint8Array;
  failWrites?: StorageError;
  constructor(readonly inner: ReplicaIo, private readonly regionBytes: number) {}
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
    return [...new Set(this.events.filter((e) => e.op === 'write' || e.op === 'write-zeroes').map((e) => Math.floor(e.offset / this.regionBytes)))].sort((a, b) => a - b);
  }
}

export const controlOf = localControl;

export interface Setup {
  sizeBytes: number;
  regionBytes: number;
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

/** Two nodes with a source replica (in sync) and a target (rebuilding) of `sizeBytes`. */
export async function setup(t: ExecutionContext, sizeBytes: number, regionBytes: number): Promise<Setup> {
  const SIZE = sizeBytes;
  const REGION = regionBytes;
  const src = await replicaFixture();
  const tgt = await replicaFixture();
  t.teardown(async () => {
    await src.cleanup();
    await tgt.cleanup();
  });
  await src.manager.create(sourceRef, SIZE, EPOCH, true);
  await tgt.manager.create(targetRef, SIZE, EPOCH, false);
  const source = new RecordingIo(new LocalReplicaIo(await src.manager.open(sourceRef), EPOCH, 'node-a' as NodeId), REGION);
  const target = new RecordingIo(new LocalReplicaIo(await tgt.manager.open(targetRef), EPOCH, 'node-b' as NodeId), REGION);
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
    sizeBytes, regionBytes, src, tgt, source, target, sourceControl: controlOf(src.manager), targetControl, progress, progressAt, saved, locks,
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

/** Byte equality of two devices' contents; names the first differing offset. */
export function sameBytes(t: ExecutionContext, actual: Buffer, expected: Buffer, message = 'target byte-identical to the source', regionBytes = 64 << 10): void {
  if (actual.equals(expected)) return void t.pass(message);
  let at = 0;
  while (at < Math.min(actual.length, expected.length) && actual[at] === expected[at]) at++;
  t.fail(`${message}: they differ first at byte ${at} (region ${Math.floor(at / regionBytes)}), lengths ${actual.length} and ${expected.length}`);
}

