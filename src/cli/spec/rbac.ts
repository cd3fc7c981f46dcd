/**
 * ServiceAccounts, ClusterRoles, Roles and their bindings: one role per component, each
 * with what that component's calls need and nothing more.
 * - cairn-node (cairnd --role node): nodes get (its start step reads the node's zone label);
 *   with snapshots, pods get/list and pods/exec create+get for snapshot-rule exec actions
 *   (docs/snapshots.md). kubelet registers the driver; the registrar needs no API access.
 * - cairn-controller (cairnd --role controller talks only to etcd): the roles of the
 *   sidecars in its pod, one ClusterRole each as their own deploy files split them, and a
 *   Role for leader-election Leases in the namespace.
 * - cairn-peer-ca-bootstrap: create the peer CA Secret, and get only that Secret.
 * - cairn-etcd: no API access at all.
 */
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import type { IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import type { IPolicyRule } from 'kubernetes-models/rbac.authorization.k8s.io/v1/PolicyRule';
import type { IRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import type { IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { CA_BOOTSTRAP_NAME, CONTROLLER_NAME, ETCD_NAME, meta, NODE_NAME, type Component, type SpecObject } from './meta.js';
import type { SpecOptions } from './options.js';

const READ = ['get', 'list', 'watch'];
const EVENTS: IPolicyRule = { apiGroups: [''], resources: ['events'], verbs: ['list', 'watch', 'create', 'update', 'patch'] };
const SNAPSHOT_GROUP = 'snapshot.storage.k8s.io';
const GROUP_SNAPSHOT_GROUP = 'groupsnapshot.storage.k8s.io';

function provisionerRules(o: SpecOptions): IPolicyRule[] {
  return [
    { apiGroups: [''], resources: ['persistentvolumes'], verbs: [...READ, 'create', 'update', 'patch', 'delete'] },
    { apiGroups: [''], resources: ['persistentvolumeclaims'], verbs: [...READ, 'update'] },
    { apiGroups: ['storage.k8s.io'], resources: ['storageclasses', 'csinodes', 'volumeattributesclasses'], verbs: READ },
    { apiGroups: [''], resources: ['nodes'], verbs: READ },
    { apiGroups: ['storage.k8s.io'], resources: ['volumeattachments'], verbs: READ },
    EVENTS,
    ...(o.snapshots ? [{ apiGroups: [SNAPSHOT_GROUP], resources: ['volumesnapshots', 'volumesnapshotcontents'], verbs: ['get', 'list'] }] : []),
  ];
}

const ATTACHER_RULES: IPolicyRule[] = [
  { apiGroups: [''], resources: ['persistentvolumes'], verbs: [...READ, 'patch'] },
  { apiGroups: ['storage.k8s.io'], resources: ['csinodes'], verbs: READ },
  { apiGroups: ['storage.k8s.io'], resources: ['volumeattachments'], verbs: [...READ, 'patch'] },
  { apiGroups: ['storage.k8s.io'], resources: ['volumeattachments/status'], verbs: ['patch'] },
];

const RESIZER_RULES: IPolicyRule[] = [
  { apiGroups: [''], resources: ['persistentvolumes'], verbs: [...READ, 'patch'] },
  { apiGroups: [''], resources: ['persistentvolumeclaims'], verbs: READ },
  { apiGroups: [''], resources: ['persistentvolumeclaims/status'], verbs: ['patch'] },
  { apiGroups: [''], resources: ['pods'], verbs: READ },
  { apiGroups: ['storage.k8s.io'], resources: ['volumeattributesclasses'], verbs: READ },
  EVENTS,
];

function snapshotterRules(o: SpecOptions): IPolicyRule[] {
  return [
    EVENTS,
    { apiGroups: [SNAPSHOT_GROUP], resources: ['volumesnapshotclasses'], verbs: READ },
    { apiGroups: [SNAPSHOT_GROUP], resources: ['volumesnapshotcontents'], verbs: [...READ, 'update', 'patch', ...(o.groupSnapshots ? ['create', 'delete'] : [])] },
    { apiGroups: [SNAPSHOT_GROUP], resources: ['volumesnapshotcontents/status'], verbs: ['update', 'patch'] },
    ...(o.groupSnapshots ? [
      { apiGroups: [GROUP_SNAPSHOT_GROUP], resources: ['volumegroupsnapshotclasses'], verbs: READ },
      { apiGroups: [GROUP_SNAPSHOT_GROUP], resources: ['volumegroupsnapshotcontents'], verbs: [...READ, 'update', 'patch'] },
      { apiGroups: [GROUP_SNAPSHOT_GROUP], resources: ['volumegroupsnapshotcontents/status'], verbs: ['update', 'patch'] },
    ] : []),
  ];
}

function nodeRules(o: SpecOptions): IPolicyRule[] {
  return [
    { apiGroups: [''], resources: ['nodes'], verbs: ['get'] },
    ...(o.snapshots ? [
      { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list'] },
      { apiGroups: [''], resources: ['pods/exec'], verbs: ['create', 'get'] },
    ] : []),
  ];
}

function serviceAccount(name: string, component: Component, namespace: string): IServiceAccount {
  return { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(name, component, namespace) };
}

function clusterRole(name: string, component: Component, rules: IPolicyRule[]): IClusterRole {
  return { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: meta(name, component), rules };
}

function clusterBinding(name: string, component: Component, account: string, namespace: string): IClusterRoleBinding {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: meta(name, component),
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name }, subjects: [{ kind: 'ServiceAccount', name: account, namespace }],
  };
}

function roleBinding(name: string, component: Component, account: string, namespace: string): IRoleBinding {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', metadata: meta(name, component, namespace),
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name }, subjects: [{ kind: 'ServiceAccount', name: account, namespace }],
  };
}

