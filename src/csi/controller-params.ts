/**
 * The pure pieces of the CSI Controller: StorageClass parameters, capacity ranges, volume
 * capabilities and topology requirements, checked before any side effect. Each problem is
 * INVALID_ARGUMENT naming the field or key (OUT_OF_RANGE for a capacity no volume can have).
 */
import { Code, StorageError } from '../common/errors.js';
import { alignUp, formatBytes } from '../common/units.js';
import { MAX_VOLUME_BYTES, VOLUME_ALIGNMENT_BYTES } from '../cluster/volume-lifecycle.js';
import { MAX_REPLICAS } from '../cluster/volume-doc.js';
import type { CsiRequest } from './csi-call.js';

/** The size of a volume whose CreateVolume names no capacity_range. */
export const DEFAULT_VOLUME_BYTES = 1024 ** 3; // 1 GiB

export const TOPOLOGY_NODE_KEY = 'topology.cairn.dev/node';
export const TOPOLOGY_ZONE_KEY = 'topology.cairn.dev/zone';

export const SUPPORTED_FS_TYPES = ['ext4', 'xfs'] as const;
export type FsType = (typeof SUPPORTED_FS_TYPES)[number];

/** mkfs.xfs (xfsprogs 6.x) refuses a filesystem under 300 MiB ("Filesystem must be larger than 300MB"). */
export const XFS_MIN_BYTES = 300 * 1024 * 1024;

/** The smallest volume CreateVolume makes for `fsType`: 4 KiB, or what mkfs.xfs accepts. */
export function minimumBytes(fsType: string | undefined): number {
  return fsType === 'xfs' ? XFS_MIN_BYTES : VOLUME_ALIGNMENT_BYTES;
}

/** The CSI volume_id is the volume's name; an id that is not a volume name names no volume. */
const VOLUME_ID_RE = /^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$/;
export const isVolumeId = (id: string): boolean => VOLUME_ID_RE.test(id);

/** A zone name, as `cairnd --zone` accepts it. */
const ZONE_RE = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;

/**
 * Keys the external-provisioner adds on its own: its extra-create-metadata
 * (csi.storage.k8s.io/pvc/name, pvc/namespace, pv/name). Any other csi.storage.k8s.io/ key
 * is the provisioner's too (it strips its secret keys, but a driver must not trip on them).
 */
const PROVISIONER_PREFIX = 'csi.storage.k8s.io/';

export interface VolumeParameters {
  replicas?: number;
  fsType?: FsType;
  /** Every replica in one of these zones. */
  zones?: string[];
}

const invalid = (message: string, details: Record<string, unknown> = {}): StorageError => new StorageError(Code.INVALID_ARGUMENT, message, { details });

/** `zones`: comma-separated zone names (spaces around commas allowed), at least one. */
function parseZones(value: string, field: string): string[] {
  const zones = value.split(',').map((z) => z.trim());
  const bad = zones.find((z) => !ZONE_RE.test(z));
  if (bad !== undefined) {
    throw invalid(`${field}.zones must be a comma-separated list of zone names, got "${value}"${bad === '' ? ' (an empty name)' : ` ("${bad}" is not a zone name)`}`, { field: `${field}.zones` });
  }
  return [...new Set(zones)];
}

/** `parameters` (or `mutable_parameters` when `mutable`): `replicas` 1-3, `fsType` ext4|xfs, `zones`; any other key is refused by name. */
export function parseParameters(params: Record<string, string> | undefined, mutable = false): VolumeParameters {
  const field = mutable ? 'mutable_parameters' : 'parameters';
  const out: VolumeParameters = {};
  for (const [key, value] of Object.entries(params ?? {})) {
    if (key === 'replicas') {
      const n = /^[0-9]+$/.test(value) ? Number(value) : NaN;
      if (!Number.isInteger(n) || n < 1 || n > MAX_REPLICAS) throw invalid(`${field}.replicas must be 1 to ${MAX_REPLICAS}, got "${value}"`, { field: `${field}.replicas` });
      out.replicas = n;
    } else if (key === 'fsType' && !mutable) {
      if (!(SUPPORTED_FS_TYPES as readonly string[]).includes(value)) throw invalid(`${field}.fsType must be ext4 or xfs, got "${value}"`, { field: `${field}.fsType` });
      out.fsType = value as FsType;
    } else if (key === 'zones' && !mutable) {
      out.zones = parseZones(value, field);
    } else if (!mutable && key.startsWith(PROVISIONER_PREFIX)) {
      continue;
    } else {
      throw invalid(`${field} has an unknown key "${key}"`, { field: `${field}.${key}` });
    }
  }
  return out;
}

