/** Branded id types: a VolumeId cannot be passed where a DeviceId is expected. */
import { randomUUID } from 'node:crypto';
import { Code, StorageError } from './errors.js';

declare const brand: unique symbol;
export type Brand<T, B extends string> = T & { readonly [brand]: B };

export type VolumeId = Brand<string, 'VolumeId'>;
export type ReplicaId = Brand<string, 'ReplicaId'>;
export type SnapshotId = Brand<string, 'SnapshotId'>;
/** A pool device: one replica or one snapshot of one, as the pool backend names it. */
export type DeviceId = Brand<string, 'DeviceId'>;
export type NodeId = Brand<string, 'NodeId'>;

export function newVolumeId(): VolumeId {
  return `vol-${randomUUID()}` as VolumeId;
}
export function newReplicaId(): ReplicaId {
  return `rep-${randomUUID()}` as ReplicaId;
}
export function newSnapshotId(): SnapshotId {
  return `snap-${randomUUID()}` as SnapshotId;
}

/** Names people give volumes and snapshots: DNS-label-like, as Kubernetes names are. */
const NAME_RE = /^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$/;

export function validateName(kind: string, name: string): string {
  if (!NAME_RE.test(name)) {
    throw new StorageError(
      Code.INVALID_ARGUMENT,
      `${kind} name "${name}" is not valid: use 1-253 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit`,
    );
  }
  return name;
}

/** Device ids become file names and dm device names: keep them to a safe alphabet. */
const DEVICE_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$/;

export function asDeviceId(text: string): DeviceId {
  if (!DEVICE_RE.test(text)) throw new StorageError(Code.INVALID_ARGUMENT, `"${text}" is not a valid device id`);
  return text as DeviceId;
}
