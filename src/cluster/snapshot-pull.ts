/**
 * PullSnapshotCopy, served on the node that is to get a copy (docs/replica-protocol.md,
 * "Streaming a snapshot copy"): the snapshot repair of docs/snapshots.md brings a snapshot
 * back to its copy count by asking a node without a copy to pull one from a node with one.
 *
 * 1. The source node makes a short-lived read-only view of its copy: a replica created from
 *    the snapshot (createReplicaFromSnapshot, a thin or reflinked child: instant), under a
 *    fresh id and the pseudo volume `snapshot-pull-<snapshot id>`, at epoch 1.
 * 2. This node creates an empty replica of the same size under that pseudo volume.
 * 3. The source's allocated ranges (AllocatedRanges, holes under 64 KiB merged as the rebuild
 *    does) are read over the binary data channel and written here; pieces that read as zeros
 *    are skipped, so holes stay holes. Progress is logged every few seconds.
 * 4. Region checksums (ChecksumRange) of both replicas must agree (DATA_LOSS otherwise).
 * 5. The filled replica becomes this node's copy (ReplicaManager.adoptSnapshotCopy: a thin
 *    snapshot or reflink recorded as a barrier copy is), and it is deleted.
 * 6. The source's view is deleted, whatever happened.
 *
 * A failure leaves no copy, device or record here: both temporary replicas are deleted. A
 * crash leaves them recorded as replicas of a volume that does not exist, which the replica
 * collectors of both nodes delete after their grace period. A second pull of a snapshot
 * while one runs here waits for the running one; a copy already here is answered as it is.
 */
