/**
 * Reaching the Kubernetes API server: in-cluster configuration, the token re-read after a
 * rotation, JSON GETs and their error codes, and listPods (selector encoding, Running pods
 * only) against a fake API server.
 */
import test from 'ava';
import { copyFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { KubeApi, inClusterConfig, labelSelector } from '../../src/snapshot/kube-api.js';
import { KubeExecClient } from '../../src/snapshot/kube-exec.js';
import { type GetRequest, startFakeKubeApi, fakeKubeSuite, TEST_TOKEN } from '../helpers/fake-kube-api.js';

const TOKEN = TEST_TOKEN;
const kube = fakeKubeSuite(test);
const setup = kube.setup;

async function rejection(promise: Promise<unknown>): Promise<StorageError> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  if (!(err instanceof StorageError)) throw new Error(`expected a StorageError, got ${String(err)}`);
  return err;
}

const pod = (name: string, phase: string, deleting = false): unknown => ({
  metadata: { name, namespace: 'db', ...(deleting ? { deletionTimestamp: '2026-12-06T04:00:00Z' } : {}) },
  status: { phase },
});

const podList = (items: unknown[]): { status: number; body: unknown } => ({ status: 200, body: { kind: 'PodList', apiVersion: 'v1', metadata: {}, items } });

test('inClusterConfig: undefined outside Kubernetes, the service and the service account inside', (t) => {
  t.is(inClusterConfig({}), undefined);
  t.deepEqual(inClusterConfig({ KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }, '/sa'),
    { server: 'https://10.96.0.1:443', tokenFile: '/sa/token', caFile: '/sa/ca.crt' });
  t.is(inClusterConfig({ KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '6443' })?.server, 'https://[fd00::1]:6443');
  t.is(inClusterConfig({ KUBERNETES_SERVICE_HOST: '10.96.0.1' })?.tokenFile, '/var/run/secrets/kubernetes.io/serviceaccount/token');
});

test('listPods: the selector is encoded, only Running pods not being deleted are returned, sorted', async (t) => {
  const { fake, client } = await setup(t, {
    onGet: () => podList([
      pod('pg-2', 'Running'), pod('pg-0', 'Running'), pod('pg-1', 'Pending'), pod('pg-3', 'Running', true),
      pod('pg-4', 'Succeeded'), pod('pg-10', 'Running'), { metadata: {}, status: { phase: 'Running' } },
    ]),
  });
  const names = await client.listPods('db', { role: 'primary', 'app.kubernetes.io/name': 'postgres' });
  t.deepEqual(names, ['pg-0', 'pg-10', 'pg-2']);
  t.deepEqual(fake.gets, [{
    path: '/api/v1/namespaces/db/pods',
    rawQuery: 'labelSelector=app.kubernetes.io%2Fname%3Dpostgres%2Crole%3Dprimary',
    authorization: `Bearer ${TOKEN}`,
  }]);
});

test('listPods refuses a selector that is empty or not made of labels, before any request', async (t) => {
  const { fake, client } = await setup(t, { onGet: () => podList([]) });
  for (const labels of [{}, { app: 'pg,role=x' }, { 'app=x': 'pg' }, { app: 'a b' }] as Record<string, string>[]) {
    t.is((await rejection(client.listPods('db', labels))).code, Code.INVALID_ARGUMENT, JSON.stringify(labels));
  }
  t.is((await rejection(client.listPods('../kube-system', { app: 'pg' }))).code, Code.INVALID_ARGUMENT);
  t.is(fake.gets.length, 0);
  t.is(labelSelector({ b: '', a: 'x-1.2_3' }), 'a=x-1.2_3,b=');
});

test('listPods: 403 is PERMISSION_DENIED naming list on pods, with the Status message', async (t) => {
  const { client } = await setup(t, {
    onGet: () => ({
      status: 403,
      body: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Forbidden', code: 403, message: 'pods is forbidden: User "system:serviceaccount:cairn:cairnd" cannot list resource "pods"' },
    }),
  });
  const err = await rejection(client.listPods('db', { app: 'pg' }));
  t.is(err.code, Code.PERMISSION_DENIED);
  t.deepEqual(err.details.verbs, ['list']);
  t.is(err.details.resource, 'pods');
  t.regex(err.message, /list on pods in namespace db/);
  t.regex(err.message, /cannot list resource "pods"/);
});

