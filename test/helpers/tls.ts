/**
 * A throwaway PKI for tests, made with openssl in a temp dir: a cluster CA, node
 * certificates it signs (subjectAltName 127.0.0.1 and localhost, usable as server and
 * client), and a rogue CA with a certificate of its own for "not signed by our CA" cases.
 * EC P-256 keys, valid for one day.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PeerTlsFiles } from '../../src/rpc/tls.js';
import { run } from './run.js';

export interface TestPki {
  dir: string;
  caFile: string;
  /** Peer TLS config of a node certificate signed by the CA (made on first use). */
  node(name: string): Promise<PeerTlsFiles>;
  /** A node certificate and key signed by another CA, with our CA as trust root. */
  rogue(name: string): Promise<PeerTlsFiles>;
  cleanup(): void;
}

const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function makeCa(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await run('openssl', ['req', '-x509', ...KEY_ARGS, '-keyout', key, '-out', cert, '-subj', `/CN=${name}`, '-days', '1',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  return { cert, key };
}

async function signNode(dir: string, ca: { cert: string; key: string }, name: string): Promise<{ certFile: string; keyFile: string }> {
  const keyFile = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const certFile = join(dir, `${name}.crt`);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n');
  await run('openssl', ['req', ...KEY_ARGS, '-keyout', keyFile, '-out', csr, '-subj', `/CN=${name}`]);
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-out', certFile, '-days', '1', '-extfile', ext]);
  return { certFile, keyFile };
}

export async function makeTestPki(): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-pki-'));
  const ca = await makeCa(dir, 'cairn-test-ca');
  let rogueCa: Promise<{ cert: string; key: string }> | undefined;
  return {
    dir,
    caFile: ca.cert,
    async node(name) {
      return { caFile: ca.cert, ...(await signNode(dir, ca, name)) };
    },
    async rogue(name) {
      rogueCa ??= makeCa(dir, 'rogue-ca');
      return { caFile: ca.cert, ...(await signNode(dir, await rogueCa, name)) };
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
