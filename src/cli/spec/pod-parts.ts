/**
 * Pieces the node and controller pods share: the downward-API environment, the peer-init
 * container that issues the pod's peer certificate, the volumes it uses, and cairnd's peer
 * TLS flags. Flag names come from the settings table (common/settings.ts), so a renamed
 * setting breaks the generator's build rather than the cluster.
 */
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IEnvVar } from 'kubernetes-models/v1/EnvVar';
import type { IVolume } from 'kubernetes-models/v1/Volume';
import type { IVolumeMount } from 'kubernetes-models/v1/VolumeMount';
import { flagName, type SettingKey } from '../../common/settings.js';
import { SCRIPTS_NAME } from './meta.js';
import type { SpecOptions } from './options.js';
import { CA_MOUNT, RUN_DIR, SCRIPTS_DIR } from './scripts.js';

/** `--flag=value` for a cairnd setting. */
export function flag(key: SettingKey, value: string | number): string {
  return `${flagName(key)}=${value}`;
}

function fieldEnv(name: string, fieldPath: string): IEnvVar {
  return { name, valueFrom: { fieldRef: { fieldPath } } };
}

export const POD_ENV: IEnvVar[] = [
  fieldEnv('NODE_NAME', 'spec.nodeName'), fieldEnv('POD_NAME', 'metadata.name'), fieldEnv('POD_NAMESPACE', 'metadata.namespace'), fieldEnv('POD_IP', 'status.podIP'),
];

export const SCRIPTS_MOUNT: IVolumeMount = { name: 'scripts', mountPath: SCRIPTS_DIR, readOnly: true };
export const RUN_MOUNT: IVolumeMount = { name: 'run', mountPath: RUN_DIR };

export function sharedVolumes(o: SpecOptions): IVolume[] {
  return [
    { name: 'scripts', configMap: { name: SCRIPTS_NAME, defaultMode: 0o555 } },
    { name: 'run', emptyDir: { medium: 'Memory' } },
    ...(o.peerTls === 'insecure' ? [] : [{ name: 'peer-ca', secret: { secretName: o.peerCaSecret, defaultMode: 0o400 } }]),
  ];
}

/** The init container: the pod's peer certificate for its IP and `certName`, and (node pods) the node's zone. */
export function peerInitContainer(o: SpecOptions, certName: string, zoneLabel: string): IContainer {
  return {
    name: 'peer-init', image: o.image, command: ['sh', `${SCRIPTS_DIR}/peer-init.sh`],
    env: [...POD_ENV, { name: 'CERT_NAME', value: certName }, { name: 'ZONE_LABEL', value: zoneLabel }, { name: 'PEER_TLS', value: o.peerTls }],
    volumeMounts: [SCRIPTS_MOUNT, RUN_MOUNT, ...(o.peerTls === 'insecure' ? [] : [{ name: 'peer-ca', mountPath: CA_MOUNT, readOnly: true }])],
    resources: { requests: { cpu: '10m', memory: '32Mi' } },
  };
}

/** cairnd's peer TLS flags: the files peer-init.sh wrote, or plaintext when asked for. */
export function peerTlsFlags(o: SpecOptions): string[] {
  if (o.peerTls === 'insecure') return [flagName('peerInsecure')];
  return [flag('peerTlsCa', `${RUN_DIR}/ca.crt`), flag('peerTlsCert', `${RUN_DIR}/peer.crt`), flag('peerTlsKey', `${RUN_DIR}/peer.key`)];
}

/** The etcd client URLs cairnd is given: the external ones, or the internal StatefulSet's members. */
export function etcdEndpoints(o: SpecOptions): string {
  if (o.etcd.kind === 'external') return o.etcd.endpoints.join(',');
  return [0, 1, 2].map((i) => `http://cairn-etcd-${i}.cairn-etcd.${o.namespace}.svc:2379`).join(',');
}

export function tolerationsAndSelector(o: SpecOptions): { nodeSelector?: Record<string, string>; tolerations?: SpecOptions['tolerations'] } {
  return {
    ...(Object.keys(o.nodeSelector).length > 0 ? { nodeSelector: o.nodeSelector } : {}),
    ...(o.tolerations.length > 0 ? { tolerations: o.tolerations } : {}),
  };
}
