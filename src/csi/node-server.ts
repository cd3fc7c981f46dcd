/**
 * The CSI Node service (spec v1.12.0), on the request wrapper of csi-call.ts. Handlers stay
 * thin: validate, call the stager (engine/stager.ts: export, kernel device, mkfs, mount)
 * or the mounter (bind mounts, statfs), build the reply.
 *
 * - The CSI volume id is the volume's name.
 * - Stage: mount (ext4/xfs; the capability's fs_type, else volume_context `fsType`, else
 *   ext4) or block. Multi-node writer modes are INVALID_ARGUMENT: one engine serves a volume.
 * - Publish: a bind mount of the staging mount onto target_path (a directory this plugin
 *   creates), or for block the device node bound onto a file this plugin creates;
 *   read-only when asked or when the access mode is a reader mode. Unpublish unmounts and
 *   removes what publish created.
 * - Publication (CSI ControllerPublishVolume, in the volume's document): a volume published
 *   to other nodes and not this one is FAILED_PRECONDITION naming them; one published
 *   read-only here is staged read-only whatever the access mode; one published nowhere is
 *   staged (cairnctl volumes, and a CO that does not attach).
 * - Expand (NodeExpandVolume) is in node-expand.ts: the staged device and filesystem grow
 *   online to the size ControllerExpandVolume gave the volume.
 * - After a cairnd restart, Stage and Unstage wait until the stager has taken back the
 *   volumes the previous cairnd staged (`recovery`), bounded by the call's deadline.
 * - Codes this file decides (others come from the layers below): see docs/csi.md, "Node".
 */
