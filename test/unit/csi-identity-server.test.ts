/**
 * The Identity service and the CSI server over a real unix socket: what GetPluginInfo,
 * GetPluginCapabilities and Probe answer, and how the server treats its socket (parent
 * directory, mode, a stale socket, a live one, a path that is not a socket, draining on
 * close).
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError, isStorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { csiService } from '../../src/csi/csi-call.js';
import { CsiLocks } from '../../src/csi/csi-locks.js';
import { CSI_SOCKET_MODE, startCsiServer } from '../../src/csi/csi-server.js';
import { CSI_DRIVER_NAME, identityService } from '../../src/csi/identity-server.js';
import { csiClient, ok } from '../helpers/csi-client.js';

const PACKAGE_VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const log = silentLogger();

function tempDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-id-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('GetPluginInfo names csi.cairn.dev with the package version', async (t) => {
  const server = await startCsiServer({ socketPath: join(tempDir(t), 'csi.sock'), log, services: [identityService({ log, ready: () => true })] });
  const csi = await csiClient(server.socketPath);
  try {
    const info = ok(await csi.identity.GetPluginInfo!({}));
    t.is(info.name, CSI_DRIVER_NAME);
    t.is(info.name, 'csi.cairn.dev');
    t.is(info.vendorVersion, PACKAGE_VERSION);
  } finally {
    csi.close();
    await server.close();
  }
});

test('GetPluginCapabilities: CONTROLLER_SERVICE, topology and online expansion, the same from every instance', async (t) => {
  // The spec: every instance of one version answers the same, whichever services it serves;
  // a node-role cairnd (Identity and Node only) advertises the Controller its Deployment runs.
  const server = await startCsiServer({ socketPath: join(tempDir(t), 'csi.sock'), log, services: [identityService({ log, ready: () => true })] });
  const csi = await csiClient(server.socketPath);
  try {
    const caps = ok(await csi.identity.GetPluginCapabilities!({})).capabilities as { type: string; service?: { type: string }; volumeExpansion?: { type: string } }[];
    t.deepEqual(caps.filter((c) => c.type === 'service').map((c) => c.service!.type), ['CONTROLLER_SERVICE', 'VOLUME_ACCESSIBILITY_CONSTRAINTS', 'GROUP_CONTROLLER_SERVICE']);
    t.deepEqual(caps.filter((c) => c.type === 'volumeExpansion').map((c) => c.volumeExpansion!.type), ['ONLINE']);
    t.is((await csi.controller.ControllerGetCapabilities!({})).code, grpc.status.UNIMPLEMENTED, 'although this instance serves no Controller');
  } finally {
    csi.close();
    await server.close();
  }
});

test('Probe: ready=false until the readiness function says ready, FAILED_PRECONDITION when it throws', async (t) => {
  let state: 'starting' | 'ready' | 'broken' = 'starting';
  const ready = async (): Promise<boolean> => {
    if (state === 'broken') throw new Error('node store cannot be opened');
    return state === 'ready';
  };
  const server = await startCsiServer({ socketPath: join(tempDir(t), 'csi.sock'), log, services: [identityService({ log, ready })] });
  const csi = await csiClient(server.socketPath);
  try {
    t.deepEqual(ok(await csi.identity.Probe!({})).ready, { value: false });
    state = 'ready';
    t.deepEqual(ok(await csi.identity.Probe!({})).ready, { value: true });
    state = 'broken';
    const res = await csi.identity.Probe!({});
    t.is(res.code, grpc.status.FAILED_PRECONDITION);
    t.regex(res.message ?? '', /node store cannot be opened/);
    // Services this process does not serve are UNIMPLEMENTED (grpc-js answers for them).
    t.is((await csi.node.NodeGetInfo!({})).code, grpc.status.UNIMPLEMENTED);
  } finally {
    csi.close();
    await server.close();
  }
});

test('the server creates the socket\'s parent directory, makes the socket 0660 and removes it on close', async (t) => {
  const socketPath = join(tempDir(t), 'plugins', 'csi.cairn.dev', 'csi.sock');
  const server = await startCsiServer({ socketPath: `unix://${socketPath}`, log, services: [identityService({ log, ready: () => true })] });
  t.is(server.socketPath, socketPath);
  const st = statSync(socketPath);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, CSI_SOCKET_MODE);
  await server.close();
  t.false(existsSync(socketPath));
  await server.close(); // idempotent
});

test('a stale socket left by a killed process is replaced', async (t) => {
  const socketPath = join(tempDir(t), 'csi.sock');
  // A real process listens on the path and is killed -9: its socket file stays behind.
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  t.true(statSync(socketPath).isSocket());

  const server = await startCsiServer({ socketPath, log, services: [identityService({ log, ready: () => true })] });
  const csi = await csiClient(socketPath);
  try {
    t.is(ok(await csi.identity.GetPluginInfo!({})).name, 'csi.cairn.dev');
  } finally {
    csi.close();
    await server.close();
  }
});

test('a socket another live process serves is refused, and that process keeps serving', async (t) => {
  const socketPath = join(tempDir(t), 'csi.sock');
  const first = await startCsiServer({ socketPath, log, services: [identityService({ log, ready: () => true })] });
  try {
    const err = await t.throwsAsync(startCsiServer({ socketPath, log, services: [identityService({ log, ready: () => true })] }));
    t.true(isStorageError(err, Code.FAILED_PRECONDITION));
    t.regex(err!.message, /another process is serving/);
    const csi = await csiClient(socketPath);
    t.is(ok(await csi.identity.GetPluginInfo!({})).name, 'csi.cairn.dev');
    csi.close();
  } finally {
    await first.close();
  }
});

test('a path that is not a socket is refused and left alone', async (t) => {
  const socketPath = join(tempDir(t), 'csi.sock');
  writeFileSync(socketPath, 'not a socket');
  const err = await t.throwsAsync(startCsiServer({ socketPath, log, services: [identityService({ log, ready: () => true })] }));
  t.true(isStorageError(err, Code.FAILED_PRECONDITION));
  t.is(readFileSync(socketPath, 'utf8'), 'not a socket');
});

test('close() lets a call in flight finish before the server stops', async (t) => {
  let entered!: () => void;
  const inHandler = new Promise<void>((r) => { entered = r; });
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const locks = new CsiLocks();
  const node = csiService('Node', {
    NodeUnstageVolume: { handler: async () => { entered(); await gate; return {}; } },
  }, { log, locks });
  const socketPath = join(tempDir(t), 'csi.sock');
  const server = await startCsiServer({ socketPath, log, services: [identityService({ log, ready: () => true }), node] });
  const csi = await csiClient(socketPath);
  try {
    const call = csi.node.NodeUnstageVolume!({ volumeId: 'v', stagingTargetPath: '/s' });
    await inHandler;
    const closing = server.close();
    release();
    t.is((await call).code, grpc.status.OK);
    await closing;
    t.false(existsSync(socketPath));
  } finally {
    csi.close();
  }
});

test('close() cuts a call still running after the grace period, and the handler\'s signal fires', async (t) => {
  let entered!: () => void;
  const inHandler = new Promise<void>((r) => { entered = r; });
  let aborted!: () => void;
  let signalReason: unknown;
  const sawAbort = new Promise<void>((r) => { aborted = r; });
  const node = csiService('Node', {
    NodeUnstageVolume: {
      handler: async (_r, { signal }) => {
        entered();
        await new Promise((r) => signal.addEventListener('abort', r, { once: true }));
        signalReason = signal.reason;
        aborted();
        throw signal.reason;
      },
    },
  }, { log, locks: new CsiLocks() });
  const socketPath = join(tempDir(t), 'csi.sock');
  const server = await startCsiServer({ socketPath, log, services: [node], closeGraceMs: 200 });
  const csi = await csiClient(socketPath);
  try {
    const call = csi.node.NodeUnstageVolume!({ volumeId: 'v', stagingTargetPath: '/s' });
    await inHandler;
    await server.close();
    t.false(existsSync(socketPath));
    t.not((await call).code, grpc.status.OK);
    await sawAbort;
    t.true(signalReason instanceof StorageError, 'the handler\'s signal fired with a StorageError as its reason');
  } finally {
    csi.close();
  }
});
