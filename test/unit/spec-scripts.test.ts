// The start scripts the generated pods run (the cairn-scripts ConfigMap of `cairnctl spec`),
// run here as the pods would run them: peer-init.sh issues a certificate that cairnd's peer
// TLS loader accepts and that completes a mutual TLS handshake for the pod's IP, and
// node-start.sh hands cairnd the zone and refuses a pool glob that matches no block device.
import test from 'ava';
import { execa } from 'execa';
import { X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer } from 'node:tls';
import { scriptsConfigMap } from '../../src/cli/spec/scripts.js';
import { loadPeerTls } from '../../src/rpc/tls.js';

function scriptsDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-scripts-'));
  for (const [name, text] of Object.entries(scriptsConfigMap('cairn-system').data ?? {})) writeFileSync(join(dir, name), text);
  return dir;
}

async function makeCa(dir: string): Promise<void> {
  await execa('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30', '-subj', '/CN=test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', join(dir, 'tls.key'), '-out', join(dir, 'tls.crt')]);
}

test('peer-init.sh issues a certificate for the pod IP and name that cairnd loads and that passes a mutual TLS handshake', async (t) => {
  const scripts = scriptsDir();
  const ca = mkdtempSync(join(tmpdir(), 'cairn-ca-'));
  const run = mkdtempSync(join(tmpdir(), 'cairn-run-'));
  await makeCa(ca);
  await execa('sh', [join(scripts, 'peer-init.sh')], { env: { CAIRN_RUN_DIR: run, CAIRN_CA_DIR: ca, PEER_TLS: 'bootstrap', POD_IP: '127.0.0.1', CERT_NAME: 'node-a', ZONE_LABEL: '' } });
  const files = { caFile: join(run, 'ca.crt'), certFile: join(run, 'peer.crt'), keyFile: join(run, 'peer.key') };
  const material = loadPeerTls(files);
  t.is(material.subject, 'node-a');
  const cert = new X509Certificate(readFileSync(files.certFile));
  t.regex(cert.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
  t.regex(cert.subjectAltName ?? '', /DNS:node-a/);
  t.is(readFileSync(join(run, 'zone'), 'utf8'), '');

  const server = createServer({ ca: material.ca, cert: material.cert, key: material.key, requestCert: true, rejectUnauthorized: true }, (s) => s.end('ok'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const reply = await new Promise<string>((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port, ca: material.ca, cert: material.cert, key: material.key }, () => c.once('data', (d: Buffer) => resolve(d.toString())));
    c.on('error', reject);
  });
  server.close();
  t.is(reply, 'ok', 'the server accepted the client certificate and the client accepted the server for its IP');
});

test('peer-init.sh in insecure mode issues nothing and still records the zone file', async (t) => {
  const scripts = scriptsDir();
  const run = mkdtempSync(join(tmpdir(), 'cairn-run-'));
  await execa('sh', [join(scripts, 'peer-init.sh')], { env: { CAIRN_RUN_DIR: run, PEER_TLS: 'insecure', ZONE_LABEL: '' } });
  t.is(readFileSync(join(run, 'zone'), 'utf8'), '');
  t.throws(() => readFileSync(join(run, 'peer.crt')));
});

function fakeCairnd(): string {
  const bin = mkdtempSync(join(tmpdir(), 'cairn-bin-'));
  writeFileSync(join(bin, 'cairnd'), '#!/bin/sh\necho "args=$*"\necho "zone=${CAIRN_ZONE:-}"\necho "devices=${CAIRN_POOL_DEVICES:-}"\n');
  chmodSync(join(bin, 'cairnd'), 0o755);
  return bin;
}

test('node-start.sh passes the node\'s zone and the arguments on to cairnd', async (t) => {
  const scripts = scriptsDir();
  const run = mkdtempSync(join(tmpdir(), 'cairn-run-'));
  writeFileSync(join(run, 'zone'), 'zone-b');
  const r = await execa('sh', [join(scripts, 'node-start.sh'), '--role=node'], { env: { CAIRN_RUN_DIR: run, PATH: `${fakeCairnd()}:/usr/bin:/bin` } });
  t.true(r.stdout.includes('args=--role=node'));
  t.true(r.stdout.includes('zone=zone-b'));
});

test('node-start.sh exits 1 naming the glob when no block device matches it', async (t) => {
  const scripts = scriptsDir();
  const r = await execa('sh', [join(scripts, 'node-start.sh')], { reject: false, env: { POOL_DEVICE_GLOB: '/dev/null*', PATH: `${fakeCairnd()}:/usr/bin:/bin` } });
  t.is(r.exitCode, 1);
  t.regex(r.stderr, /no block device on this node matches the pool glob \/dev\/null\*/);
  t.false(r.stdout.includes('args='), 'cairnd was not started');
});

test('kube.mjs is valid JavaScript and refuses an unknown command with its usage', async (t) => {
  const scripts = scriptsDir();
  await execa('node', ['--check', join(scripts, 'kube.mjs')]);
  const r = await execa('node', [join(scripts, 'kube.mjs'), 'bogus'], { reject: false });
  t.is(r.exitCode, 2);
  t.regex(r.stderr, /usage: kube\.mjs/);
});
