/**
 * The Kubernetes names a CSI request carries become log fields (src/csi/kube-log-fields.ts),
 * from the keys the sidecars and kubelet set; absent keys give no field.
 */
import test from 'ava';
import { claimOf, kubeLogFields } from '../../src/csi/kube-log-fields.js';

test('CreateVolume: the provisioner\'s pvc parameters give pvc and namespace, and the claim to keep', (t) => {
  const parameters = { replicas: '3', 'csi.storage.k8s.io/pvc/name': 'data-web-0', 'csi.storage.k8s.io/pvc/namespace': 'shop', 'csi.storage.k8s.io/pv/name': 'pvc-1' };
  t.deepEqual(kubeLogFields({ parameters }), { pvc: 'data-web-0', namespace: 'shop' });
  t.deepEqual(claimOf(parameters), { name: 'data-web-0', namespace: 'shop' });
  t.is(claimOf({ 'csi.storage.k8s.io/pvc/name': 'data-web-0' }), undefined, 'a name without its namespace is no claim');
  t.is(claimOf(undefined), undefined);
});

test('CreateSnapshot: the snapshotter\'s parameters give volumeSnapshot and namespace', (t) => {
  const parameters = { 'csi.storage.k8s.io/volumesnapshot/name': 'nightly', 'csi.storage.k8s.io/volumesnapshot/namespace': 'shop', 'csi.storage.k8s.io/volumesnapshotcontent/name': 'snapcontent-1' };
  t.deepEqual(kubeLogFields({ parameters }), { volumeSnapshot: 'nightly', namespace: 'shop' });
});

test('later calls: the volume context gives the claim, and NodePublish\'s pod info the pod', (t) => {
  t.deepEqual(kubeLogFields({ volumeContext: { replicas: '1', pvcName: 'data-web-0', pvcNamespace: 'shop' } }), { pvc: 'data-web-0', namespace: 'shop' });
  t.deepEqual(kubeLogFields({ volumeContext: { 'csi.storage.k8s.io/pod.name': 'web-0', 'csi.storage.k8s.io/pod.namespace': 'shop' } }), { pod: 'web-0', namespace: 'shop' });
  t.deepEqual(kubeLogFields({}), {});
  t.deepEqual(kubeLogFields({ volumeContext: { pvcName: '' } }), {}, 'an empty value is no field');
});