/**
 * The size to create for `capacity_range`: required_bytes rounded up to 4 KiB, the default
 * when neither bound is set, limit_bytes rounded down when only the limit is set; never
 * under `minBytes` (an xfs volume's floor). OUT_OF_RANGE when no 4 KiB multiple fits (or
 * the size is over Cairn's maximum, or the limit is under `minBytes`).
 */
export function sizeForRange(range: { requiredBytes?: string | number; limitBytes?: string | number } | undefined, minBytes = VOLUME_ALIGNMENT_BYTES): number {
  const required = Number(range?.requiredBytes ?? 0);
  const limit = Number(range?.limitBytes ?? 0);
  if (!Number.isSafeInteger(required) || !Number.isSafeInteger(limit) || required < 0 || limit < 0) {
    throw new StorageError(Code.OUT_OF_RANGE, 'capacity_range is out of range', { details: { field: 'capacity_range' } });
  }
  let size: number;
  if (required > 0) size = alignUp(required, VOLUME_ALIGNMENT_BYTES);
  else if (limit > 0) size = Math.min(DEFAULT_VOLUME_BYTES, limit - (limit % VOLUME_ALIGNMENT_BYTES));
  else size = DEFAULT_VOLUME_BYTES;
  if (size < minBytes) size = minBytes;
  if (limit > 0 && minBytes > VOLUME_ALIGNMENT_BYTES && limit < minBytes) {
    throw new StorageError(Code.OUT_OF_RANGE,
      `limit_bytes ${formatBytes(limit)} is under ${formatBytes(minBytes)}, the smallest xfs filesystem mkfs.xfs makes: raise the limit or use ext4`,
      { details: { field: 'capacity_range.limit_bytes' } });
  }
  if (size <= 0 || (limit > 0 && size > limit) || size > MAX_VOLUME_BYTES) {
    throw new StorageError(Code.OUT_OF_RANGE,
      `no volume size fits capacity_range (required ${formatBytes(required)}, limit ${limit ? formatBytes(limit) : 'none'}): sizes are multiples of 4 KiB up to ${formatBytes(MAX_VOLUME_BYTES)}`,
      { details: { field: 'capacity_range' } });
  }
  return size;
}

/** Whether an existing volume of `sizeBytes` satisfies `range` (idempotent CreateVolume). */
export function sizeFitsRange(sizeBytes: number, range: { requiredBytes?: string | number; limitBytes?: string | number } | undefined): boolean {
  const required = Number(range?.requiredBytes ?? 0);
  const limit = Number(range?.limitBytes ?? 0);
  if (required === 0 && limit === 0) return true;
  return sizeBytes >= required && (limit === 0 || sizeBytes <= limit);
}

const SINGLE_NODE_MODES = new Set(['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER']);
const MULTI_NODE_WRITERS = new Set(['MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER']);

/**
 * Why Cairn cannot serve `capability`, or undefined when it can: mount (fsType ext4, xfs
 * or unset) or block; single-node modes and MULTI_NODE_READER_ONLY; a MULTI_NODE_* writer
 * never (one engine per volume: a second node writing would corrupt it).
 */