test('HTTP statuses become canonical codes', async (t) => {
  const cases: [number, Code][] = [[401, Code.PERMISSION_DENIED], [404, Code.NOT_FOUND], [500, Code.UNAVAILABLE], [503, Code.UNAVAILABLE], [429, Code.UNAVAILABLE], [400, Code.INVALID_ARGUMENT]];
  let next = 0;
  const { client } = await setup(t, {
    onGet: () => ({ status: cases[next]![0], body: { kind: 'Status', status: 'Failure', message: `answer ${cases[next++]![0]}` } }),
  });
  for (const [status, code] of cases) {
    const err = await rejection(client.listPods('db', { app: 'pg' }));
    t.is(err.code, code, `HTTP ${status}`);
    t.is(err.details.httpStatus, status);
    t.regex(err.message, new RegExp(`answer ${status}`));
  }
});

test('a server that never answers: DEADLINE_EXCEEDED after the request timeout', async (t) => {
  const { client } = await setup(t, { onGet: () => undefined }, { requestTimeoutMs: 200 });
  t.is((await rejection(client.listPods('db', { app: 'pg' }))).code, Code.DEADLINE_EXCEEDED);
});

test('the caller\'s signal: CANCELLED, or DEADLINE_EXCEEDED for a timeout reason', async (t) => {
  const { client } = await setup(t, { onGet: () => undefined });
  const controller = new AbortController();
  const pending = client.listPods('db', { app: 'pg' }, { signal: controller.signal });
  controller.abort();
  t.is((await rejection(pending)).code, Code.CANCELLED);
  t.is((await rejection(client.listPods('db', { app: 'pg' }, { signal: AbortSignal.timeout(50) }))).code, Code.DEADLINE_EXCEEDED);
});

test('connection refused is UNAVAILABLE; a certificate our CA did not sign too', async (t) => {
  const closed = await startFakeKubeApi({ tls: kube.serverTls });
  const server = closed.url;
  await closed.close();
  const refused = new KubeExecClient(new KubeApi({ server, token: TOKEN, caFile: kube.pki.caFile }, silentLogger()), silentLogger());
  t.is((await rejection(refused.listPods('db', { app: 'pg' }))).code, Code.UNAVAILABLE);

  const rogue = await startFakeKubeApi({ tls: await kube.pki.rogue('rogue-apiserver'), onGet: () => podList([]) });
  t.teardown(() => rogue.close());
  const client = new KubeExecClient(new KubeApi({ server: rogue.url, token: TOKEN, caFile: kube.pki.caFile }, silentLogger()), silentLogger());
  t.is((await rejection(client.listPods('db', { app: 'pg' }))).code, Code.UNAVAILABLE);
  t.is(rogue.gets.length, 0);
});

test('in-cluster: the token file is read again after a rotation, the CA file is used', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-sa-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'token'), 'token-one\n');
  copyFileSync(kube.pki.caFile, join(dir, 'ca.crt'));
  const fake = await startFakeKubeApi({ tls: kube.serverTls, onGet: () => podList([pod('pg-0', 'Running')]) });
  t.teardown(() => fake.close());
  const config = inClusterConfig({ KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(fake.port) }, dir);
  t.truthy(config);
  const client = new KubeExecClient(new KubeApi(config!, silentLogger()), silentLogger());
  t.deepEqual(await client.listPods('db', { app: 'pg' }), ['pg-0']);
  // The kubelet swaps the projected token atomically.
  writeFileSync(join(dir, 'token.new'), 'token-two\n');
  renameSync(join(dir, 'token.new'), join(dir, 'token'));
  t.deepEqual(await client.listPods('db', { app: 'pg' }), ['pg-0']);
  t.deepEqual(fake.gets.map((g: GetRequest) => g.authorization), ['Bearer token-one', 'Bearer token-two']);
});

test('a missing token file is FAILED_PRECONDITION naming the file', async (t) => {
  const { fake, client } = await setup(t, { onGet: () => podList([]) }, { token: undefined, tokenFile: '/nonexistent/cairn/token' });
  const err = await rejection(client.listPods('db', { app: 'pg' }));
  t.is(err.code, Code.FAILED_PRECONDITION);
  t.regex(err.message, /\/nonexistent\/cairn\/token/);
  t.is(fake.gets.length, 0);
});

test('plain HTTP works for tests, and an answer that is not a pod list is INTERNAL', async (t) => {
  const fake = await startFakeKubeApi({ onGet: () => ({ status: 200, body: { kind: 'Status' } }) });
  t.teardown(() => fake.close());
  const client = new KubeExecClient(new KubeApi({ server: fake.url }, silentLogger()), silentLogger());
  t.is((await rejection(client.listPods('db', { app: 'pg' }))).code, Code.INTERNAL);
  t.is(fake.gets[0]!.authorization, undefined);
});

test('an API server URL that is not http(s) is INVALID_ARGUMENT', (t) => {
  for (const server of ['ftp://x', 'not a url']) {
    const err = t.throws(() => new KubeApi({ server }, silentLogger()));
    t.is((err as StorageError).code, Code.INVALID_ARGUMENT);
  }
});
