/**
 * The controller Deployment: `cairnd --role controller` (the CSI Controller over etcd, no
 * data plane) with the external-provisioner, -attacher, -resizer and (with snapshots)
 * -snapshotter beside it on one CSI socket. Two replicas; each sidecar elects a leader
 * through a Lease in the namespace, so one pod acts and the other stands by.
 */
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IContainer } from 'kubernetes-models/v1/Container';
import { DEFAULT_HTTP_PORT } from '../../common/settings.js';
import { CONTROLLER_NAME, labels, meta, selector } from './meta.js';
import type { SpecOptions } from './options.js';
import { etcdEndpoints, flag, peerInitContainer, peerTlsFlags, POD_ENV, RUN_MOUNT, sharedVolumes, tolerationsAndSelector } from './pod-parts.js';
import { SIDECAR_HTTP_PORTS, type SidecarName } from './sidecars.js';

const SOCKET = { name: 'socket-dir', mountPath: '/csi' };

function cairndController(o: SpecOptions): IContainer {
  const probe = (path: string) => ({ httpGet: { path, port: 'http' }, periodSeconds: 10, timeoutSeconds: 3, failureThreshold: 6 });
  return {
    name: 'cairnd', image: o.image, command: ['cairnd'],
    args: [
      flag('role', 'controller'), flag('nodeName', '$(POD_NAME)'), flag('dataDir', '/var/lib/cairn'), flag('csiSocket', '/csi/csi.sock'),
      flag('httpListen', `0.0.0.0:${DEFAULT_HTTP_PORT}`), flag('etcdEndpoints', etcdEndpoints(o)), flag('defaultReplicas', o.defaultReplicas),
      flag('logFormat', 'json'), ...peerTlsFlags(o),
    ],
    env: POD_ENV,
    ports: [{ name: 'http', containerPort: DEFAULT_HTTP_PORT, protocol: 'TCP' }],
    readinessProbe: probe('/readyz'), livenessProbe: probe('/healthz'),
    resources: { requests: { cpu: '100m', memory: '256Mi' } },
    volumeMounts: [SOCKET, RUN_MOUNT, { name: 'data', mountPath: '/var/lib/cairn' }],
  };
}

function sidecar(o: SpecOptions, name: SidecarName, container: string, extra: string[]): IContainer {
  const port = SIDECAR_HTTP_PORTS[name];
  return {
    name: container, image: o.sidecars[name],
    args: ['--csi-address=/csi/csi.sock', '--leader-election', `--leader-election-namespace=${o.namespace}`, '--timeout=60s', `--http-endpoint=:${port}`, ...extra],
    ports: [{ name: `${name.slice(0, 11)}-http`, containerPort: port, protocol: 'TCP' }],
    resources: { requests: { cpu: '10m', memory: '64Mi' } },
    volumeMounts: [SOCKET],
  };
}

function sidecars(o: SpecOptions): IContainer[] {
  return [
    sidecar(o, 'provisioner', 'csi-provisioner', ['--feature-gates=Topology=true', '--extra-create-metadata', '--default-fstype=ext4']),
    sidecar(o, 'attacher', 'csi-attacher', []),
    sidecar(o, 'resizer', 'csi-resizer', []),
    ...(o.snapshots ? [sidecar(o, 'snapshotter', 'csi-snapshotter', ['--extra-create-metadata', ...(o.groupSnapshots ? ['--feature-gates=CSIVolumeGroupSnapshot=true'] : [])])] : []),
  ];
}

export function controllerDeployment(o: SpecOptions): IDeployment {
  return {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta(CONTROLLER_NAME, 'controller', o.namespace),
    spec: {
      replicas: 2,
      selector: { matchLabels: selector('controller') },
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } },
      template: {
        metadata: { labels: labels('controller') },
        spec: {
          serviceAccountName: CONTROLLER_NAME, priorityClassName: 'system-cluster-critical',
          ...tolerationsAndSelector(o),
          affinity: {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: selector('controller') } } }],
            },
          },
          initContainers: [peerInitContainer(o, '$(POD_NAME)', '')],
          containers: [cairndController(o), ...sidecars(o)],
          volumes: [...sharedVolumes(o), { name: 'socket-dir', emptyDir: {} }, { name: 'data', emptyDir: {} }],
        },
      },
    },
  };
}