import { Code, StorageError } from '../common/errors.js';
import { newReplicaId, type NodeId, type SnapshotId, type VolumeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { formatBytes } from '../common/units.js';
import type { ReplicaConnector, ReplicaControl, ReplicaIo } from '../engine/engine-types.js';
import { SourceExtents } from '../engine/rebuild-extents.js';
import type { Extent } from '../pool/backend.js';
import type { ReplicaManager, ReplicaRefInput, SnapshotCopyView } from '../replica/replica-manager.js';
import type { PullSnapshotCopyInput } from '../replica/snapshot-pull.js';

/** The epoch of the temporary replicas: nothing else ever writes them. */
const PULL_EPOCH = 1;
/** The range asked for allocated extents at a time. */
const WINDOW_BYTES = 64 << 20;
/** One read and write. */
const PIECE_BYTES = 1 << 20;
/** Pieces in flight. */
const PIECES_IN_FLIGHT = 8;
/** Checksum regions, and the range checksummed per call (256 digests). */
const VERIFY_REGION_BYTES = 1 << 20;
const VERIFY_CALL_BYTES = 256 << 20;
/** How often progress is logged. */
const PROGRESS_EVERY_MS = 5000;

const ZEROS = Buffer.alloc(PIECE_BYTES);

export interface SnapshotPullOptions {
  nodeId: NodeId;
  /** This node's replicas: where the copy is made. */
  manager: ReplicaManager;
  /** Reaches the source node: its control calls and its data channel. */
  connector: ReplicaConnector;
  log: Logger;
}

export interface PullResult {
  copy: SnapshotCopyView;
  /** Bytes read from the source and written here (0 when the copy was here already). */
  copiedBytes: number;
}

/** The pseudo volume of a pull's temporary replicas. */
export const pullVolumeId = (snapshotId: SnapshotId): VolumeId => `snapshot-pull-${snapshotId}` as VolumeId;

export class SnapshotPullService {
  private readonly running = new Map<SnapshotId, Promise<PullResult>>();
  private closed = false;
  private readonly log: Logger;

  constructor(private readonly opts: SnapshotPullOptions) {
    this.log = opts.log.child({ component: 'snapshot-pull' });
  }

  /** The hook the replica server and the local control serve PullSnapshotCopy with. */
  readonly hook = async (input: PullSnapshotCopyInput): Promise<SnapshotCopyView> => (await this.pull(input)).copy;

  /** Streams the snapshot from its source node into this node's copy (see the file comment). */
  pull(input: PullSnapshotCopyInput): Promise<PullResult> {
    let p = this.running.get(input.snapshotId);
    if (!p) {
      p = this.run(input).finally(() => this.running.delete(input.snapshotId));
      this.running.set(input.snapshotId, p);
    }
    return p;
  }

  /** Stops the pulls in progress at their next piece (they fail UNAVAILABLE and clean up). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.running.values()]);
  }

  private async run(input: PullSnapshotCopyInput): Promise<PullResult> {
    const { snapshotId, sourceNodeId } = input;
    const have = await this.opts.manager.snapshotCopy(snapshotId);
    if (have) {
      if (have.volumeId !== input.volumeId) {
        throw new StorageError(Code.ALREADY_EXISTS, `node ${this.opts.nodeId} holds snapshot ${snapshotId} of volume ${have.volumeId}, not ${input.volumeId}`,
          { details: { snapshot: snapshotId } });
      }
      return { copy: have, copiedBytes: 0 };
    }
    if (sourceNodeId === this.opts.nodeId) {
      throw new StorageError(Code.NOT_FOUND, `node ${this.opts.nodeId} holds no copy of snapshot ${snapshotId} to pull from: name a node that holds one`,
        { details: { snapshot: snapshotId } });
    }
    const source = await this.opts.connector.control(sourceNodeId);
    const volumeId = pullVolumeId(snapshotId);
    const srcId = newReplicaId();
    const dstId = newReplicaId();
    const srcRef: ReplicaRefInput = { replicaId: srcId, volumeId };
    const dstRef: ReplicaRefInput = { replicaId: dstId, volumeId };
    const started = performance.now();
    this.log.info({ snapshot: snapshotId, sourceNode: sourceNodeId, sizeBytes: input.sizeBytes }, 'snapshot copy pull started');
    const ios: ReplicaIo[] = [];
    let srcMade = false;
    let dstMade = false;
    try {
      await source.createReplicaFromSnapshot(srcRef, input.sizeBytes, PULL_EPOCH, snapshotId);
      srcMade = true;
      await this.opts.manager.create(dstRef, input.sizeBytes, PULL_EPOCH, false);
      dstMade = true;
      const since = new Date().toISOString();
      const src = await this.opts.connector.openIo(volumeId, { id: srcId, nodeId: sourceNodeId, state: 'in-sync', since }, PULL_EPOCH);
      ios.push(src);
      const dst = await this.opts.connector.openIo(volumeId, { id: dstId, nodeId: this.opts.nodeId, state: 'rebuilding', since }, PULL_EPOCH);
      ios.push(dst);
      const copiedBytes = await this.copy(input, source, srcRef, src, dst);
      await dst.flush();
      const local = await this.opts.connector.control(this.opts.nodeId);
      await verify(input, source, srcRef, local, dstRef);
      await Promise.all(ios.splice(0).map((io) => io.close()));
      const copy = await this.opts.manager.adoptSnapshotCopy(dstRef, PULL_EPOCH, snapshotId, input.volumeId);
      dstMade = false;
      const ms = performance.now() - started;
      this.log.info({ snapshot: snapshotId, sourceNode: sourceNodeId, sizeBytes: input.sizeBytes, copiedBytes, ms: Math.round(ms),
        mbPerSec: Math.round(copiedBytes / 1e6 / Math.max(ms / 1000, 1e-3)) }, 'snapshot copy pulled');
      return { copy, copiedBytes };
    } catch (err) {
      this.log.warn({ snapshot: snapshotId, sourceNode: sourceNodeId, err: (err as Error).message }, 'snapshot copy pull failed; nothing is kept');
      throw err;
    } finally {
      for (const io of ios) io.cancel();
      if (dstMade) {
        await this.opts.manager.delete(dstRef, PULL_EPOCH).catch((e: unknown) =>
          this.log.warn({ snapshot: snapshotId, replica: dstRef.replicaId, err: (e as Error).message }, 'temporary pull replica not deleted; the replica collector deletes it'));
      }
      if (srcMade) {
        await source.deleteReplica(srcRef, PULL_EPOCH).catch((e: unknown) =>
          this.log.info({ snapshot: snapshotId, sourceNode: sourceNodeId, replica: srcRef.replicaId, err: (e as Error).message },
            'the source\'s temporary replica not deleted now; its replica collector deletes it'));
      }
    }
  }

  /** Copies the source's allocated ranges; returns the bytes read. */
  private async copy(input: PullSnapshotCopyInput, source: ReplicaControl, srcRef: ReplicaRefInput, src: ReplicaIo, dst: ReplicaIo): Promise<number> {
    const extents = new SourceExtents(source, srcRef, PULL_EPOCH, () =>
      this.log.warn({ snapshot: input.snapshotId, sourceNode: input.sourceNodeId }, 'source node cannot tell allocated ranges; every byte is copied'));
    let copied = 0;
    let lastLog = performance.now();
    for (let at = 0; at < input.sizeBytes; at += WINDOW_BYTES) {
      const length = Math.min(WINDOW_BYTES, input.sizeBytes - at);
      const pieces = splitPieces(await extents.of(at, length), PIECE_BYTES);
      await inParallel(pieces, PIECES_IN_FLIGHT, async (p) => {
        if (this.closed) throw new StorageError(Code.UNAVAILABLE, `snapshot ${input.snapshotId}: pull stopped, cairnd is shutting down`);
        const data = await src.read(p.offset, p.lengthBytes);
        copied += p.lengthBytes;
        if (!data.equals(ZEROS.subarray(0, data.byteLength))) await dst.write(p.offset, data, false);
      });
      if (performance.now() - lastLog >= PROGRESS_EVERY_MS) {
        lastLog = performance.now();
        this.log.info({ snapshot: input.snapshotId, sourceNode: input.sourceNodeId, doneBytes: at + length, totalBytes: input.sizeBytes, copiedBytes: copied }, 'snapshot copy pull progress');
      }
    }
    return copied;
  }
}

/** Compares region checksums of the source's view and the filled replica; DATA_LOSS at the first difference. */
async function verify(input: PullSnapshotCopyInput, source: ReplicaControl, srcRef: ReplicaRefInput, local: ReplicaControl, dstRef: ReplicaRefInput): Promise<void> {
  for (let at = 0; at < input.sizeBytes; at += VERIFY_CALL_BYTES) {
    const length = Math.min(VERIFY_CALL_BYTES, input.sizeBytes - at);
    const region = Math.min(VERIFY_REGION_BYTES, roundUp4k(length));
    const [a, b] = await Promise.all([
      source.checksumRange(srcRef, PULL_EPOCH, at, length, region),
      local.checksumRange(dstRef, PULL_EPOCH, at, length, region),
    ]);
    const i = a.digests.findIndex((d, k) => !b.digests[k] || !d.equals(b.digests[k]!));
    if (i >= 0 || a.digests.length !== b.digests.length) {
      const offset = at + Math.max(0, i) * region;
      throw new StorageError(Code.DATA_LOSS,
        `snapshot ${input.snapshotId}: the copy streamed from node ${input.sourceNodeId} differs from the source at byte ${offset} (${formatBytes(region)} region); nothing was kept, the repair retries`,
        { details: { snapshot: input.snapshotId, offset } });
    }
  }
}

function roundUp4k(n: number): number {
  return Math.ceil(n / 4096) * 4096;
}

/** The extents cut into pieces of at most `pieceBytes`. */
export function splitPieces(extents: readonly Extent[], pieceBytes: number): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    for (let at = e.offset; at < e.offset + e.lengthBytes; at += pieceBytes) out.push({ offset: at, lengthBytes: Math.min(pieceBytes, e.offset + e.lengthBytes - at) });
  }
  return out;
}

/** Runs `fn` over `items`, at most `limit` at once; the first failure rejects (after the started ones settle). */
async function inParallel<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    while (failed === undefined && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== undefined) throw failed;
}
