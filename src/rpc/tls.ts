/**
 * Peer credentials: mutual TLS between cairnd peers (the replica service and, later, the
 * other peer services). Each node has a certificate and key signed by the cluster's CA;
 * a server asks every client for a certificate and refuses one the CA did not sign, and a
 * client checks the server's certificate against the CA and the address it dialled (the
 * certificate needs a subjectAltName for it: the node's IP or DNS name).
 *
 * Plaintext only with `insecure: true`, a development flag that logs a warning.
 *
 * The files are read and checked once, when credentials are made: an unreadable file, a
 * key that does not match its certificate, a certificate the CA did not sign or one that
 * has expired is a FAILED_PRECONDITION that names the file. Rotating certificates needs a
 * restart.
 */
import * as grpc from '@grpc/grpc-js';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { readFileSync } from 'node:fs';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';

/** The certificate files of mutual TLS between peers. */
export interface PeerTlsFiles {
  insecure?: false;
  /** PEM file of the cluster CA that signs every node's certificate. */
  caFile: string;
  /** PEM file of this node's certificate (may carry intermediates after it). */
  certFile: string;
  /** PEM file of this node's private key. */
  keyFile: string;
}

/** Mutual TLS from files, or plaintext with the explicit development flag. */
export type PeerTlsConfig = { insecure: true } | PeerTlsFiles;

export interface PeerTlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** The certificate's subject CN, for logs. */
  subject: string;
}

const INSECURE_WARNING = 'peer TLS is off: peer traffic is plaintext and unauthenticated (development only)';

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new StorageError(Code.FAILED_PRECONDITION, `cannot read the peer TLS ${what} file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

function parseCert(pem: Buffer, path: string, what: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new StorageError(Code.FAILED_PRECONDITION, `the peer TLS ${what} file ${path} holds no valid PEM certificate: ${(err as Error).message}`, { cause: err });
  }
}

function commonName(cert: X509Certificate): string {
  return /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? cert.subject;
}

/** Reads and checks the CA, certificate and key files. */
export function loadPeerTls(config: PeerTlsFiles, nowMs = Date.now()): PeerTlsMaterial {
  const ca = readPem(config.caFile, 'CA');
  const cert = readPem(config.certFile, 'certificate');
  const key = readPem(config.keyFile, 'key');
  const caCert = parseCert(ca, config.caFile, 'CA');
  const nodeCert = parseCert(cert, config.certFile, 'certificate');
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new StorageError(Code.FAILED_PRECONDITION, `the peer TLS key file ${config.keyFile} holds no valid PEM private key: ${(err as Error).message}`, { cause: err });
  }
  if (!nodeCert.checkPrivateKey(privateKey)) {
    throw new StorageError(Code.FAILED_PRECONDITION, `the peer TLS key ${config.keyFile} does not belong to the certificate ${config.certFile}`);
  }
  if (!nodeCert.verify(caCert.publicKey)) {
    throw new StorageError(Code.FAILED_PRECONDITION, `the peer TLS certificate ${config.certFile} is not signed by the CA in ${config.caFile}`);
  }
  if (Date.parse(nodeCert.validTo) <= nowMs || Date.parse(nodeCert.validFrom) > nowMs) {
    throw new StorageError(Code.FAILED_PRECONDITION,
      `the peer TLS certificate ${config.certFile} is not valid now (valid from ${nodeCert.validFrom} to ${nodeCert.validTo})`);
  }
  return { ca, cert, key, subject: commonName(nodeCert) };
}

/** Credentials for a peer server: TLS that demands and checks a client certificate. */
export function peerServerCredentials(config: PeerTlsConfig, log: Logger): grpc.ServerCredentials {
  if (config.insecure === true) {
    log.warn({ role: 'server' }, INSECURE_WARNING);
    return grpc.ServerCredentials.createInsecure();
  }
  const m = loadPeerTls(config);
  log.info({ role: 'server', subject: m.subject }, 'peer TLS enabled');
  return grpc.ServerCredentials.createSsl(m.ca, [{ cert_chain: m.cert, private_key: m.key }], true);
}

/** Credentials for dialling a peer: TLS with this node's certificate, checking the server's. */
export function peerChannelCredentials(config: PeerTlsConfig, log: Logger): grpc.ChannelCredentials {
  if (config.insecure === true) {
    log.warn({ role: 'client' }, INSECURE_WARNING);
    return grpc.credentials.createInsecure();
  }
  const m = loadPeerTls(config);
  return grpc.credentials.createSsl(m.ca, m.key, m.cert);
}

/** The CN of the client certificate a call came with, or undefined (plaintext). */
export function peerSubject(call: { getAuthContext?: () => { sslPeerCertificate?: PeerCertificate } | null }): string | undefined {
  const cert = call.getAuthContext?.()?.sslPeerCertificate;
  if (!cert || !cert.subject) return undefined;
  const cn = cert.subject.CN;
  return Array.isArray(cn) ? cn.join(',') : cn;
}