export function capabilityProblem(capability: CsiRequest, at: string): string | undefined {
  if (!capability.mount && !capability.block) return `${at} must be mount or block`;
  const fsType = capability.mount?.fsType ?? '';
  if (capability.mount && fsType !== '' && !(SUPPORTED_FS_TYPES as readonly string[]).includes(fsType)) return `${at}.mount.fs_type "${fsType}" is not supported: use ext4 or xfs`;
  const mode = capability.accessMode?.mode ?? 'UNKNOWN';
  if (MULTI_NODE_WRITERS.has(mode)) return `${at}.access_mode ${mode}: a block volume cannot be shared across nodes safely (one node writes at a time)`;
  if (!SINGLE_NODE_MODES.has(mode) && mode !== 'MULTI_NODE_READER_ONLY') return `${at}.access_mode ${mode} is not supported`;
  return undefined;
}

/** INVALID_ARGUMENT for the first capability Cairn cannot serve. */
export function checkCapabilities(capabilities: readonly CsiRequest[], field = 'volume_capabilities'): void {
  capabilities.forEach((c, i) => {
    const problem = capabilityProblem(c, `${field}[${i}]`);
    if (problem) throw invalid(problem, { field: `${field}[${i}]` });
  });
}

interface Topology { segments?: Record<string, string> }

/** Segment keys must be Cairn's; INVALID_ARGUMENT naming an unknown one. */
export function checkTopology(requirement: { requisite?: Topology[]; preferred?: Topology[] } | undefined): void {
  for (const [list, name] of [[requirement?.requisite, 'requisite'], [requirement?.preferred, 'preferred']] as const) {
    for (const t of list ?? []) {
      for (const key of Object.keys(t.segments ?? {})) {
        if (key !== TOPOLOGY_NODE_KEY && key !== TOPOLOGY_ZONE_KEY) throw invalid(`accessibility_requirements.${name} has an unknown topology key "${key}"`, { field: `accessibility_requirements.${name}` });
      }
    }
  }
}

/** The node to prefer: the first preferred segment naming a node (the consuming pod's, under WaitForFirstConsumer). */
export function preferredNodeOf(requirement: { preferred?: Topology[] } | undefined): string | undefined {
  return requirement?.preferred?.map((t) => t.segments?.[TOPOLOGY_NODE_KEY]).find((n) => n !== undefined && n !== '');
}

/**
 * The nodes a `requisite` topology allows (a node matches a segment when each of its keys
 * does: the node key its name or id, the zone key its zone); undefined when there is no
 * requisite. The volume is then placed with a replica on one of them.
 */
export function requisiteNodes(
  requirement: { requisite?: Topology[] } | undefined,
  nodes: readonly { nodeId: string; name: string; zone?: string }[],
): string[] | undefined {
  const requisite = requirement?.requisite ?? [];
  if (requisite.length === 0) return undefined;
  const matches = (n: { nodeId: string; name: string; zone?: string }, segments: Record<string, string>): boolean =>
    Object.entries(segments).every(([key, value]) => (key === TOPOLOGY_NODE_KEY ? value === n.name || value === n.nodeId : (n.zone ?? '') === value));
  return nodes.filter((n) => requisite.some((t) => matches(n, t.segments ?? {}))).map((n) => n.nodeId);
}

const LIST_TOKEN_PREFIX = 'after:';

/** The ListVolumes next_token that continues after the volume `name` (opaque to the CO). */
export function encodeListToken(name: string): string {
  return Buffer.from(`${LIST_TOKEN_PREFIX}${name}`).toString('base64url');
}

/**
 * The name a ListVolumes starting_token continues after. ABORTED (the spec's code for an
 * invalid starting_token: start again without one) for a token this driver did not make.
 */
export function decodeListToken(token: string): string {
  const text = /^[A-Za-z0-9_-]+$/.test(token) ? Buffer.from(token, 'base64url').toString('utf8') : '';
  const name = text.startsWith(LIST_TOKEN_PREFIX) ? text.slice(LIST_TOKEN_PREFIX.length) : '';
  if (!isVolumeId(name)) {
    throw new StorageError(Code.ABORTED, `starting_token "${token}" is not a token ListVolumes returned: list again without one`, { details: { field: 'starting_token' } });
  }
  return name;
}
