/**
 * The pure pieces of the CSI snapshot calls: a VolumeSnapshotClass's parameters, the
 * ListSnapshots page token, the paging itself, the Snapshot message of a Cairn snapshot,
 * and the size of a volume made from a snapshot or a volume. Each problem is
 * INVALID_ARGUMENT naming the field or key (OUT_OF_RANGE for a size that cannot hold the
 * source, ABORTED for a token this driver did not make).
 *
 * The CSI snapshot_id is the snapshot's name, as the volume_id is the volume's: the
 * external-snapshotter's names (snapshot-<uid>) are unique and stable, and
 * `cairnctl snapshot inspect <snapshot_id>` then works on what Kubernetes shows.
 */
import { Code, StorageError } from '../common/errors.js';
import { formatBytes } from '../common/units.js';
import type { SnapshotView } from '../cluster/snapshot-types.js';
import type { CsiRequest } from './csi-call.js';
import { sizeForRange } from './controller-params.js';

/**
 * Keys the external-snapshotter adds on its own with --extra-create-metadata
 * (csi.storage.k8s.io/volumesnapshot/name, volumesnapshot/namespace,
 * volumesnapshotcontent/name), and its secret keys, which it strips but a driver must not
 * trip on: every csi.storage.k8s.io/ key is the sidecar's.
 */
const SIDECAR_PREFIX = 'csi.storage.k8s.io/';

/** A snapshot name or id as Cairn names them (common/ids.ts `validateName`); anything else names no snapshot. */
const SNAPSHOT_ID_RE = /^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$/;
export const isSnapshotId = (id: string): boolean => SNAPSHOT_ID_RE.test(id);

/** The VolumeSnapshotClass parameter naming a snapshot rule (docs/snapshots.md, "Snapshot rules"). */
export const SNAPSHOT_RULE_PARAMETER = 'cairn.dev/snapshot-rule';

/** The sidecar's keys (with --extra-create-metadata) holding the VolumeSnapshot's (or VolumeGroupSnapshot's) namespace, the claims'. */
const SNAPSHOT_NAMESPACE_KEYS = new Set(['csi.storage.k8s.io/volumesnapshot/namespace', 'csi.storage.k8s.io/volumegroupsnapshot/namespace']);

/** A snapshot rule name: a DNS-1123 subdomain, as rules are named. */
const RULE_NAME_RE = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

export interface SnapshotParameters {
  /** `cairn.dev/snapshot-rule`: the rule to run around the snapshot. */
  rule?: string;
  /** The VolumeSnapshot's namespace (the sidecar's metadata): where exec actions select pods. */
  namespace?: string;
}

/**
 * CreateSnapshot and CreateVolumeGroupSnapshot `parameters` (a VolumeSnapshotClass's or a
 * VolumeGroupSnapshotClass's): `cairn.dev/snapshot-rule` and the
 * sidecar's keys; any other key is refused by name.
 */
export function parseSnapshotParameters(params: Record<string, string> | undefined): SnapshotParameters {
  const out: SnapshotParameters = {};
  for (const [key, value] of Object.entries(params ?? {})) {
    if (key === SNAPSHOT_RULE_PARAMETER) {
      if (!RULE_NAME_RE.test(value)) {
        throw new StorageError(Code.INVALID_ARGUMENT, `parameters.${key} "${value}" is not a snapshot rule name: use the name of a rule in cairnctl rule list`, {
          details: { field: `parameters.${key}` },
        });
      }
      out.rule = value;
      continue;
    }
    if (SNAPSHOT_NAMESPACE_KEYS.has(key) && value) out.namespace = value;
    if (key.startsWith(SIDECAR_PREFIX)) continue;
    throw new StorageError(Code.INVALID_ARGUMENT, `parameters has an unknown key "${key}": a Cairn VolumeSnapshotClass or VolumeGroupSnapshotClass takes only ${SNAPSHOT_RULE_PARAMETER}`, {
      details: { field: `parameters.${key}` },
    });
  }
  return out;
}

/** A Timestamp of an RFC 3339 time (whole milliseconds). */
export function timestampOf(iso: string): { seconds: number; nanos: number } {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return { seconds: 0, nanos: 0 };
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
}

/**
 * The CSI Snapshot of a Cairn snapshot: snapshot_id its name, source_volume_id the
 * source's name (the CSI volume_id), the barrier's time, and ready_to_use only once every
 * copy is durable.
 */
export function snapshotMessage(s: SnapshotView): CsiRequest {
  return {
    sizeBytes: s.sizeBytes, snapshotId: s.name, sourceVolumeId: s.sourceVolumeName, creationTime: timestampOf(s.createdAt),
    readyToUse: s.readyToUse, groupSnapshotId: s.groupSnapshotId ?? '',
  };
}

