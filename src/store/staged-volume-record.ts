/**
 * The node store's record of a volume staged on this node (CSI NodeStageVolume, migration
 * 4): what was asked for, what was made (the kernel device and how it is attached) and how
 * far the stager got. The stager (src/engine/stager.ts) writes it before each step.
 */
import type { VolumeId } from '../common/ids.js';

export type StagedState = 'staging' | 'staged' | 'unstaging';
export type StagedAccessType = 'block' | 'mount';

export interface StagedVolumeRecord {
  /** The volume's name (the CSI volume id). */
  volume: string;
  volumeId: VolumeId;
  stagingPath: string;
  accessType: StagedAccessType;
  /** '' for a block volume. */
  fsType: string;
  mountFlags: string[];
  readonly: boolean;
  /** '' until the device is attached. */
  devicePath: string;
  /** 'nbd' | 'nbdfuse-loop', '' until attached. */
  attachMethod: string;
  /** What the attach method needs to find its pieces again after a restart (pids, dirs). */
  attachState: Record<string, unknown>;
  state: StagedState;
  updatedAt: string;
}

export interface StagedVolumeRow {
  volume: string; volume_id: string; staging_path: string; access_type: StagedAccessType; fs_type: string; mount_flags: string;
  readonly: number; device_path: string; attach_method: string; attach_state: string; state: StagedState; updated_at: string;
}

export function toStagedVolume(r: StagedVolumeRow): StagedVolumeRecord {
  return {
    volume: r.volume, volumeId: r.volume_id as VolumeId, stagingPath: r.staging_path, accessType: r.access_type, fsType: r.fs_type,
    mountFlags: JSON.parse(r.mount_flags) as string[], readonly: r.readonly !== 0, devicePath: r.device_path, attachMethod: r.attach_method,
    attachState: JSON.parse(r.attach_state) as Record<string, unknown>, state: r.state, updatedAt: r.updated_at,
  };
}

/** The row's values in the column order of STAGED_COLUMNS. */
export function stagedVolumeValues(r: StagedVolumeRecord): unknown[] {
  return [r.volume, r.volumeId, r.stagingPath, r.accessType, r.fsType, JSON.stringify(r.mountFlags), r.readonly ? 1 : 0, r.devicePath,
    r.attachMethod, JSON.stringify(r.attachState), r.state, r.updatedAt];
}

export const STAGED_COLUMNS = 'volume, volume_id, staging_path, access_type, fs_type, mount_flags, readonly, device_path, attach_method, attach_state, state, updated_at';
