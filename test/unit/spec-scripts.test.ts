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
import { createServer as createHttpsServer } from 'node:https';
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

interface ApiCall { method: string; path: string; auth: string; body: string }

/** A stand-in API server over TLS: the CA Secret (absent until created) and one node with a zone label. */
async function fakeApi(dir: string): Promise<{ calls: ApiCall[]; env: Record<string, string>; close: () => void; secret: () => Record<string, string> | undefined }> {
  await execa('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=api',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'api.key'), '-out', join(dir, 'ca.crt')]);
  writeFileSync(join(dir, 'token'), 'sa-token\n');
  const calls: ApiCall[] = [];
  let secret: Record<string, string> | undefined;
  const server = createHttpsServer({ key: readFileSync(join(dir, 'api.key')), cert: readFileSync(join(dir, 'ca.crt')) }, (req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      calls.push({ method: req.method ?? '', path: req.url ?? '', auth: req.headers.authorization ?? '', body });
      const reply = (status: number, value: unknown): void => { res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value)); };
      if (req.method === 'GET' && req.url === '/api/v1/nodes/node-a') return reply(200, { metadata: { labels: { 'topology.kubernetes.io/zone': 'zone-a' } } });
      if (req.method === 'GET' && req.url === '/api/v1/namespaces/cairn-system/secrets/cairn-peer-ca') return secret ? reply(200, { data: secret }) : reply(404, { reason: 'NotFound' });
      if (req.method === 'POST' && req.url === '/api/v1/namespaces/cairn-system/secrets') {
        secret = (JSON.parse(body) as { data: Record<string, string> }).data;
        return reply(201, {});
      }
      return reply(403, { reason: 'Forbidden' });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = String((server.address() as { port: number }).port);
  return {
    calls, close: () => server.close(), secret: () => secret,
    env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: port, CAIRN_SA_DIR: dir, POD_NAMESPACE: 'cairn-system', NODE_NAME: 'node-a', PATH: process.env.PATH ?? '' },
  };
}

test('bootstrap end to end: the Job\'s script creates the CA Secret once, and a node pod\'s init issues from it and records its zone', async (t) => {
  const scripts = scriptsDir();
  const api = await fakeApi(mkdtempSync(join(tmpdir(), 'cairn-api-')));
  try {
    const first = await execa('sh', [join(scripts, 'ca-bootstrap.sh')], { env: { ...api.env, CA_SECRET: 'cairn-peer-ca' } });
    t.regex(first.stdout, /peer CA secret cairn-peer-ca created/);
    const created = api.secret();
    t.truthy(created);
    const caCert = new X509Certificate(Buffer.from(created!['tls.crt']!, 'base64'));
    t.true(caCert.ca, 'the Secret holds a CA certificate');
    t.true(api.calls.every((c) => c.auth === 'Bearer sa-token'), 'every call carries the service account token');

    const again = await execa('sh', [join(scripts, 'ca-bootstrap.sh')], { env: { ...api.env, CA_SECRET: 'cairn-peer-ca' } });
    t.regex(again.stdout, /exists; keeping it/);
    t.is(api.calls.filter((c) => c.method === 'POST').length, 1, 'a rerun creates nothing');

    const ca = mkdtempSync(join(tmpdir(), 'cairn-ca-'));
    writeFileSync(join(ca, 'tls.crt'), Buffer.from(created!['tls.crt']!, 'base64'));
    writeFileSync(join(ca, 'tls.key'), Buffer.from(created!['tls.key']!, 'base64'));
    const run = mkdtempSync(join(tmpdir(), 'cairn-run-'));
    await execa('sh', [join(scripts, 'peer-init.sh')], {
      env: { ...api.env, CAIRN_RUN_DIR: run, CAIRN_CA_DIR: ca, PEER_TLS: 'bootstrap', POD_IP: '10.1.2.3', CERT_NAME: 'node-a', ZONE_LABEL: 'topology.kubernetes.io/zone' },
    });
    t.is(readFileSync(join(run, 'zone'), 'utf8'), 'zone-a');
    const material = loadPeerTls({ caFile: join(run, 'ca.crt'), certFile: join(run, 'peer.crt'), keyFile: join(run, 'peer.key') });
    t.is(material.subject, 'node-a');
  } finally {
    api.close();
  }
});