import { mkdir, open, rm, rmdir, stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import type { VolumeView } from '../cluster/volume-views.js';
import { abortable } from '../common/abort.js';
import { Code, StorageError, fromNodeError, isStorageError } from '../common/errors.js';
import { bindMount, blockDeviceBytes, filesystemStats, findMount, FS_TYPES, unmount, type FsType, type MountEntry } from '../engine/mounter.js';
import type { Stager, StageAccess } from '../engine/stager.js';
import type { StagedVolumeRecord } from '../store/staged-volume-record.js';
import { csiService, type CsiCallOptions, type CsiRequest, type CsiService } from './csi-call.js';
import { volumeLockKey } from './csi-locks.js';
import { nodeExpandMethods } from './node-expand.js';
import { volumeCondition } from './volume-condition.js';

export const TOPOLOGY_NODE_KEY = 'topology.cairn.dev/node';
export const TOPOLOGY_ZONE_KEY = 'topology.cairn.dev/zone';

export interface NodeServiceOptions extends CsiCallOptions {
  nodeName: string;
  /** '' when the node has none. */
  zone: string;
  /** 0: no limit (the field is left unset). */
  maxVolumesPerNode: number;
  stager: NodeStager;
  /**
   * Settles once the stager has recovered the volumes staged before a restart; Stage and
   * Unstage wait for it (bounded by their signal) so that they never race that recovery.
   * Absent: nothing to wait for.
   */
  recovery?: Promise<void>;
  /** The volume's view (NOT_FOUND when it does not exist). */
  volumes: { get(name: string, signal?: AbortSignal): Promise<VolumeView> };
  /** True once the node drains for a restart (daemon/node-drain.ts): NodeStageVolume answers UNAVAILABLE, which kubelet retries. */
  draining?: () => boolean;
}

/** What the Node service calls of the stager (engine/stager.ts). */
export type NodeStager = Pick<Stager, 'get' | 'stage' | 'unstage' | 'expand'>;

const WRITER_MULTI_NODE = new Set(['MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER']);
const READER_MODES = new Set(['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY']);
const KNOWN_MODES = new Set(['SINGLE_NODE_WRITER', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER', ...READER_MODES, ...WRITER_MULTI_NODE]);

function invalid(message: string, details: Record<string, unknown> = {}): StorageError {
  return new StorageError(Code.INVALID_ARGUMENT, message, { details });
}

/** Checks a capability's access mode and type; the stage/publish shape it asks for. */
export function checkCapability(capability: CsiRequest, volumeContext: Record<string, string> = {}): { block: boolean; fsType: FsType | ''; mountFlags: string[]; readerMode: boolean } {
  const mode = String(capability.accessMode?.mode ?? 'UNKNOWN');
  if (WRITER_MULTI_NODE.has(mode)) {
    throw invalid(`access mode ${mode} is not supported: a block volume cannot be shared across nodes safely (one engine serves it)`, { mode });
  }
  if (!KNOWN_MODES.has(mode)) throw invalid(`access mode ${mode} is not supported`, { mode });
  const readerMode = READER_MODES.has(mode);
  if (capability.block && capability.mount) throw invalid('volume_capability sets both block and mount');
  if (capability.block) return { block: true, fsType: '', mountFlags: [], readerMode };
  if (!capability.mount) throw invalid('volume_capability.access_type (block or mount) is required', { field: 'volume_capability.access_type' });
  const fsType = String(capability.mount.fsType || volumeContext.fsType || 'ext4');
  if (!(FS_TYPES as readonly string[]).includes(fsType)) throw invalid(`fs_type ${fsType} is not supported: use ${FS_TYPES.join(' or ')}`, { fsType });
  return { block: false, fsType: fsType as FsType, mountFlags: [...(capability.mount.mountFlags ?? [])] as string[], readerMode };
}

/**
 * Whether this node may stage `view`, and read-only or not: FAILED_PRECONDITION when it is
 * published to other nodes and not to `nodeName`; read-only when published read-only here.
 * A volume published nowhere may be staged (cairnctl volumes; a CO without attach).
 */
export function publicationFor(view: Pick<VolumeView, 'name' | 'published'>, nodeName: string): { readonly: boolean } {
  if (view.published.length === 0) return { readonly: false };
  const here = view.published.find((p) => p.nodeId === nodeName);
  if (!here) {
    const holders = view.published.map((p) => `"${p.nodeId}"${p.readonly ? ' (read-only)' : ''}`).join(', ');
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${view.name}" is published to node ${holders}, not to this node "${nodeName}": ControllerUnpublishVolume it there and ControllerPublishVolume it here first`,
      { details: { volume: view.name, node: nodeName, publishedTo: view.published.map((p) => p.nodeId) } });
  }
  return { readonly: here.readonly };
}

function requireAbsolute(path: string, field: string): void {
  if (!path.startsWith('/')) throw invalid(`${field} must be an absolute path`, { field });
}

export function nodeService(o: NodeServiceOptions): CsiService {
  const lock = (r: CsiRequest): string[] => [volumeLockKey(r.volumeId)];
  const recovered = (signal: AbortSignal): Promise<void> =>
    abortable(o.recovery ?? Promise.resolve(), signal, 'waiting for the volumes staged before cairnd restarted to be recovered');

  /** NOT_FOUND unless the volume exists (in the cluster, or staged here). */
  const requireVolume = async (volume: string, signal: AbortSignal): Promise<void> => {
    if (o.stager.get(volume)) return;
    await o.volumes.get(volume, signal);
  };

  return csiService('Node', {
    NodeStageVolume: {
      required: ['volume_id', 'staging_target_path', 'volume_capability', 'volume_capability.access_mode'],
      validate: (r) => {
        requireAbsolute(r.stagingTargetPath, 'staging_target_path');
        checkCapability(r.volumeCapability, r.volumeContext);
      },
      locks: lock,
      handler: async (r, { signal }) => {
        if (o.draining?.()) {
          throw new StorageError(Code.UNAVAILABLE, `cairnd on node "${o.nodeName}" is draining for a restart and stages no new volume; retry once it is back`, { details: { node: o.nodeName } });
        }
        const cap = checkCapability(r.volumeCapability, r.volumeContext);
        await recovered(signal);
        const publication = publicationFor(await o.volumes.get(r.volumeId, signal), o.nodeName);
        await requireDirectory(r.stagingTargetPath, 'staging_target_path');
        const access: StageAccess = cap.block ? { block: true } : { fsType: cap.fsType as FsType, mountFlags: cap.mountFlags };
        // Published read-only here: read-only whatever the access mode (kubelet derives the
        // mode from the PV's access modes, so a read-only attach can come with a writer mode).
        await o.stager.stage(r.volumeId, { stagingPath: resolve(r.stagingTargetPath), access, readonly: cap.readerMode || publication.readonly, signal });
        return {};
      },
    },
    NodeUnstageVolume: {
      required: ['volume_id', 'staging_target_path'],
      locks: lock,
      handler: async (r, { signal }) => {
        await recovered(signal);
        await requireVolume(r.volumeId, signal);
        await o.stager.unstage(r.volumeId, resolve(r.stagingTargetPath));
        return {};
      },
    },
    NodePublishVolume: {
      required: ['volume_id', 'target_path', 'volume_capability', 'volume_capability.access_mode'],
      validate: (r) => {
        requireAbsolute(r.targetPath, 'target_path');
        checkCapability(r.volumeCapability, r.volumeContext);
      },
      locks: lock,
      handler: async (r, { signal }) => {
        const cap = checkCapability(r.volumeCapability, r.volumeContext);
        await requireVolume(r.volumeId, signal);
        const record = stagedAt(o.stager.get(r.volumeId), r.volumeId, r.stagingTargetPath);
        if ((record.accessType === 'block') !== cap.block) {
          throw new StorageError(Code.FAILED_PRECONDITION, `volume "${r.volumeId}" is staged as ${record.accessType}, not as ${cap.block ? 'block' : 'mount'}`, { details: { volume: r.volumeId } });
        }
        await publish(record, resolve(r.targetPath), Boolean(r.readonly) || cap.readerMode || record.readonly, signal);
        return {};
      },
    },
    NodeUnpublishVolume: {
      required: ['volume_id', 'target_path'],
      locks: lock,
      handler: async (r, { signal }) => {
        const target = resolve(r.targetPath);
        if (!(await findMount(target))) await requireVolume(r.volumeId, signal);
        await unmount(target, signal);
        await removeTarget(target);
        return {};
      },
    },
    NodeGetVolumeStats: {
      required: ['volume_id', 'volume_path'],
      handler: (r, { signal }) => volumeStats(o, r.volumeId, resolve(r.volumePath), signal),
    },
    ...nodeExpandMethods({ stager: o.stager, volumes: o.volumes, capabilityIsBlock: (c) => checkCapability(c).block }),
    NodeGetCapabilities: {
      handler: () => ({
        capabilities: ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'VOLUME_CONDITION', 'SINGLE_NODE_MULTI_WRITER', 'EXPAND_VOLUME'].map((type) => ({ rpc: { type } })),
      }),
    },
    NodeGetInfo: {
      handler: () => ({
        nodeId: o.nodeName,
        maxVolumesPerNode: o.maxVolumesPerNode,
        accessibleTopology: { segments: { [TOPOLOGY_NODE_KEY]: o.nodeName, ...(o.zone ? { [TOPOLOGY_ZONE_KEY]: o.zone } : {}) } },
      }),
    },
  }, { log: o.log, locks: o.locks }); // cairnd's root logger already names this node as `node`
}

/** The staging path must be an existing directory (the CO makes it): FAILED_PRECONDITION otherwise. */
async function requireDirectory(path: string, field: string): Promise<void> {
  const s = await stat(path).catch(() => undefined);
  if (!s?.isDirectory()) {
    throw new StorageError(Code.FAILED_PRECONDITION, `${field} ${path} ${s ? 'is not a directory' : 'does not exist'}: the CO creates it`, { details: { field, path } });
  }
}

/** The volume's complete staging at `stagingPath`; FAILED_PRECONDITION when it is not staged (there). */
function stagedAt(record: StagedVolumeRecord | undefined, volume: string, stagingPath: string | undefined): StagedVolumeRecord {
  if (!stagingPath) {
    throw new StorageError(Code.FAILED_PRECONDITION, 'staging_target_path is required: this plugin stages volumes (STAGE_UNSTAGE_VOLUME)', { details: { field: 'staging_target_path' } });
  }
  if (!record || record.state !== 'staged' || record.stagingPath !== resolve(stagingPath)) {
    throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume}" is not staged at ${stagingPath}: call NodeStageVolume first`, { details: { volume, stagingPath } });
  }
  return record;
}