const TOKEN_PREFIX = 'snapshot-after:';

/** The ListSnapshots next_token that continues after the snapshot `name` (opaque to the CO). */
export function encodeSnapshotToken(name: string): string {
  return Buffer.from(`${TOKEN_PREFIX}${name}`).toString('base64url');
}

/**
 * The name a ListSnapshots starting_token continues after. ABORTED (the spec's code for an
 * invalid starting_token) for a token this driver did not make.
 */
export function decodeSnapshotToken(token: string): string {
  const text = /^[A-Za-z0-9_-]+$/.test(token) ? Buffer.from(token, 'base64url').toString('utf8') : '';
  const name = text.startsWith(TOKEN_PREFIX) ? text.slice(TOKEN_PREFIX.length) : '';
  if (!isSnapshotId(name)) {
    throw new StorageError(Code.ABORTED, `starting_token "${token}" is not a token ListSnapshots returned: list again without one`, { details: { field: 'starting_token' } });
  }
  return name;
}

/**
 * One page of `snapshots` in name order: those after `after`, at most `maxEntries` (0: all),
 * and the token of the next page when more follow. Since the token says "after the
 * snapshot named X", a page stays right when snapshots come and go between calls.
 */
export function snapshotPage(snapshots: readonly SnapshotView[], after: string | undefined, maxEntries: number): { page: SnapshotView[]; nextToken: string } {
  const sorted = [...snapshots].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const rest = after === undefined ? sorted : sorted.filter((s) => s.name > after);
  const page = maxEntries > 0 ? rest.slice(0, maxEntries) : rest;
  const more = page.length < rest.length;
  return { page, nextToken: more ? encodeSnapshotToken(page[page.length - 1]!.name) : '' };
}

type CapacityRange = { requiredBytes?: string | number; limitBytes?: string | number } | undefined;

/**
 * The size of a volume made from a source of `sourceBytes` (restore or clone): the source's
 * size when capacity_range asks for nothing more, else what the range asks (4 KiB-rounded).
 * OUT_OF_RANGE when the range is smaller than the source (required_bytes or limit_bytes
 * under it: a copy cannot shrink), or when no size fits the range.
 */
export function sizeForSource(range: CapacityRange, sourceBytes: number, what: string, minBytes?: number): number {
  const required = Number(range?.requiredBytes ?? 0);
  const limit = Number(range?.limitBytes ?? 0);
  for (const [field, bytes] of [['required_bytes', required], ['limit_bytes', limit]] as const) {
    if (Number.isSafeInteger(bytes) && bytes > 0 && bytes < sourceBytes) {
      throw new StorageError(Code.OUT_OF_RANGE,
        `capacity_range.${field} ${formatBytes(bytes)} (${bytes} bytes) is smaller than ${what} (${sourceBytes} bytes): a volume made from it is at least that large`,
        { details: { field: `capacity_range.${field}` } });
    }
  }
  return sizeForRange({ requiredBytes: Math.max(required, sourceBytes), ...(limit > 0 ? { limitBytes: limit } : {}) }, minBytes);
}

/** CreateVolume's volume_content_source: a snapshot or a volume, by id; INVALID_ARGUMENT when it names neither. */
export function contentSourceOf(r: CsiRequest): { snapshot: string } | { volume: string } | undefined {
  const source = r.volumeContentSource as CsiRequest | null | undefined;
  if (!source) return undefined;
  if (source.snapshot) {
    const id = String(source.snapshot.snapshotId ?? '');
    if (!id) throw new StorageError(Code.INVALID_ARGUMENT, 'volume_content_source.snapshot.snapshot_id is required', { details: { field: 'volume_content_source.snapshot.snapshot_id' } });
    return { snapshot: id };
  }
  if (source.volume) {
    const id = String(source.volume.volumeId ?? '');
    if (!id) throw new StorageError(Code.INVALID_ARGUMENT, 'volume_content_source.volume.volume_id is required', { details: { field: 'volume_content_source.volume.volume_id' } });
    return { volume: id };
  }
  throw new StorageError(Code.INVALID_ARGUMENT, 'volume_content_source names neither a snapshot nor a volume', { details: { field: 'volume_content_source' } });
}

/** The content_source of a CreateVolume reply: the source as the request named it. */
export function contentSourceMessage(source: { snapshot: string } | { volume: string }): CsiRequest {
  return 'snapshot' in source ? { snapshot: { snapshotId: source.snapshot } } : { volume: { volumeId: source.volume } };
}
