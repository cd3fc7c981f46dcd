/**
 * Peer TLS mode `cert-manager`: cert-manager makes and renews the peer CA instead of the
 * bootstrap Job. A self-signed Issuer signs a CA Certificate whose Secret is the one the
 * pods' peer-init container issues their certificates from (the same Secret layout,
 * tls.crt and tls.key).
 */
import type { ICertificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate';
import type { IIssuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer';
import { meta } from './meta.js';
import type { SpecOptions } from './options.js';

const ISSUER = 'cairn-peer-selfsigned';

export function certManagerObjects(o: SpecOptions): (IIssuer | ICertificate)[] {
  if (o.peerTls !== 'cert-manager') return [];
  return [
    { apiVersion: 'cert-manager.io/v1', kind: 'Issuer', metadata: meta(ISSUER, 'peer-ca', o.namespace), spec: { selfSigned: {} } },
    {
      apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: meta(o.peerCaSecret, 'peer-ca', o.namespace),
      spec: {
        isCA: true, commonName: 'cairn-peer-ca', secretName: o.peerCaSecret, duration: '87600h', renewBefore: '720h',
        privateKey: { algorithm: 'ECDSA', size: 256 }, issuerRef: { group: 'cert-manager.io', kind: 'Issuer', name: ISSUER },
      },
    },
  ];
}