/** What a publish of `record` mounts at its target: the staging mount, or the device node. */
async function sourceOf(record: StagedVolumeRecord): Promise<{ path: string; matches: (m: MountEntry) => boolean }> {
  if (record.accessType === 'block') {
    const node = basename(record.devicePath);
    return { path: record.devicePath, matches: (m) => m.root === `/${node}` };
  }
  const staging = await findMount(record.stagingPath);
  if (!staging) throw new StorageError(Code.FAILED_PRECONDITION, `nothing is mounted at staging path ${record.stagingPath}: stage the volume again`, { details: { volume: record.volume } });
  return { path: record.stagingPath, matches: (m) => m.device === staging.device && m.root === staging.root };
}

async function publish(record: StagedVolumeRecord, target: string, readonly: boolean, signal: AbortSignal): Promise<void> {
  const source = await sourceOf(record);
  const existing = await findMount(target);
  if (existing) {
    if (source.matches(existing) && existing.options.includes('ro') === readonly) return;
    throw new StorageError(Code.ALREADY_EXISTS, `${target} already holds another mount, or this volume with other arguments: unpublish it first`,
      { details: { volume: record.volume, targetPath: target } });
  }
  const created = await makeTarget(target, record.accessType === 'block' ? 'file' : 'directory');
  try {
    await bindMount(source.path, target, { readonly, signal });
  } catch (err) {
    if (created) await rm(target, { force: true, recursive: false }).catch(() => undefined);
    throw err;
  }
}

