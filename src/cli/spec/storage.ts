/**
 * The storage API objects: the CSIDriver, the StorageClasses `cairn-r1` and `cairn-r3`
 * (the default), a VolumeAttributesClass example, and with snapshots the
 * VolumeSnapshotClass, the SnapshotRule CRD (deploy/crds/) and, with group snapshots, the
 * VolumeGroupSnapshotClass. The StorageClass parameters are the ones the CSI Controller
 * accepts (src/csi/controller-params.ts: replicas, fsType, zones).
 */
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import type { ICustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition';
import type { ICSIDriver } from 'kubernetes-models/storage.k8s.io/v1/CSIDriver';
import type { IStorageClass } from 'kubernetes-models/storage.k8s.io/v1/StorageClass';
import type { IVolumeAttributesClass } from 'kubernetes-models/storage.k8s.io/v1/VolumeAttributesClass';
import { DRIVER_NAME, meta, type IObjectMeta } from './meta.js';
import type { SpecOptions } from './options.js';

/** snapshot.storage.k8s.io/v1 VolumeSnapshotClass (a CRD of external-snapshotter). */
export interface VolumeSnapshotClass { apiVersion: 'snapshot.storage.k8s.io/v1'; kind: 'VolumeSnapshotClass'; metadata: IObjectMeta; driver: string; deletionPolicy: 'Delete' | 'Retain' }
/** groupsnapshot.storage.k8s.io/v1beta2 VolumeGroupSnapshotClass (a CRD of external-snapshotter 8.4+). */
export interface VolumeGroupSnapshotClass { apiVersion: 'groupsnapshot.storage.k8s.io/v1beta2'; kind: 'VolumeGroupSnapshotClass'; metadata: IObjectMeta; driver: string; deletionPolicy: 'Delete' | 'Retain' }

const DEFAULT_CLASS = { 'storageclass.kubernetes.io/is-default-class': 'true' };
export const SNAPSHOT_RULE_CRD = new URL('../../../deploy/crds/snapshotrules.cairn.dev.yaml', import.meta.url);

export function csiDriver(): ICSIDriver {
  return {
    apiVersion: 'storage.k8s.io/v1', kind: 'CSIDriver', metadata: meta(DRIVER_NAME, 'driver'),
    spec: { attachRequired: true, podInfoOnMount: true, fsGroupPolicy: 'File', volumeLifecycleModes: ['Persistent'], storageCapacity: false, requiresRepublish: false },
  };
}

function storageClass(name: string, replicas: number, isDefault: boolean): IStorageClass {
  return {
    apiVersion: 'storage.k8s.io/v1', kind: 'StorageClass',
    metadata: { ...meta(name, 'driver'), ...(isDefault ? { annotations: DEFAULT_CLASS } : {}) },
    provisioner: DRIVER_NAME, parameters: { replicas: String(replicas), fsType: 'ext4' },
    reclaimPolicy: 'Delete', volumeBindingMode: 'WaitForFirstConsumer', allowVolumeExpansion: true,
  };
}

/** An example class for changing a volume's replica count in place (ControllerModifyVolume's mutable `replicas`). */
function attributesClass(): IVolumeAttributesClass {
  return { apiVersion: 'storage.k8s.io/v1', kind: 'VolumeAttributesClass', metadata: meta('cairn-replicas-2', 'driver'), driverName: DRIVER_NAME, parameters: { replicas: '2' } };
}

function snapshotRuleCrd(): ICustomResourceDefinition {
  return parse(readFileSync(SNAPSHOT_RULE_CRD, 'utf8')) as ICustomResourceDefinition;
}

export function storageObjects(o: SpecOptions): (ICSIDriver | IStorageClass | IVolumeAttributesClass | VolumeSnapshotClass | VolumeGroupSnapshotClass)[] {
  return [
    csiDriver(), storageClass('cairn-r1', 1, false), storageClass('cairn-r3', 3, true), attributesClass(),
    ...(o.snapshots ? [{ apiVersion: 'snapshot.storage.k8s.io/v1', kind: 'VolumeSnapshotClass', metadata: meta('cairn-snapshot', 'driver'), driver: DRIVER_NAME, deletionPolicy: 'Delete' } as const] : []),
    ...(o.groupSnapshots ? [{ apiVersion: 'groupsnapshot.storage.k8s.io/v1beta2', kind: 'VolumeGroupSnapshotClass', metadata: meta('cairn-group-snapshot', 'driver'), driver: DRIVER_NAME, deletionPolicy: 'Delete' } as const] : []),
  ];
}

/** The CRDs Cairn brings: the SnapshotRule CRD with snapshots on. */
export function crdObjects(o: SpecOptions): ICustomResourceDefinition[] {
  return o.snapshots ? [snapshotRuleCrd()] : [];
}
