/**
 * The node DaemonSet: privileged `cairnd --role node` (data plane, CSI Node) on every
 * selected node, with node-driver-registrar and livenessprobe beside it. kubelet dials the
 * CSI socket in its plugins directory; staging and publish mounts made in the container
 * reach the host through Bidirectional propagation. Probes and metrics are served on the
 * pod's address (0.0.0.0), peers dial the pod IP on 9471 (control) and 9472 (data).
 */
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IVolume } from 'kubernetes-models/v1/Volume';
import type { IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { DEFAULT_DATA_PORT, DEFAULT_HTTP_PORT, DEFAULT_PEER_PORT } from '../../common/settings.js';
import { DRIVER_NAME, labels, meta, NODE_NAME, selector } from './meta.js';
import type { SpecOptions } from './options.js';
import { etcdEndpoints, flag, peerInitContainer, peerTlsFlags, POD_ENV, RUN_MOUNT, SCRIPTS_MOUNT, sharedVolumes, tolerationsAndSelector } from './pod-parts.js';
import { SCRIPTS_DIR } from './scripts.js';
import { SIDECAR_HTTP_PORTS } from './sidecars.js';

const DATA_DIR = '/var/lib/cairn';
const SHUTDOWN_TIMEOUT_MS = 30_000;
/**
 * What kubelet's grace period leaves the preStop drain (GET /drain: flush every engine, stage
 * nothing new) before SIGTERM; the period covers the drain, cairnd's own shutdown, and a margin.
 */
const DRAIN_BUDGET_S = 30;

function hostPath(name: string, path: string, type: 'Directory' | 'DirectoryOrCreate'): IVolume {
  return { name, hostPath: { path, type } };
}

function nodeArgs(o: SpecOptions): string[] {
  const pool = o.pool.kind === 'devices' ? [flag('poolBackend', 'dm'), flag('poolDevices', o.pool.devices.join(','))] : o.pool.kind === 'glob' ? [flag('poolBackend', 'dm')] : [];
  return [
    flag('role', 'node'), flag('nodeName', '$(NODE_NAME)'), flag('dataDir', DATA_DIR), flag('csiSocket', '/csi/csi.sock'),
    flag('httpListen', `0.0.0.0:${DEFAULT_HTTP_PORT}`), flag('peerListen', `0.0.0.0:${DEFAULT_PEER_PORT}`), flag('dataListen', `0.0.0.0:${DEFAULT_DATA_PORT}`),
    flag('peerAddress', `$(POD_IP):${DEFAULT_PEER_PORT}`), flag('etcdEndpoints', etcdEndpoints(o)), flag('defaultReplicas', o.defaultReplicas),
    flag('logFormat', 'json'), flag('shutdownTimeoutMs', SHUTDOWN_TIMEOUT_MS), ...pool, ...peerTlsFlags(o),
  ];
}

function cairndContainer(o: SpecOptions): IContainer {
  const kubelet = o.kubeletDir;
  const probe = (path: string, period: number, failures: number) => ({ httpGet: { path, port: 'http' }, periodSeconds: period, failureThreshold: failures, timeoutSeconds: 3 });
  return {
    name: 'cairnd', image: o.image, command: ['sh', `${SCRIPTS_DIR}/node-start.sh`], args: nodeArgs(o),
    env: [...POD_ENV, ...(o.pool.kind === 'glob' ? [{ name: 'POOL_DEVICE_GLOB', value: o.pool.glob }] : [])],
    securityContext: { privileged: true },
    ports: [
      { name: 'http', containerPort: DEFAULT_HTTP_PORT, protocol: 'TCP' }, { name: 'peer', containerPort: DEFAULT_PEER_PORT, protocol: 'TCP' },
      { name: 'peer-data', containerPort: DEFAULT_DATA_PORT, protocol: 'TCP' },
    ],
    readinessProbe: probe('/readyz', 5, 3),
    livenessProbe: probe('/healthz', 10, 6),
    startupProbe: probe('/healthz', 5, 60),
    lifecycle: { preStop: { httpGet: { path: '/drain', port: 'http' } } },
    resources: { requests: { cpu: '250m', memory: '512Mi' } },
    volumeMounts: [
      SCRIPTS_MOUNT, RUN_MOUNT, { name: 'socket-dir', mountPath: '/csi' },
      { name: 'kubelet-plugins', mountPath: `${kubelet}/plugins`, mountPropagation: 'Bidirectional' },
      { name: 'kubelet-pods', mountPath: `${kubelet}/pods`, mountPropagation: 'Bidirectional' },
      { name: 'data', mountPath: DATA_DIR, mountPropagation: 'Bidirectional' },
      { name: 'dev', mountPath: '/dev' }, { name: 'sys', mountPath: '/sys' }, { name: 'lib-modules', mountPath: '/lib/modules', readOnly: true },
    ],
  };
}

function registrarContainer(o: SpecOptions): IContainer {
  const port = SIDECAR_HTTP_PORTS.registrar;
  return {
    name: 'node-driver-registrar', image: o.sidecars.registrar,
    args: ['--csi-address=/csi/csi.sock', `--kubelet-registration-path=${o.kubeletDir}/plugins/${DRIVER_NAME}/csi.sock`, `--http-endpoint=:${port}`],
    ports: [{ name: 'registrar', containerPort: port, protocol: 'TCP' }],
    livenessProbe: { httpGet: { path: '/healthz', port: 'registrar' }, periodSeconds: 10, timeoutSeconds: 3 },
    resources: { requests: { cpu: '10m', memory: '32Mi' } },
    volumeMounts: [{ name: 'socket-dir', mountPath: '/csi' }, { name: 'registration-dir', mountPath: '/registration' }],
  };
}

function livenessContainer(o: SpecOptions): IContainer {
  const port = SIDECAR_HTTP_PORTS.livenessprobe;
  return {
    name: 'liveness-probe', image: o.sidecars.livenessprobe, args: ['--csi-address=/csi/csi.sock', `--http-endpoint=:${port}`],
    ports: [{ name: 'csi-health', containerPort: port, protocol: 'TCP' }],
    resources: { requests: { cpu: '10m', memory: '32Mi' } },
    volumeMounts: [{ name: 'socket-dir', mountPath: '/csi' }],
  };
}

export function nodeDaemonSet(o: SpecOptions): IDaemonSet {
  const kubelet = o.kubeletDir;
  return {
    apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: meta(NODE_NAME, 'node', o.namespace),
    spec: {
      selector: { matchLabels: selector('node') },
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } },
      template: {
        metadata: { labels: labels('node') },
        spec: {
          serviceAccountName: NODE_NAME, priorityClassName: 'system-node-critical',
          terminationGracePeriodSeconds: DRAIN_BUDGET_S + SHUTDOWN_TIMEOUT_MS / 1000 + 15,
          ...tolerationsAndSelector(o),
          initContainers: [peerInitContainer(o, '$(NODE_NAME)', o.zoneLabel)],
          containers: [cairndContainer(o), registrarContainer(o), livenessContainer(o)],
          volumes: [
            ...sharedVolumes(o),
            hostPath('socket-dir', `${kubelet}/plugins/${DRIVER_NAME}`, 'DirectoryOrCreate'), hostPath('registration-dir', `${kubelet}/plugins_registry`, 'Directory'),
            hostPath('kubelet-plugins', `${kubelet}/plugins`, 'Directory'), hostPath('kubelet-pods', `${kubelet}/pods`, 'Directory'),
            hostPath('data', '/var/lib/cairn', 'DirectoryOrCreate'), hostPath('dev', '/dev', 'Directory'), hostPath('sys', '/sys', 'Directory'),
            hostPath('lib-modules', '/lib/modules', 'Directory'),
          ],
        },
      },
    },
  };
}

