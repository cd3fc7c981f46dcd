/**
 * The Kubernetes names a CSI request carries, as log fields, so that an operator can find
 * the lines of one PersistentVolumeClaim, VolumeSnapshot or Pod in `kubectl logs`:
 *
 * - CreateVolume's parameters, from external-provisioner with --extra-create-metadata:
 *   `csi.storage.k8s.io/pvc/name` and `pvc/namespace` (→ `pvc`, `namespace`);
 * - CreateSnapshot's parameters, from external-snapshotter with --extra-create-metadata:
 *   `csi.storage.k8s.io/volumesnapshot/name` and `volumesnapshot/namespace`
 *   (→ `volumeSnapshot`, `namespace`);
 * - the volume_context every later call of a volume gets (ControllerPublish, NodeStage,
 *   NodePublish): Cairn's own `pvcName`/`pvcNamespace`, which CreateVolume put there from the
 *   above, and on NodePublish kubelet's `csi.storage.k8s.io/pod.name`/`pod.namespace`
 *   (CSIDriver podInfoOnMount) (→ `pod`, `namespace`).
 */
const K8S = 'csi.storage.k8s.io/';
/** The volume_context keys of a volume's claim, set by CreateVolume (controller-volume.ts). */
export const PVC_NAME_CONTEXT_KEY = 'pvcName';
export const PVC_NAMESPACE_CONTEXT_KEY = 'pvcNamespace';

export interface KubeLogFields {
  pvc?: string;
  namespace?: string;
  volumeSnapshot?: string;
  pod?: string;
}

/** The PersistentVolumeClaim CreateVolume is for, when the provisioner said. */
export function claimOf(parameters: Record<string, string> | undefined): { name: string; namespace: string } | undefined {
  const name = parameters?.[`${K8S}pvc/name`];
  const namespace = parameters?.[`${K8S}pvc/namespace`];
  return name && namespace ? { name, namespace } : undefined;
}

/** The fields of `request` (see the file comment); only those present. */
export function kubeLogFields(request: { parameters?: Record<string, string>; volumeContext?: Record<string, string> }): KubeLogFields {
  const params = request.parameters ?? {};
  const context = request.volumeContext ?? {};
  const fields: KubeLogFields = {
    pvc: params[`${K8S}pvc/name`] || context[PVC_NAME_CONTEXT_KEY],
    volumeSnapshot: params[`${K8S}volumesnapshot/name`],
    pod: context[`${K8S}pod.name`],
    namespace: params[`${K8S}pvc/namespace`] || params[`${K8S}volumesnapshot/namespace`] || context[PVC_NAMESPACE_CONTEXT_KEY] || context[`${K8S}pod.namespace`],
  };
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => typeof v === 'string' && v !== '')) as KubeLogFields;
}