function role(name: string, component: Component, namespace: string, rules: IPolicyRule[]): IRole {
  return { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: meta(name, component, namespace), rules };
}

/** The controller's sidecars: the ClusterRole name and rules of each that is deployed. */
function controllerRoles(o: SpecOptions): [string, IPolicyRule[]][] {
  return [
    ['cairn-provisioner', provisionerRules(o)], ['cairn-attacher', ATTACHER_RULES], ['cairn-resizer', RESIZER_RULES],
    ...(o.snapshots ? [['cairn-snapshotter', snapshotterRules(o)] as [string, IPolicyRule[]]] : []),
  ];
}

export function serviceAccounts(o: SpecOptions): SpecObject[] {
  const ns = o.namespace;
  return [
    serviceAccount(NODE_NAME, 'node', ns), serviceAccount(CONTROLLER_NAME, 'controller', ns),
    ...(o.etcd.kind === 'internal' ? [{ ...serviceAccount(ETCD_NAME, 'etcd', ns), automountServiceAccountToken: false }] : []),
    ...(o.peerTls === 'bootstrap' ? [serviceAccount(CA_BOOTSTRAP_NAME, 'peer-ca', ns)] : []),
  ];
}

export function rbacObjects(o: SpecOptions): SpecObject[] {
  const ns = o.namespace;
  const out: SpecObject[] = [clusterRole(NODE_NAME, 'node', nodeRules(o)), clusterBinding(NODE_NAME, 'node', NODE_NAME, ns)];
  for (const [name, rules] of controllerRoles(o)) out.push(clusterRole(name, 'controller', rules), clusterBinding(name, 'controller', CONTROLLER_NAME, ns));
  const leases: IPolicyRule = { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: [...READ, 'create', 'update', 'patch', 'delete'] };
  out.push(role('cairn-leader-election', 'controller', ns, [leases]), roleBinding('cairn-leader-election', 'controller', CONTROLLER_NAME, ns));
  if (o.peerTls === 'bootstrap') {
    out.push(role(CA_BOOTSTRAP_NAME, 'peer-ca', ns, [
      { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
      { apiGroups: [''], resources: ['secrets'], verbs: ['get'], resourceNames: [o.peerCaSecret] },
    ]), roleBinding(CA_BOOTSTRAP_NAME, 'peer-ca', CA_BOOTSTRAP_NAME, ns));
  }
  return out;
}
