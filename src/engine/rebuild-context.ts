/**
 * What a rebuild (rebuild.ts, `runRebuild`) is given: the target and its in-sync source, their
 * I/O and control calls, the target's region map, the engine's region locks and the copy
 * settings; and what it reports: progress while it runs, the result when it finished.
 */
import type { VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { ReplicaControl, ReplicaIo, VolumeReplicaEntry } from './engine-types.js';
import type { RegionLocks, RegionMap } from './region-map.js';

export interface RebuildProgress { doneBytes: number; totalBytes: number; bytesPerSecond: number }

export interface RebuildContext {
  volumeId: VolumeId;
  target: VolumeReplicaEntry;
  epoch: number;
  sizeBytes: number;
  regionBytes: number;
  /** An in-sync replica. */
  source: ReplicaIo;
  targetIo: ReplicaIo;
  sourceControl: ReplicaControl;
  targetControl: ReplicaControl;
  /** Regions the target lacks; runRebuild clears bits as regions are durably copied. */
  map: RegionMap;
  /** The engine saves `map` (synchronously durable). */
  persistMap(): void;
  locks: RegionLocks;
  /** 0 = unlimited. */
  rateBytesPerSec: number;
  /** Regions copied at once, default 4. */
  concurrency?: number;
  /** The most bytes one copy run spans, default RUN_MAX_BYTES (at least one region is copied at a time). */
  runMaxBytes?: number;
  signal: AbortSignal;
  /** The engine's logger, with volume, volumeId and epoch bound; the rebuild adds replica and source. */
  log: Logger;
  /** Called about once a second and at the end with the progress of this run. */
  onProgress?(p: RebuildProgress): void;
}

export interface RebuildResult {
  /** Bytes of the regions brought up to date, every round: copied plus discarded. */
  doneBytes: number;
  /** Bytes read from the source and sent to the target (its data, every round). */
  copiedBytes: number;
  /** Of `copiedBytes`, those that read as zeros and went as write-zeroes. */
  zeroedBytes: number;
  /** Bytes the source holds no data in: discarded on the target, never read. */
  discardedBytes: number;
  /** Regions whose checksums agreed between source and target. */
  regionsVerified: number;
  durationMs: number;
  /** Of `durationMs`, the checksum comparisons. */
  verifyMs: number;
}
