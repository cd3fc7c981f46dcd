/**
 * `--etcd internal`: a three-member etcd StatefulSet in the namespace, one member per node
 * (required pod anti-affinity on the host name), each on a PersistentVolume of the local
 * StorageClass named by --etcd-storage-class, behind a headless Service that gives every
 * member a stable DNS name. Clients and peers speak plain HTTP inside the cluster network;
 * only cairnd pods are meant to reach it (see docs/kubernetes.md).
 */
import type { IStatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import type { IService } from 'kubernetes-models/v1/Service';
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ETCD_NAME, labels, meta, selector } from './meta.js';
import type { SpecOptions } from './options.js';
import { tolerationsAndSelector } from './pod-parts.js';

export const ETCD_MEMBERS = 3;

function etcdService(namespace: string): IService {
  return {
    apiVersion: 'v1', kind: 'Service', metadata: meta(ETCD_NAME, 'etcd', namespace),
    spec: {
      clusterIP: 'None', publishNotReadyAddresses: true, selector: selector('etcd'),
      ports: [{ name: 'client', port: 2379, targetPort: 2379 }, { name: 'peer', port: 2380, targetPort: 2380 }],
    },
  };
}

function etcdCommand(namespace: string): string[] {
  const peer = (i: number) => `${ETCD_NAME}-${i}=http://${ETCD_NAME}-${i}.${ETCD_NAME}.${namespace}.svc:2380`;
  const cluster = Array.from({ length: ETCD_MEMBERS }, (_, i) => peer(i)).join(',');
  const self = `$(POD_NAME).${ETCD_NAME}.${namespace}.svc`;
  return [
    'etcd', '--name=$(POD_NAME)', '--data-dir=/var/lib/etcd', '--listen-client-urls=http://0.0.0.0:2379', `--advertise-client-urls=http://${self}:2379`,
    '--listen-peer-urls=http://0.0.0.0:2380', `--initial-advertise-peer-urls=http://${self}:2380`, `--initial-cluster=${cluster}`,
    '--initial-cluster-state=new', `--initial-cluster-token=cairn-${namespace}`, '--auto-compaction-mode=periodic', '--auto-compaction-retention=1h',
    '--quota-backend-bytes=4294967296', '--listen-metrics-urls=http://0.0.0.0:2381',
  ];
}

function etcdStatefulSet(o: SpecOptions, etcd: Extract<SpecOptions['etcd'], { kind: 'internal' }>): IStatefulSet {
  const probe = { httpGet: { path: '/health', port: 2381 }, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 6 };
  return {
    apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: meta(ETCD_NAME, 'etcd', o.namespace),
    spec: {
      serviceName: ETCD_NAME, replicas: ETCD_MEMBERS, podManagementPolicy: 'Parallel',
      selector: { matchLabels: selector('etcd') },
      template: {
        metadata: { labels: labels('etcd') },
        spec: {
          serviceAccountName: ETCD_NAME, automountServiceAccountToken: false, ...tolerationsAndSelector(o),
          affinity: { podAntiAffinity: { requiredDuringSchedulingIgnoredDuringExecution: [{ topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: selector('etcd') } }] } },
          containers: [{
            name: 'etcd', image: etcd.image, command: etcdCommand(o.namespace),
            env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
            ports: [{ name: 'client', containerPort: 2379 }, { name: 'peer', containerPort: 2380 }, { name: 'metrics', containerPort: 2381 }],
            livenessProbe: probe, startupProbe: { ...probe, failureThreshold: 30 },
            resources: { requests: { cpu: '100m', memory: '256Mi' } },
            volumeMounts: [{ name: 'data', mountPath: '/var/lib/etcd' }],
          }],
        },
      },
      volumeClaimTemplates: [{
        metadata: { name: 'data', labels: labels('etcd') },
        spec: { accessModes: ['ReadWriteOnce'], storageClassName: etcd.storageClass, resources: { requests: { storage: etcd.storageSize } } },
      }],
    },
  };
}

function etcdBudget(namespace: string): IPodDisruptionBudget {
  return { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: meta(ETCD_NAME, 'etcd', namespace), spec: { maxUnavailable: 1, selector: { matchLabels: selector('etcd') } } };
}

/** The internal etcd's objects, or none with an external etcd. */
export function etcdObjects(o: SpecOptions): (IService | IStatefulSet | IPodDisruptionBudget)[] {
  if (o.etcd.kind !== 'internal') return [];
  return [etcdService(o.namespace), etcdStatefulSet(o, o.etcd), etcdBudget(o.namespace)];
}