/** Creates the publish target (the SP's job in CSI); whether it did. A target of the wrong kind is FAILED_PRECONDITION. */
async function makeTarget(target: string, kind: 'file' | 'directory'): Promise<boolean> {
  const s = await stat(target).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromNodeError(err, `cannot stat ${target}`, { path: target });
  });
  if (s) {
    if (kind === 'directory' ? s.isDirectory() : !s.isDirectory()) return false;
    throw new StorageError(Code.FAILED_PRECONDITION, `target_path ${target} is a ${s.isDirectory() ? 'directory' : 'file'}; a ${kind} is needed`, { details: { path: target } });
  }
  try {
    if (kind === 'directory') await mkdir(target);
    else await (await open(target, 'wx', 0o600)).close();
  } catch (err) {
    throw fromNodeError(err, `cannot create target_path ${target} (its parent must exist)`, { path: target });
  }
  return true;
}

/** Removes what publish created at `target`: a file, or an empty directory (never what a pod left in it). */
async function removeTarget(target: string): Promise<void> {
  const s = await stat(target).catch(() => undefined);
  if (!s) return;
  await (s.isDirectory() ? rmdir(target) : rm(target)).catch((err: unknown) => { throw fromNodeError(err, `cannot remove ${target}`, { path: target }); });
}

async function volumeStats(o: NodeServiceOptions, volume: string, path: string, signal: AbortSignal): Promise<CsiRequest> {
  const record = o.stager.get(volume);
  if (!record) {
    await o.volumes.get(volume, signal);
    throw new StorageError(Code.NOT_FOUND, `volume "${volume}" is not staged on this node`, { details: { volume, path } });
  }
  const mounted = await findMount(path);
  const atStaging = path === record.stagingPath;
  if (!mounted && !atStaging) throw new StorageError(Code.NOT_FOUND, `volume "${volume}" is not at ${path}`, { details: { volume, path } });
  const usage = record.accessType === 'block'
    ? [{ unit: 'BYTES', total: await blockDeviceBytes(record.devicePath) }]
    : await filesystemUsage(path);
  return { usage, volumeCondition: await condition(o, volume, signal) };
}

async function filesystemUsage(path: string): Promise<CsiRequest[]> {
  const s = await filesystemStats(path);
  return [
    { unit: 'BYTES', total: s.totalBytes, available: s.availableBytes, used: s.usedBytes },
    { unit: 'INODES', total: s.totalInodes, available: s.freeInodes, used: s.usedInodes },
  ];
}

/**
 * The volume's condition as ControllerGetVolume reports it (volume-condition.ts); a volume
 * still staged here that the cluster no longer knows is abnormal too, not NOT_FOUND, so
 * that kubelet's stats of a mounted volume keep answering.
 */
async function condition(o: NodeServiceOptions, volume: string, signal: AbortSignal): Promise<CsiRequest> {
  let view: VolumeView;
  try {
    view = await o.volumes.get(volume, signal);
  } catch (err) {
    if (isStorageError(err, Code.NOT_FOUND)) return { abnormal: true, message: `volume "${volume}" is staged here but no longer exists in the cluster` };
    throw err;
  }
  return volumeCondition(view);
}
