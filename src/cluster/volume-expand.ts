/**
 * Online volume expansion (CSI ControllerExpandVolume, `cairnctl volume expand`), while the
 * volume's engine keeps serving:
 *
 * 1. every replica the document lists grows to the new size (ResizeReplica on its node;
 *    the new area reads as zeros everywhere, the pools grow devices sparse);
 * 2. one compare-and-swap raises the document's `sizeBytes`, only if it still lists
 *    exactly the replicas that grew (a replica added meanwhile: grow again, then retry);
 * 3. the engine that serves the volume sees the document change and grows in memory
 *    (VolumeEngine.resize): it accepts I/O past the old end only from then on.
 *
 * Replicas are grown before the document says so, never after: a crash between the steps
 * leaves replicas larger than the volume, which nothing minds (the next call completes).
 * The region size stays: a volume may grow as long as it keeps at most MAX_REGIONS regions.
 *
 * A replica on a node that is down, or that does not answer, cannot grow: the call is
 * refused with UNAVAILABLE naming the node, and nothing is recorded. (Growing without it
 * would leave an in-sync replica smaller than the volume, which an engine started later
 * would write past.) Once the repair loop has replaced it, or its node is back, the call
 * succeeds.
 */
import { throwIfCancelled } from '../common/abort.js';
import { Code, StorageError, isStaleEpoch } from '../common/errors.js';
import type { NodeId, ReplicaId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { formatBytes } from '../common/units.js';
import type { ReplicaControl } from '../engine/engine-types.js';
import { listNodes } from './node-registry.js';
import type { ClusterStore } from './store/cluster-store.js';
import { MAX_REGIONS, getVolumeDoc, updateVolumeDoc, type VolumeDoc } from './volume-doc.js';

/** Rounds: each grows what the document lists, then tries the CAS. */
const MAX_ROUNDS = 5;

export interface ExpandDeps {
  store: ClusterStore;
  controls: { control(nodeId: NodeId): Promise<ReplicaControl> };
  log: Logger;
}

/**
 * Grows volume `name` to at least `sizeBytes` (a valid volume size, rounded to 4 KiB);
 * returns its document. A volume already that large is returned as it is (idempotent).
 * The caller holds the volume's lock. NOT_FOUND for no such volume, UNAVAILABLE while it
 * is being created.
 */
export async function expandVolume(deps: ExpandDeps, name: string, sizeBytes: number, signal?: AbortSignal): Promise<VolumeDoc> {
  for (let round = 1; round <= MAX_ROUNDS; round++) {
    throwIfCancelled(signal, `expand volume "${name}"`);
    const doc = readyDoc(await getVolumeDoc(deps.store, name, { signal }), name);
    if (doc.sizeBytes >= sizeBytes) return doc;
    checkRegions(doc, sizeBytes);
    await checkNodesUp(deps, doc);
    const grown = await growReplicas(deps, doc, sizeBytes);
    if (!grown) continue; // a newer epoch: read the document again
    throwIfCancelled(signal, `expand volume "${name}"`);
    let raced = false;
    const updated = await updateVolumeDoc(deps.store, name, (d) => {
      if (d.state !== 'ready') throw new StorageError(Code.NOT_FOUND, `volume "${name}" is ${d.state}`, { details: { volume: name } });
      if (d.sizeBytes >= sizeBytes) return undefined;
      raced = d.replicas.some((r) => !grown.has(r.id));
      return raced ? undefined : { ...d, sizeBytes };
    });
    if (raced) continue;
    deps.log.info({ volume: name, sizeBytes, previousBytes: doc.sizeBytes, replicas: doc.replicas.length }, 'volume expanded');
    return updated!.doc;
  }
  throw new StorageError(Code.ABORTED, `volume "${name}" kept changing while it was being expanded; try again`, { details: { volume: name } });
}

function readyDoc(stored: { doc: VolumeDoc } | undefined, name: string): VolumeDoc {
  if (!stored || stored.doc.state === 'deleting') throw new StorageError(Code.NOT_FOUND, `volume "${name}" not found`, { details: { volume: name } });
  if (stored.doc.state === 'creating') throw new StorageError(Code.UNAVAILABLE, `volume "${name}" is still being created; try again`, { details: { volume: name } });
  return stored.doc;
}

function checkRegions(doc: VolumeDoc, sizeBytes: number): void {
  if (Math.ceil(sizeBytes / doc.regionBytes) > MAX_REGIONS) {
    throw new StorageError(Code.OUT_OF_RANGE,
      `volume "${doc.name}" can grow to at most ${formatBytes(MAX_REGIONS * doc.regionBytes)} (${MAX_REGIONS} regions of ${formatBytes(doc.regionBytes)}, the size it was created with fixed them), not ${formatBytes(sizeBytes)}: create a larger volume and copy the data`,
      { details: { volume: doc.name, maxBytes: MAX_REGIONS * doc.regionBytes } });
  }
}

async function checkNodesUp(deps: ExpandDeps, doc: VolumeDoc): Promise<void> {
  const up = new Set((await listNodes(deps.store, deps.log)).filter((n) => n.up).map((n) => n.nodeId));
  const down = doc.replicas.filter((r) => !up.has(r.nodeId));
  if (down.length > 0) throw downError(doc, down.map((r) => r.nodeId));
}

function downError(doc: VolumeDoc, nodes: readonly string[], cause?: unknown): StorageError {
  return new StorageError(Code.UNAVAILABLE,
    `volume "${doc.name}" cannot grow while node${nodes.length > 1 ? 's' : ''} ${nodes.join(', ')} holding a replica ${nodes.length > 1 ? 'are' : 'is'} down or not answering: bring ${nodes.length > 1 ? 'them' : 'it'} back, or wait until the repair loop has replaced the replica, then retry`,
    { cause, details: { volume: doc.name, nodes: [...nodes] } });
}

/** Grows every replica of `doc`; the ids grown, or undefined when a replica has seen a newer epoch. */
async function growReplicas(deps: ExpandDeps, doc: VolumeDoc, sizeBytes: number): Promise<Set<ReplicaId> | undefined> {
  const results = await Promise.allSettled(doc.replicas.map(async (r) => {
    const control = await deps.controls.control(r.nodeId);
    await control.resizeReplica({ replicaId: r.id, volumeId: doc.id }, sizeBytes, doc.epoch);
  }));
  const failed = results.flatMap((res, i) => (res.status === 'rejected' ? [{ r: doc.replicas[i]!, err: res.reason as unknown }] : []));
  if (failed.length === 0) return new Set(doc.replicas.map((r) => r.id));
  for (const { r, err } of failed) deps.log.warn({ volume: doc.name, replica: r.id, replicaNode: r.nodeId, err: (err as Error).message }, 'replica not grown');
  if (failed.every(({ err }) => isStaleEpoch(err))) return undefined;
  const unreachable = failed.filter(({ err }) => err instanceof StorageError && (err.code === Code.UNAVAILABLE || err.code === Code.DEADLINE_EXCEEDED));
  if (unreachable.length > 0) throw downError(doc, unreachable.map(({ r }) => r.nodeId), unreachable[0]!.err);
  const first = failed.find(({ err }) => !isStaleEpoch(err)) ?? failed[0]!;
  if (first.err instanceof StorageError) {
    throw new StorageError(first.err.code, `replica ${first.r.id} of volume "${doc.name}" on node ${first.r.nodeId} cannot grow to ${formatBytes(sizeBytes)}: ${first.err.message}`,
      { cause: first.err, details: { volume: doc.name, replica: first.r.id, node: first.r.nodeId } });
  }
  throw first.err;
}
