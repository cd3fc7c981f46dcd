/**
 * Verification: compares a volume's in-sync replicas region by region (SHA-256 per region,
 * at the volume's epoch), over the replica services only. A region that differs is checked
 * once more after a moment, so that a write in flight during the first pass is not reported.
 */
import { abortable, throwIfCancelled } from '../common/abort.js';
import type { Logger } from '../common/log.js';
import type { ClusterStore } from './store/cluster-store.js';
import { getVolumeDoc, inSyncReplicas, type VolumeDoc, type VolumeReplicaEntry } from './volume-doc.js';
import { requireVolume, type ReplicaControls } from './volume-lifecycle.js';
import type { VerifyMismatch, VerifyResult } from './volume-views.js';

/** Regions per ChecksumRange call when verifying. */
const VERIFY_REGIONS_PER_CALL = 1024;
/** How long a differing region is left before it is compared again. */
const RECHECK_DELAY_MS = 200;

export interface VolumeVerifierOptions {
  store: ClusterStore;
  controls: ReplicaControls;
  log: Logger;
}

export class VolumeVerifier {
  constructor(private readonly opts: VolumeVerifierOptions) {}

  async verify(name: string, signal?: AbortSignal): Promise<VerifyResult> {
    const doc = requireVolume(await getVolumeDoc(this.opts.store, name, { signal }), name);
    const replicas = inSyncReplicas(doc);
    const result: VerifyResult = { volume: name, replicas: replicas.map((r) => r.id), regionBytes: doc.regionBytes, regionsCompared: 0, mismatches: [] };
    if (replicas.length < 2) {
      result.regionsCompared = Math.ceil(doc.sizeBytes / doc.regionBytes);
      return result;
    }
    const what = `verify volume "${name}"`;
    const span = VERIFY_REGIONS_PER_CALL * doc.regionBytes;
    for (let offset = 0; offset < doc.sizeBytes; offset += span) {
      const length = Math.min(span, doc.sizeBytes - offset);
      result.regionsCompared += Math.ceil(length / doc.regionBytes);
      for (const m of await abortable(this.compare(doc, replicas, offset, length), signal, what)) {
        await abortable(new Promise((r) => setTimeout(r, RECHECK_DELAY_MS)), signal, what);
        result.mismatches.push(...await abortable(this.compare(doc, replicas, m.offset, m.lengthBytes), signal, what));
      }
      throwIfCancelled(signal, what);
    }
    this.opts.log.info({ volume: name, regionsCompared: result.regionsCompared, mismatches: result.mismatches.length }, 'volume verified');
    return result;
  }

  /** The regions of [offset, offset + lengthBytes) whose digest differs between the replicas. */
  private async compare(doc: VolumeDoc, replicas: VolumeReplicaEntry[], offset: number, lengthBytes: number): Promise<VerifyMismatch[]> {
    const sums = await Promise.all(replicas.map(async (r) => {
      const control = await this.opts.controls.control(r.nodeId);
      return control.checksumRange({ replicaId: r.id, volumeId: doc.id }, doc.epoch, offset, lengthBytes, doc.regionBytes);
    }));
    const out: VerifyMismatch[] = [];
    sums[0]!.digests.forEach((digest, i) => {
      const differ = replicas.filter((_, k) => k > 0 && !sums[k]!.digests[i]!.equals(digest)).map((r) => r.id);
      if (differ.length > 0) {
        const at = offset + i * doc.regionBytes;
        out.push({ offset: at, lengthBytes: Math.min(doc.regionBytes, doc.sizeBytes - at), replicas: differ });
      }
    });
    return out;
  }
}
