/**
 * Peer TLS mode `bootstrap`: a Job that creates the cluster's peer CA (a kubernetes.io/tls
 * Secret) unless it exists. Node and controller pods mount that Secret into their
 * peer-init container, which issues each pod a certificate for its IP and name; until the
 * Job has run, those pods wait in ContainerCreating for the Secret.
 */
import type { IJob } from 'kubernetes-models/batch/v1/Job';
import { CA_BOOTSTRAP_NAME, labels, meta } from './meta.js';
import type { SpecOptions } from './options.js';
import { POD_ENV, SCRIPTS_MOUNT, tolerationsAndSelector } from './pod-parts.js';
import { SCRIPTS_DIR } from './scripts.js';

export function peerCaJob(o: SpecOptions): IJob[] {
  if (o.peerTls !== 'bootstrap') return [];
  return [{
    apiVersion: 'batch/v1', kind: 'Job', metadata: meta(CA_BOOTSTRAP_NAME, 'peer-ca', o.namespace),
    spec: {
      backoffLimit: 6, ttlSecondsAfterFinished: 86_400,
      template: {
        metadata: { labels: labels('peer-ca') },
        spec: {
          serviceAccountName: CA_BOOTSTRAP_NAME, restartPolicy: 'OnFailure', ...tolerationsAndSelector(o),
          containers: [{
            name: 'ca-bootstrap', image: o.image, command: ['sh', `${SCRIPTS_DIR}/ca-bootstrap.sh`],
            env: [...POD_ENV, { name: 'CA_SECRET', value: o.peerCaSecret }],
            resources: { requests: { cpu: '10m', memory: '32Mi' } },
            volumeMounts: [SCRIPTS_MOUNT],
          }],
          volumes: [{ name: 'scripts', configMap: { name: 'cairn-scripts', defaultMode: 0o555 } }],
        },
      },
    },
  }];
}
