/**
 * The pods/exec transport against a fake API server that speaks the real protocol: the
 * upgrade's path, query, token and subprotocols, the channel messages, the exit status,
 * refusals, broken peers, aborts and background sessions.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { KubeApi } from '../../src/snapshot/kube-api.js';
import { KubeExecClient, type ExecOutput, type ExecSession } from '../../src/snapshot/kube-exec.js';
import {
  type ExecPeer, STATUS_SUCCESS, V4, V5, frame, startFakeKubeApi, fakeKubeSuite, TEST_TOKEN, statusExit, statusFrame,
} from '../helpers/fake-kube-api.js';

const TOKEN = TEST_TOKEN;
const kube = fakeKubeSuite(test);
const setup = kube.setup;

async function collect(session: ExecSession): Promise<ExecOutput[]> {
  const chunks: ExecOutput[] = [];
  for await (const chunk of session.output) chunks.push(chunk);
  return chunks;
}

const text = (chunks: ExecOutput[]): [string, string][] => chunks.map((c) => [c.stream, c.data.toString('utf8')]);

async function rejection(promise: Promise<unknown>): Promise<StorageError> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  if (!(err instanceof StorageError)) throw new Error(`expected a StorageError, got ${String(err)}`);
  return err;
}

test('success: both streams in order, exit 0, the upgrade as Kubernetes expects it', async (t) => {
  const { fake, client } = await setup(t, {
    onExec: (peer) => {
      peer.ws.send(frame(1)); // an empty message on a channel carries nothing
      peer.ws.send(frame(1, 'CHECK'));
      peer.ws.send(frame(2, 'warning: x\n'));
      peer.ws.send(frame(1, 'POINT\n'));
      peer.ws.send(frame(255, Buffer.from([2]))); // v5: the server is done with stderr
      peer.ws.send(statusFrame(STATUS_SUCCESS));
    },
  });
  const command = ['psql', '-U', 'postgres', '-c', 'CHECKPOINT; SELECT 1 & 2 = 3 + "x"'];
  const session = client.openExec('db', 'pg-0', 'postgres', command);
  const chunks = await collect(session);
  t.deepEqual(await session.done, { exitCode: 0 });
  t.deepEqual(text(chunks), [['stdout', 'CHECK'], ['stderr', 'warning: x\n'], ['stdout', 'POINT\n']]);
  const peer = fake.execs[0]!;
  t.is(peer.path, '/api/v1/namespaces/db/pods/pg-0/exec');
  t.deepEqual([...peer.query.keys()].filter((k, i, all) => all.indexOf(k) === i).sort(), ['command', 'container', 'stderr', 'stdout']);
  t.is(peer.query.get('container'), 'postgres');
  t.deepEqual(peer.query.getAll('command'), command);
  t.is(peer.query.get('stdout'), 'true');
  t.is(peer.query.get('stderr'), 'true');
  t.is(peer.authorization, `Bearer ${TOKEN}`);
  t.deepEqual(peer.offered, [V5, V4]);
  t.is(peer.protocol, V5);
  await peer.closed;
});

test('no container named: the query leaves it out, so the API server picks the pod\'s default container', async (t) => {
  const { fake, client } = await setup(t, { onExec: (peer) => peer.ws.send(statusFrame(STATUS_SUCCESS)) });
  const session = client.openExec('db', 'pg-0', '', ['true']);
  await collect(session);
  t.deepEqual(await session.done, { exitCode: 0 });
  t.false(fake.execs[0]!.query.has('container'));
  await fake.execs[0]!.closed;
});

test('a non-zero exit code is the command\'s, not an error', async (t) => {
  const { client } = await setup(t, {
    onExec: (peer) => {
      peer.ws.send(frame(2, 'psql: error: connection refused\n'));
      peer.ws.send(statusFrame(statusExit(2)));
      peer.ws.close();
    },
  });
  const session = client.openExec('db', 'pg-0', 'postgres', ['psql', '-c', 'CHECKPOINT']);
  const chunks = await collect(session);
  t.deepEqual(await session.done, { exitCode: 2 });
  t.deepEqual(text(chunks), [['stderr', 'psql: error: connection refused\n']]);
});

test('a status split over several messages is read whole', async (t) => {
  const { client } = await setup(t, {
    onExec: (peer) => {
      const status = Buffer.from(JSON.stringify(statusExit(137)));
      peer.ws.send(frame(3, status.subarray(0, 20)));
      peer.ws.send(frame(3, status.subarray(20)));
    },
  });
  const session = client.openExec('db', 'pg-0', 'postgres', ['sleep', '1000']);
  t.deepEqual(await session.done, { exitCode: 137 });
});

test('a Failure status that is no exit code is FAILED_PRECONDITION with its message', async (t) => {
  const { client } = await setup(t, {
    onExec: (peer) => peer.ws.send(statusFrame({
      kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason: 'InternalError', code: 500,
      message: 'Internal error occurred: error executing command in container: "psql": executable file not found in $PATH',
    })),
  });
  const session = client.openExec('db', 'pg-0', 'postgres', ['psql']);
  const err = await rejection(session.done);
  t.is(err.code, Code.FAILED_PRECONDITION);
  t.regex(err.message, /executable file not found/);
  t.is(err.details.statusReason, 'InternalError');
  t.deepEqual(await collect(session), []);
});

test('a v4-only server: the session runs, and close() sends no close-channel message', async (t) => {
  const { fake, client } = await setup(t, { protocols: [V4], onExec: (peer) => peer.ws.send(frame(1, 'locked\n')) });
  const session = client.openExec('db', 'mysql-0', 'mysql', ['mysql', '-e', 'FLUSH TABLES WITH READ LOCK; SELECT SLEEP(86400)'], { stdin: true });
  const peer = await fake.nextExec();
  t.is(peer.protocol, V4);
  t.is(peer.query.get('stdin'), 'true');
  const iterator = session.output[Symbol.asyncIterator]();
  t.deepEqual(text([(await iterator.next()).value as ExecOutput]), [['stdout', 'locked\n']]);
  await session.close();
  await peer.closed;
  t.deepEqual(peer.events, ['close']);
  t.is((await rejection(session.done)).code, Code.CANCELLED);
  t.true((await iterator.next()).done);
});

test('background: the session stays open until close(), which closes stdin (v5) and then the socket', async (t) => {
  const { fake, client } = await setup(t, { onExec: (peer) => peer.ws.send(frame(1, 'locked\n')) });
  const session = client.openExec('db', 'mysql-0', 'mysql', ['mysql', '-e', 'FLUSH TABLES WITH READ LOCK; SELECT SLEEP(86400)'], { stdin: true });
  const peer = await fake.nextExec();
  t.is(peer.protocol, V5);
  t.is(peer.query.get('stdin'), 'true');
  const iterator = session.output[Symbol.asyncIterator]();
  await iterator.next(); // the lock is held: the command said so
  t.deepEqual(peer.events, []);
  await session.close();
  await peer.closed;
  t.deepEqual(peer.events, ['message:ff00', 'close']);
  const err = await rejection(session.done);
  t.is(err.code, Code.CANCELLED);
});

test('close() after the command exited keeps its exit code', async (t) => {
  const { client } = await setup(t, { onExec: (peer) => peer.ws.send(statusFrame(STATUS_SUCCESS)) });
  const session = client.openExec('db', 'pg-0', 'postgres', ['true'], { stdin: true });
  t.deepEqual(await session.done, { exitCode: 0 });
  await session.close();
  t.deepEqual(await session.done, { exitCode: 0 });
});

test('403 on the upgrade is PERMISSION_DENIED naming create on pods/exec', async (t) => {
  const { client } = await setup(t, {
    refuseExec: {
      status: 403,
      body: {
        kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason: 'Forbidden', code: 403,
        message: 'pods "pg-0" is forbidden: User "system:serviceaccount:cairn:cairnd" cannot create resource "pods/exec" in API group "" in the namespace "db"',
      },
    },
  });
  const session = client.openExec('db', 'pg-0', 'postgres', ['psql']);
  const err = await rejection(session.done);
  t.is(err.code, Code.PERMISSION_DENIED);
  t.is(err.details.resource, 'pods/exec');
  t.true((err.details.verbs as string[]).includes('create'));
  t.regex(err.message, /create.*pods\/exec/);
  t.regex(err.message, /cannot create resource/);
  t.deepEqual(await collect(session), []);
});

test('404 on the upgrade (no such pod) is NOT_FOUND', async (t) => {
  const { client } = await setup(t, {
    refuseExec: { status: 404, body: { kind: 'Status', status: 'Failure', reason: 'NotFound', code: 404, message: 'pods "pg-9" not found' } },
  });
  const err = await rejection(client.openExec('db', 'pg-9', 'postgres', ['psql']).done);
  t.is(err.code, Code.NOT_FOUND);
  t.regex(err.message, /pods "pg-9" not found/);
});

test('connection refused is UNAVAILABLE', async (t) => {
  const fake = await startFakeKubeApi({ tls: kube.serverTls });
  const server = fake.url;
  await fake.close();
  const client = new KubeExecClient(new KubeApi({ server, token: TOKEN, caFile: kube.pki.caFile }, silentLogger()), silentLogger());
  const session = client.openExec('db', 'pg-0', 'postgres', ['psql']);
  t.is((await rejection(session.done)).code, Code.UNAVAILABLE);
  t.deepEqual(await collect(session), []);
});

test('a server certificate our CA did not sign is refused (UNAVAILABLE), never accepted', async (t) => {
  const rogue = await kube.pki.rogue('rogue-apiserver');
  const fake = await startFakeKubeApi({ tls: rogue, onExec: (peer) => peer.ws.send(statusFrame(STATUS_SUCCESS)) });
  t.teardown(() => fake.close());
  const client = new KubeExecClient(new KubeApi({ server: fake.url, token: TOKEN, caFile: kube.pki.caFile }, silentLogger()), silentLogger());
  t.is((await rejection(client.openExec('db', 'pg-0', 'postgres', ['psql']).done)).code, Code.UNAVAILABLE);
  t.is(fake.execs.length, 0);
});

async function abortMidSession(t: ExecutionContext, reason: unknown): Promise<{ err: StorageError; peer: ExecPeer }> {
  const { fake, client } = await setup(t, { onExec: (peer) => peer.ws.send(frame(1, 'working\n')) });
  const controller = new AbortController();
  const session = client.openExec('db', 'pg-0', 'postgres', ['sleep', '1000'], { signal: controller.signal });
  const peer = await fake.nextExec();
  const iterator = session.output[Symbol.asyncIterator]();
  await iterator.next();
  controller.abort(reason);
  await peer.closed;
  t.true((await iterator.next()).done);
  return { err: await rejection(session.done), peer };
}

test('an abort mid-session closes the socket and done rejects CANCELLED', async (t) => {
  const { err, peer } = await abortMidSession(t, undefined);
  t.is(err.code, Code.CANCELLED);
  t.deepEqual(peer.events, ['close']);
});

test('an abort for a timeout rejects DEADLINE_EXCEEDED', async (t) => {
  const { err } = await abortMidSession(t, new DOMException('the hook ran past its timeout', 'TimeoutError'));
  t.is(err.code, Code.DEADLINE_EXCEEDED);
});

test('a signal that fired before the call never connects', async (t) => {
  const { fake, client } = await setup(t);
  const err = await rejection(client.openExec('db', 'pg-0', 'postgres', ['psql'], { signal: AbortSignal.abort() }).done);
  t.is(err.code, Code.CANCELLED);
  t.is(fake.execs.length, 0);
});

test('a message on an unknown channel fails the session (INTERNAL) and drops the connection', async (t) => {
  const { fake, client } = await setup(t, { onExec: (peer) => { peer.ws.send(frame(1, 'ok')); peer.ws.send(frame(7, 'what')); } });
  const session = client.openExec('db', 'pg-0', 'postgres', ['psql']);
  const chunks = await collect(session);
  const err = await rejection(session.done);
  t.is(err.code, Code.INTERNAL);
  t.is(err.details.reason, 'EXEC_PROTOCOL');
  t.regex(err.message, /channel 7/);
  t.deepEqual(text(chunks), [['stdout', 'ok']]);
  await fake.execs[0]!.closed;
});

test('a status that is not JSON fails the session (INTERNAL)', async (t) => {
  const { client } = await setup(t, { onExec: (peer) => peer.ws.send(frame(3, 'command terminated: oops')) });
  const err = await rejection(client.openExec('db', 'pg-0', 'postgres', ['psql']).done);
  t.is(err.code, Code.INTERNAL);
  t.regex(err.message, /not JSON/);
});

test('an incomplete status, then the socket closes: INTERNAL', async (t) => {
  const { client } = await setup(t, { onExec: (peer) => { peer.ws.send(frame(3, '{"status":"Fail')); peer.ws.close(); } });
  t.is((await rejection(client.openExec('db', 'pg-0', 'postgres', ['psql']).done)).code, Code.INTERNAL);
});

test('a NonZeroExitCode without an exit code is INTERNAL', async (t) => {
  const { client } = await setup(t, {
    onExec: (peer) => peer.ws.send(statusFrame({ status: 'Failure', reason: 'NonZeroExitCode', details: { causes: [{ reason: 'ExitCode', message: 'lots' }] } })),
  });
  t.is((await rejection(client.openExec('db', 'pg-0', 'postgres', ['psql']).done)).code, Code.INTERNAL);
});

test('the server closing the socket without a status is UNAVAILABLE', async (t) => {
  const { client } = await setup(t, { onExec: (peer) => { peer.ws.send(frame(1, 'partial')); peer.ws.close(1011); } });
  const session = client.openExec('db', 'pg-0', 'postgres', ['psql']);
  t.deepEqual(text(await collect(session)), [['stdout', 'partial']]);
  const err = await rejection(session.done);
  t.is(err.code, Code.UNAVAILABLE);
  t.is(err.details.closeCode, 1011);
});

test('a server that never answers the upgrade: DEADLINE_EXCEEDED after the request timeout', async (t) => {
  // A listener that accepts the connection and never says a word (not even the TLS handshake).
  const silent = createServer((socket) => socket.resume()); // reads and drops whatever comes
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { silent.close(() => resolve()); }));
  const port = (silent.address() as AddressInfo).port;
  const api = new KubeApi({ server: `https://127.0.0.1:${port}`, token: TOKEN, caFile: kube.pki.caFile, requestTimeoutMs: 300 }, silentLogger());
  const client = new KubeExecClient(api, silentLogger());
  t.is((await rejection(client.openExec('db', 'pg-0', 'postgres', ['psql']).done)).code, Code.DEADLINE_EXCEEDED);
});

test('invalid names or an empty command are INVALID_ARGUMENT, and nothing is dialled', async (t) => {
  const { fake, client } = await setup(t);
  for (const [ns, pod, container, command] of [
    ['db', 'pg-0/../../x', 'postgres', ['psql']],
    ['DB', 'pg-0', 'postgres', ['psql']],
    ['db', 'pg-0', 'postgres', []],
    ['db', 'pg-0', 'Bad_Container', ['psql']],
  ] as [string, string, string, string[]][]) {
    t.is((await rejection(client.openExec(ns, pod, container, command).done)).code, Code.INVALID_ARGUMENT);
  }
  t.is(fake.execs.length, 0);
});

test('exec reads the token file again for each session (bound tokens rotate)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-sa-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, 'token-one\n');
  const { fake, client } = await setup(t, { onExec: (peer) => peer.ws.send(statusFrame(STATUS_SUCCESS)) }, { token: undefined, tokenFile });
  t.deepEqual(await client.openExec('db', 'pg-0', 'postgres', ['true']).done, { exitCode: 0 });
  writeFileSync(join(dir, 'token.new'), 'token-two\n');
  renameSync(join(dir, 'token.new'), tokenFile);
  t.deepEqual(await client.openExec('db', 'pg-0', 'postgres', ['true']).done, { exitCode: 0 });
  t.deepEqual(fake.execs.map((p) => p.authorization), ['Bearer token-one', 'Bearer token-two']);
});
